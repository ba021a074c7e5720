"""random-logit and mprt (issue 23) against Quantus 0.6, and hand cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

import xplain  # noqa: E402

from .quantus_family_common import Q, as_np, digits_batch, gradient, score  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return digits_batch()


def _explain(net):
    return lambda xx, tt: xplain.Attribution(gradient(net, xx, tt))


def test_random_logit_equals_quantus_with_the_same_classes(digits, monkeypatch):
    from xplain_builtins.metrics.randomisation import other_class_index

    model, x, t = digits
    ours = score(
        "random-logit", model, x, t, gradient(model.graph, x, t), explain=_explain(model.graph)
    )["random-logit"]
    idx = other_class_index(x, t, 10, 0).numpy()
    q = []
    for i in range(len(x)):  # Quantus normalises by the batch maximum: one image per call
        monkeypatch.setattr(np.random, "randint", lambda *a, i=i, **k: idx[i : i + 1])
        X, Y = as_np(x[i : i + 1], t[i : i + 1])
        q.append(
            quantus.RandomLogit(num_classes=10, **Q)(
                model=model.graph,
                x_batch=X,
                y_batch=Y,
                a_batch=gradient(model.graph, x[i : i + 1], t[i : i + 1])[:, None].numpy(),
                explain_func=lambda model, inputs, targets, **kw: gradient(
                    model, inputs, targets
                ).numpy(),
                device="cpu",
            )[0]
        )
        monkeypatch.undo()
    np.testing.assert_allclose(ours, q, rtol=1e-5)
    assert (ours < 0.99).all()


def test_ssim_1d_is_skimage_structural_similarity():
    from skimage.metrics import structural_similarity

    from xplain_builtins.metrics.randomisation import ssim_1d

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 50, generator=g), torch.rand(3, 50, generator=g)
    b[1] = a[1] * 2 + 0.1 * b[1]
    ours = ssim_1d(a, b).numpy()
    for i in range(3):
        aa, bb = a[i].double().numpy(), b[i].double().numpy()
        rng = float(max(aa.max(), bb.max()) - min(aa.min(), bb.min()))
        assert ours[i] == pytest.approx(structural_similarity(aa, bb, data_range=rng), rel=1e-5)
    assert float(ssim_1d(a[:1], a[:1])[0]) == pytest.approx(1.0)


def test_mprt_equals_quantus(digits):
    from xplain_builtins.metrics.properties import weight_layers

    model, x, t = digits
    layers = weight_layers(model)
    a = gradient(model.graph, x, t)
    ours = score("mprt", model, x, t, a, explain=_explain(model.graph), seed=42)
    state = {k: v.clone() for k, v in model.graph.state_dict().items()}
    X, Y = as_np(x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantus.MPRT(seed=42, **Q)(
            model=model.graph,
            x_batch=X,
            y_batch=Y,
            a_batch=a[:, None].numpy(),
            explain_func=lambda model, inputs, targets, **kw: gradient(
                model, inputs, targets
            ).numpy(),
            device="cpu",
        )
        q_avg = quantus.MPRT(seed=42, return_average_correlation=True, **Q)(
            model=model.graph,
            x_batch=X,
            y_batch=Y,
            a_batch=a[:, None].numpy(),
            explain_func=lambda model, inputs, targets, **kw: gradient(
                model, inputs, targets
            ).numpy(),
            device="cpu",
        )
    assert all(torch.equal(state[k], v) for k, v in model.graph.state_dict().items())
    assert list(q) == ["original"] + layers[::-1]
    curve = ours["mprt-curve"]
    for k, name in enumerate(["original"] + layers[::-1]):
        np.testing.assert_allclose(curve[:, k], q[name], atol=1e-5)
    np.testing.assert_allclose(ours["mprt-last"], q[layers[0]], atol=1e-5)
    big = len(layers)
    np.testing.assert_allclose(q_avg, (curve[:, 0] + big * ours["mprt"]) / (big + 1), atol=1e-5)
    assert (ours["mprt"] < 0.8).all()


def test_randomisation_hand_cases(digits):
    """A map that ignores class and weights (a fixed pattern) is perfectly 'insensitive':
    random-logit = SSIM(a, a) = 1 and every MPRT step = Spearman(a, a) = 1."""
    model, x, t = digits
    pattern = torch.arange(28 * 28, dtype=torch.float32).view(1, 28, 28).expand(len(x), 28, 28)
    fixed = lambda xx, tt: xplain.Attribution(pattern[: len(xx)])  # noqa: E731
    rl = score("random-logit", model, x, t, pattern, explain=fixed)["random-logit"]
    np.testing.assert_allclose(rl, 1.0, atol=1e-6)
    m = score("mprt", model, x, t, pattern, explain=fixed, params={"layers": 2})
    np.testing.assert_allclose(m["mprt-curve"], 1.0, atol=1e-6)
    assert m["mprt-curve"].shape == (4, 3)


def _q_explain(model, inputs, targets, **kw):
    return gradient(model, torch.as_tensor(inputs).float(), targets).numpy()


def test_smooth_mprt_equals_quantus_with_the_same_noise(digits, monkeypatch):
    """Quantus' SmoothMPRT (bottom up) with xplain's noise handed to it through np.random.randn
    (the same draws for every model) and its quantus.explain replaced by the same gradient."""
    from xplain_builtins.metrics.properties import weight_layers
    from xplain_builtins.metrics.robustness import draw_noise

    model, x, t = digits
    nr = 4
    params = {"nr_samples": nr, "noise_magnitude": 0.2}
    ours = score(
        "smooth-mprt",
        model,
        x,
        t,
        gradient(model.graph, x, t),
        explain=_explain(model.graph),
        seed=42,
        params=params,
    )
    z = draw_noise(x, 42, nr - 1, "normal", 0.0, 1.0).double().numpy()
    calls = {"n": 0}

    def randn(*shape):
        calls["n"] += 1
        return z[(calls["n"] - 1) % (nr - 1)].reshape(shape)

    monkeypatch.setattr(np.random, "randn", randn)
    monkeypatch.setattr(quantus, "explain", _q_explain)
    X, Y = as_np(x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantus.SmoothMPRT(seed=42, nr_samples=nr, noise_magnitude=0.2, **Q)(
            model=model.graph, x_batch=X, y_batch=Y, explain_func=_q_explain, device="cpu"
        )
    monkeypatch.undo()
    layers = weight_layers(model)
    assert list(q) == ["original"] + layers
    assert calls["n"] == (nr - 1) * (len(layers) + 2)  # a_batch, original, each layer
    for k, name in enumerate(["original"] + layers):
        np.testing.assert_allclose(ours["smooth-mprt-curve"][:, k], q[name], atol=1e-5)
    np.testing.assert_allclose(ours["smooth-mprt-curve"][:, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(ours["smooth-mprt"], np.mean([q[n] for n in layers], 0), atol=1e-5)
    assert (ours["smooth-mprt"] < 0.9).all()


def test_efficient_mprt_equals_quantus(digits):
    model, x, t = digits
    ours = score(
        "efficient-mprt",
        model,
        x,
        t,
        gradient(model.graph, x, t),
        explain=_explain(model.graph),
        seed=42,
    )
    X, Y = as_np(x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantus.EfficientMPRT(seed=42, **Q)(
            model=model.graph,
            x_batch=X,
            y_batch=Y,
            a_batch=gradient(model.graph, x, t)[:, None].numpy(),
            explain_func=_q_explain,
            device="cpu",
        )
    np.testing.assert_allclose(ours["efficient-mprt"], q, rtol=1e-5)
    assert (ours["efficient-mprt"] != 0).all()


def test_efficient_mprt_hand_case():
    """Entropy of a histogram by hand: values 0, 0, 1, 1 in 2 bins → ln 2; 0, 1, 2, 3 in 4 bins
    → ln 4; a constant map → one bin → 0."""
    from xplain_builtins.metrics.randomisation import discrete_entropy

    maps = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    got = discrete_entropy(maps, 2).tolist()
    assert got[0] == pytest.approx(np.log(2)) and got[2] == 0.0
    assert discrete_entropy(maps[1:2], 4).item() == pytest.approx(np.log(4))
