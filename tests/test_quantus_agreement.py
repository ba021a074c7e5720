"""Test-only comparison with Quantus 0.6 on identical inputs (issue 7).

Every metric that Quantus also implements is run through both libraries on the same images,
maps and boxes. Where settings exist that make the two definitions coincide, the test asserts
agreement to float precision under those settings; where the definitions differ, the test
asserts the exact, documented relation between the two numbers (docs/eval.md, "Agreement with
Quantus"). Quantus is an optional test dependency: without it this module is skipped.

The Quantus calls pass ``disable_warnings=True`` only to keep the output quiet.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

import xplain  # noqa: E402
from xplain.data.images import Preprocess, load_image  # noqa: E402
from xplain.plugins.registry import Registry  # noqa: E402

from .shapes_batch import shapes_eval_batch  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
REG = Registry().discover()
Q = {"disable_warnings": True}


def _score(name, model, x, targets, maps, **context):
    metric = REG.metric(name)
    params = xplain.validate_params(metric.params, context.pop("params", {}), name)
    ctx = {"params": params, "seed": 0, "cache": {}, "forward_batch": 64, **context}
    return {
        k: v.detach().cpu().numpy()
        for k, v in metric.compute(model, x, targets, xplain.Attribution(maps, {}), **ctx).items()
    }


def _untie(maps):
    """Tie-free maps: Quantus ranks with np.argsort(-a) (an unstable quicksort), xplain with a
    stable sort, so tied pixels may be ordered differently; on tie-free maps the orders are the
    same. Maps with ties get a seeded jitter far below their resolution."""
    for seed in range(20):
        if all(len(torch.unique(m)) == m.numel() for m in maps):
            return maps
        scale = maps.flatten(1).abs().amax(1).view(-1, 1, 1)
        maps = maps + 1e-4 * scale * torch.rand(
            maps.shape, generator=torch.Generator().manual_seed(seed)
        )
    raise AssertionError("could not untie the maps")


def _saliency(net, x, targets):
    """|d logit_t / d x|, max over channels: the same explainer on both sides."""
    x = torch.as_tensor(x).clone().requires_grad_(True)
    out = net(x).gather(1, torch.as_tensor(targets).long()[:, None]).sum()
    (g,) = torch.autograd.grad(out, x)
    return g.abs().amax(1).detach()


def _gradient(net, x, targets):
    """d logit_t / d x summed over channels (signed)."""
    x = torch.as_tensor(x).clone().requires_grad_(True)
    out = net(x).gather(1, torch.as_tensor(targets).long()[:, None]).sum()
    (g,) = torch.autograd.grad(out, x)
    return g.sum(1).detach()


class Wrapped:
    """The parts of xplain.Model a metric uses, around a plain torch module."""

    device = torch.device("cpu")

    def __init__(self, net, num_classes):
        self.net, self.num_classes = net.eval(), num_classes

    def __call__(self, x):
        return self.net(x)

    def infer(self, x):
        with torch.inference_mode():
            return self.net(x)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shapes():
    """shapes_cnn (3×64×64) on four shapes_eval images with their boxes, as xplain eval builds them."""
    model, x, t, ctx, roi = shapes_eval_batch(4)
    maps = {
        "saliency": _untie(_saliency(model.graph, x, t)),
        "gradient": _untie(_gradient(model.graph, x, t)),
    }
    assert (maps["gradient"] < 0).any() and (maps["saliency"] >= 0).all()
    # Quantus takes the same region as a binary mask B×1×H×W
    return model, x, t, ctx, roi[:, None].numpy().astype(np.uint8), maps


@pytest.fixture(scope="module")
def digits():
    """digits_cnn (1×28×28) on the four shipped digit images; every image has a black pixel."""
    model = xplain.load_model(SAMPLES / "digits_cnn.onnx", device="cpu")
    pre = Preprocess.from_options((1, 28, 28), sidecar=model.sidecar)
    x = torch.stack(
        [
            torch.from_numpy(pre(load_image(SAMPLES / "images" / f"digit_{d}.png"))[0])
            for d in (0, 3, 7, 9)
        ]
    )
    t = torch.tensor([0, 3, 7, 9])
    assert (x.flatten(1).min(1).values == 0).all()
    return model, x, t


def _np(*tensors):
    return [v.detach().cpu().numpy() for v in tensors]


# ----------------------------------------------------------------------------- localisation
def test_ebpg_equals_relevance_mass_accuracy_on_the_positive_part(shapes):
    model, x, t, ctx, s, maps = shapes
    X, Y = _np(x, t)
    for name, m in maps.items():
        a = m[:, None].numpy()
        ours = _score("ebpg", model, x, t, m, **ctx)["ebpg"]
        ours_abs = _score("ebpg", model, x, t, m, params={"energy": "abs"}, **ctx)["ebpg"]
        # RMA = sum(a inside) / sum(a) over the *signed* map: equal to ebpg on a^+ ...
        rma_pos = np.array(
            quantus.RelevanceMassAccuracy(**Q)(
                model=None, x_batch=X, y_batch=Y, a_batch=a.clip(0), s_batch=s
            )
        )
        np.testing.assert_allclose(ours, rma_pos, rtol=1e-5)
        # ... and to ebpg energy=abs with Quantus's abs=True
        rma_abs = np.array(
            quantus.RelevanceMassAccuracy(abs=True, **Q)(
                model=None, x_batch=X, y_batch=Y, a_batch=a, s_batch=s
            )
        )
        np.testing.assert_allclose(ours_abs, rma_abs, rtol=1e-5)
        # AttributionLocalisation: defaults (abs=True) = energy=abs; positive_attributions = ebpg
        al_abs = np.array(
            quantus.AttributionLocalisation(**Q)(
                model=None, x_batch=X, y_batch=Y, a_batch=a, s_batch=s
            )
        )
        np.testing.assert_allclose(ours_abs, al_abs, rtol=1e-5)
        al_pos = np.array(
            quantus.AttributionLocalisation(abs=False, positive_attributions=True, **Q)(
                model=None, x_batch=X, y_batch=Y, a_batch=a, s_batch=s
            )
        )
        np.testing.assert_allclose(ours, al_pos, rtol=1e-5)
        rma_signed = np.array(
            quantus.RelevanceMassAccuracy(**Q)(
                model=None, x_batch=X, y_batch=Y, a_batch=a, s_batch=s
            )
        )
        if name == "saliency":  # a non-negative map: RMA with Quantus's defaults is ebpg
            np.testing.assert_allclose(ours, rma_signed, rtol=1e-5)
        else:  # the documented difference: on a signed map RMA's ratio of signed sums is unbounded
            assert ((ours >= 0) & (ours <= 1)).all()
            assert (np.abs(rma_signed - ours) > 0.1).any() and (
                (rma_signed < 0) | (rma_signed > 1)
            ).any()


def test_bbox_accuracy_equals_relevance_rank_accuracy_and_top_k_intersection(shapes):
    model, x, t, ctx, s, maps = shapes
    X, Y = _np(x, t)
    area = s.reshape(len(s), -1).sum(1)
    for m in maps.values():
        a = m[:, None].numpy()
        ours = _score("bbox-accuracy", model, x, t, m, **ctx)["bbox-accuracy"]
        rra = np.array(
            quantus.RelevanceRankAccuracy(**Q)(
                model=None, x_batch=X, y_batch=Y, a_batch=a, s_batch=s
            )
        )
        np.testing.assert_allclose(ours, rra, rtol=1e-6)
        for i in range(len(x)):  # TopKIntersection with k = the box area (k is one number per call)
            tki = quantus.TopKIntersection(k=int(area[i]), **Q)(
                model=None,
                x_batch=X[i : i + 1],
                y_batch=Y[i : i + 1],
                a_batch=a[i : i + 1],
                s_batch=s[i : i + 1],
            )
            assert float(ours[i]) == pytest.approx(float(tki[0]), rel=1e-6)
        ours_abs = _score("bbox-accuracy", model, x, t, m, params={"absolute": True}, **ctx)[
            "bbox-accuracy"
        ]
        rra_abs = np.array(
            quantus.RelevanceRankAccuracy(abs=True, **Q)(
                model=None, x_batch=X, y_batch=Y, a_batch=a, s_batch=s
            )
        )
        np.testing.assert_allclose(ours_abs, rra_abs, rtol=1e-6)
    assert len(set(np.round(ours, 6))) > 1  # the images really differ


def test_bbox_accuracy_with_a_one_pixel_box_is_the_pointing_game(shapes):
    """PointingGame = is the top-1 pixel inside the mask; bbox-accuracy takes the top-n, n = area,
    so the two coincide exactly for one-pixel boxes and differ otherwise."""
    model, x, t, ctx, s, maps = shapes
    X, Y = _np(x, t)
    m = maps["gradient"]
    flat = m.flatten(1)
    hit_at = flat.argmax(1).tolist()
    miss_at = flat.argmin(1).tolist()
    where = [hit_at[0], miss_at[1], hit_at[2], miss_at[3]]
    boxes = [
        torch.tensor([[p % 64, p // 64, p % 64 + 1, p // 64 + 1]], dtype=torch.float32)
        for p in where
    ]
    ours = _score("bbox-accuracy", model, x, t, m, boxes=boxes, box_labels=[None] * 4)[
        "bbox-accuracy"
    ]
    mask = np.zeros((4, 1, 64, 64), np.uint8)
    for i, p in enumerate(where):
        mask[i, 0, p // 64, p % 64] = 1
    pg = np.array(
        quantus.PointingGame(**Q)(
            model=None, x_batch=X, y_batch=Y, a_batch=m[:, None].numpy(), s_batch=mask
        )
    )
    assert ours.tolist() == [1.0, 0.0, 1.0, 0.0] and pg.astype(float).tolist() == ours.tolist()


# ----------------------------------------------------------------------------- faithfulness
def test_pixel_perturbation_curves_are_region_perturbation_drops(shapes):
    """Same tiles (8×8), one tile per step, zero baseline: Quantus returns p0 - p_k for
    k = 1..N, xplain p_k for k = 0..N; so ours[1:] = ours[0] - quantus exactly."""
    from xplain_builtins.metrics.faithfulness import auc

    model, x, t, ctx, s, maps = shapes
    X, Y = _np(x, t)
    m = maps["saliency"]
    r = _score("pixel-perturbation", model, x, t, m, params={"tile": 8, "steps": 64})
    p0 = torch.softmax(model(x), 1).gather(1, t[:, None]).detach().numpy()
    for order in ("morf", "lerf"):
        q = np.array(
            quantus.RegionPerturbation(
                patch_size=8, order=order, regions_evaluation=64, perturb_baseline=0.0, **Q
            )(model=model.graph, x_batch=X, y_batch=Y, a_batch=m[:, None].numpy(), device="cpu")
        )
        curve = r[f"{order}-curve"]
        assert q.shape == (4, 64) and curve.shape == (4, 65)
        np.testing.assert_allclose(curve[:, :1], p0, atol=1e-6)
        np.testing.assert_allclose(curve[:, 1:], curve[:, :1] - q, atol=1e-5)
        ours_auc = auc(torch.from_numpy(np.concatenate([p0, p0 - q], 1))).numpy()
        np.testing.assert_allclose(r[order], ours_auc, atol=1e-5)
    assert (r["lerf"] > r["morf"]).all()


def test_deletion_curve_is_pixel_flipping(digits):
    """RISE deletion with step = image width is Quantus's PixelFlipping with features_in_step = W on
    a one-channel input: the curves agree after xplain's extra k = 0 point. Quantus's default
    'black' baseline is the image minimum, 0 on these images."""
    model, x, t = digits
    m = _untie(_saliency(model.graph, x, t))
    X, Y = _np(x, t)
    r = _score("deletion", model, x, t, m)
    pf = np.array(
        quantus.PixelFlipping(features_in_step=28, **Q)(
            model=model.graph, x_batch=X, y_batch=Y, a_batch=m[:, None].numpy(), device="cpu"
        )
    )
    assert pf.shape == (4, 28) and r["deletion-curve"].shape == (4, 29)
    np.testing.assert_allclose(r["deletion-curve"][:, 1:], pf, atol=1e-6)
    assert np.ptp(pf, axis=1).min() > 0.1  # the curves really move


def test_pixel_flipping_is_quantus_pixel_flipping_black_baseline(digits):
    """`pixel-flipping` equals Quantus PixelFlipping with its default 'black' baseline (the
    image's minimum) where that minimum is not 0 (shifted images), and differs from `deletion`
    there; with `baseline=zero` it is `deletion`."""
    model, x, t = digits
    x = x - 0.7  # every image's minimum is now -0.7, not 0
    m = _untie(_saliency(model.graph, x, t))
    X, Y = _np(x, t)
    r = _score("pixel-flipping", model, x, t, m, params={"step": 28})
    pf = np.array(
        quantus.PixelFlipping(features_in_step=28, **Q)(
            model=model.graph, x_batch=X, y_batch=Y, a_batch=m[:, None].numpy(), device="cpu"
        )
    )
    assert r["pixel-flipping-curve"].shape == (4, 29)
    np.testing.assert_allclose(r["pixel-flipping-curve"][:, 1:], pf, atol=1e-6)
    d = _score("deletion", model, x, t, m, params={"step": 28})
    assert np.abs(d["deletion-curve"] - r["pixel-flipping-curve"]).max() > 1e-2
    z = _score("pixel-flipping", model, x, t, m, params={"step": 28, "baseline": "zero"})
    np.testing.assert_allclose(z["pixel-flipping"], d["deletion"], atol=0)


def test_sensitivity_n_differs_from_quantus_by_definition():
    """Linear model, zero baseline, attribution = w·x: every subset's logit drop equals its
    attribution sum, so xplain's Sensitivity-n (random subsets, correlation per image) is exactly 1.
    Quantus 0.6's SensitivityN removes pixels cumulatively in attribution order and correlates,
    for each step k *across the images of the first batch*, the attribution of the k-th pixel
    with the drop after k pixels; its value is the closed form computed here, not 1."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 1, 6, 6, generator=g)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2, bias=False))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[0] = w.flatten()
    model = Wrapped(net, 2)
    x = torch.rand(6, 1, 6, 6, generator=g) + 0.5
    t = torch.zeros(6, dtype=torch.long)
    exact = (w * x)[:, 0]
    ours = _score("sensitivity-n", model, x, t, exact, params={"num_n": 5, "subsets": 20})[
        "sensitivity-n"
    ]
    np.testing.assert_allclose(ours, np.ones(6), atol=1e-5)
    X, Y = _np(x, t)
    q = quantus.SensitivityN(features_in_step=1, perturb_baseline=0.0, **Q)(
        model=net, x_batch=X, y_batch=Y, a_batch=exact[:, None].numpy(), softmax=False, device="cpu"
    )
    a_sorted = -np.sort(-exact.reshape(6, -1).numpy().astype(np.float64), axis=1)
    drop = np.cumsum(a_sorted, axis=1)
    steps = int(0.8 * 36)
    expected = np.mean([np.corrcoef(drop[:, k], a_sorted[:, k])[0, 1] for k in range(steps)])
    assert float(q[0]) == pytest.approx(expected, abs=1e-5)
    assert expected < 0.9  # a perfect attribution does not score 1 in Quantus's variant


# ----------------------------------------------------------------------------- properties
def test_sanity_spearman_equals_mprt_under_the_same_randomisation(digits, monkeypatch):
    """Both randomise top-down and cumulatively and compare |maps| by Spearman (ties averaged).
    With xplain's N(0, std) redraw replaced by Quantus's layer.reset_parameters() under
    torch.manual_seed(seed + 1), the per-layer curves agree. Quantus's average additionally
    counts the unrandomised step (similarity 1): quantus_avg = (1 + L · ours) / (L + 1)."""
    import xplain_builtins.metrics.properties as props

    model, x, t = digits
    X, Y = _np(x, t)
    layers = props.weight_layers(model)
    assert [
        n for n, mod in model.graph.named_modules() if hasattr(mod, "reset_parameters")
    ] == layers

    def quantus_like(model_, name, seed):
        module = copy.deepcopy(model_.graph.get_submodule(model_.node(name).target))
        torch.manual_seed(42 + 1)
        module.reset_parameters()
        return module

    monkeypatch.setattr(props, "_randomised_copy", quantus_like)
    a0 = _gradient(model.graph, x, t)  # signed: both take |map| (absolute=true, abs=True)
    ours = _score(
        "sanity",
        model,
        x,
        t,
        a0,
        explain=lambda xx, tt: xplain.Attribution(_gradient(model.graph, xx, tt)),
    )
    monkeypatch.undo()

    def explain_func(model, inputs, targets, **kwargs):
        return _gradient(model, inputs, targets).numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantus.MPRT(seed=42, **Q)(
            model=model.graph,
            x_batch=X,
            y_batch=Y,
            a_batch=None,
            explain_func=explain_func,
            device="cpu",
        )
        q_avg = quantus.MPRT(seed=42, return_average_correlation=True, **Q)(
            model=model.graph,
            x_batch=X,
            y_batch=Y,
            a_batch=None,
            explain_func=explain_func,
            device="cpu",
        )
    assert list(q) == ["original"] + layers[::-1]
    curve = ours["sanity-spearman-curve"]
    np.testing.assert_allclose(q["original"], curve[:, 0], atol=1e-6)
    for k, name in enumerate(layers[::-1], start=1):
        np.testing.assert_allclose(q[name], curve[:, k], atol=1e-5)
    big = len(layers)
    np.testing.assert_allclose(q_avg, (1 + big * ours["sanity-spearman"]) / (big + 1), atol=1e-5)
    assert (ours["sanity-spearman"] < 0.8).all()  # randomisation changed the maps


def test_class_sensitivity_equals_random_logit_with_two_classes():
    """Quantus's RandomLogit compares the map of the target with that of a random other class
    (default similarity SSIM, higher = less sensitive). With two classes the other class is
    forced in both libraries, and with Quantus's similarity set to xplain's l2 distance of
    l2-normalised maps the scores agree."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 2),
    )
    model = Wrapped(net, 2)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 1, 0, 1])

    def explain(xx, tt):
        return xplain.Attribution(_gradient(net, xx, tt))

    def l2_of_unit(u, v, batched=True, **kwargs):  # xplain's normalise=l2 distance, B×F arrays
        u = u / np.linalg.norm(u, axis=1, keepdims=True)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        return np.linalg.norm(u - v, axis=1)

    a = _gradient(net, x, t)
    for other in ("second", "random"):
        ours = _score(
            "class-sensitivity", model, x, t, a, explain=explain, params={"other": other}
        )["class-sensitivity"]
        q = quantus.RandomLogit(num_classes=2, similarity_func=l2_of_unit, **Q)(
            model=net,
            x_batch=x.numpy(),
            y_batch=t.numpy(),
            a_batch=a[:, None].numpy(),
            explain_func=lambda model, inputs, targets, **kw: _gradient(
                model, inputs, targets
            ).numpy(),
            device="cpu",
        )
        np.testing.assert_allclose(ours, np.array(q), rtol=1e-5)
    assert (ours > 0.05).all()
