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
