"""Metric plugins: hand-computed tiny cases, direction tests on shapes_eval, and a contract for all.

Direction tests build an oracle attribution from the known boxes (1 inside the target's box, 0
outside), an anti-oracle (its complement) and uniform noise, and check that every metric orders
them oracle > random > anti-oracle in its own direction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import xplain
import xplain.testing as xt
from xplain.plugins.registry import Registry
from xplain.run.api import run_method

from .shapes_batch import shapes_eval_batch

REG = Registry().discover()
METRICS = sorted(REG.metrics)


def _score(name, model, x, targets, maps, extras=None, **context):
    metric = REG.metric(name)
    params = xplain.validate_params(metric.params, context.pop("params", {}), name)
    ctx = {"params": params, "seed": 0, "cache": {}, "forward_batch": 64, **context}
    return metric.compute(model, x, targets, xplain.Attribution(maps, extras or {}), **ctx)


class Linear:
    """logit0 = <w, x> summed over channels, logit1 = 0: every perturbation is hand-computable."""

    num_classes = 2
    device = torch.device("cpu")

    def __init__(self, w):
        self.w = w

    def __call__(self, x):
        z = (x * self.w).flatten(1).sum(1)
        return torch.stack([z, torch.zeros_like(z)], 1)

    def infer(self, x):  # forward-only work asks for this (Model.infer)
        return self(x)


def sig(v):
    return 1 / (1 + math.exp(-v))


def trap(ys):
    return (sum(ys) - ys[0] / 2 - ys[-1] / 2) / (len(ys) - 1)


W = torch.tensor([[3.0, 2.0], [1.0, 0.0]]).view(1, 1, 2, 2)
ONES = torch.ones(1, 1, 2, 2)
T0 = torch.tensor([0])


# ----------------------------------------------------------------------------- faithfulness
def test_deletion_hand_case():
    r = _score("deletion", Linear(W), ONES, T0, W[:, 0], params={"step": 1})
    expected = [sig(6), sig(3), sig(1), sig(0), sig(0)]  # pixels zeroed in order 3, 2, 1, 0
    torch.testing.assert_close(r["deletion-curve"][0], torch.tensor(expected))
    assert float(r["deletion"][0]) == pytest.approx(trap(expected), rel=1e-6)
    two = _score("deletion", Linear(W), ONES, T0, W[:, 0], params={"step": 2})["deletion-curve"][0]
    torch.testing.assert_close(two, torch.tensor([sig(6), sig(1), sig(0)]))


def test_insertion_hand_case():
    # blur_size 3 with a huge sigma is a 1/9 box filter with zero padding: a 2x2 image of ones
    # becomes 4/9 everywhere; then pixels of weight 3, 2, 1, 0 are restored in that order.
    r = _score(
        "insertion",
        Linear(W),
        ONES,
        T0,
        W[:, 0],
        params={"step": 1, "blur_size": 3, "blur_sigma": 1e6},
    )
    b = 4 / 9
    logits = [6 * b, 3 + 3 * b, 5 + b, 6, 6]
    torch.testing.assert_close(r["insertion-curve"][0], torch.tensor([sig(v) for v in logits]))
    assert float(r["insertion"][0]) == pytest.approx(trap([sig(v) for v in logits]), rel=1e-6)


def test_pixel_perturbation_hand_case():
    r = _score("pixel-perturbation", Linear(W), ONES, T0, W[:, 0], params={"steps": 4})
    morf = [sig(v) for v in (6, 3, 1, 0, 0)]
    lerf = [sig(v) for v in (6, 6, 5, 3, 0)]  # least relevant first: weights 0, 1, 2, 3
    torch.testing.assert_close(r["morf-curve"][0], torch.tensor(morf))
    torch.testing.assert_close(r["lerf-curve"][0], torch.tensor(lerf))
    assert float(r["pixel-perturbation"][0]) == pytest.approx(trap(lerf) - trap(morf), rel=1e-5)
    # mean baseline of a constant image changes nothing: flat curves
    flat = _score(
        "pixel-perturbation", Linear(W), ONES, T0, W[:, 0], params={"steps": 4, "baseline": "mean"}
    )
    torch.testing.assert_close(flat["morf-curve"][0], torch.full((5,), sig(6)))
    # tiles: a 4x4 image in 2x2 tiles ranks tiles by their mean relevance
    w4 = torch.zeros(1, 1, 4, 4)
    w4[..., 2:, 2:] = 1.0  # only the bottom-right tile matters
    rel = torch.zeros(1, 4, 4)
    rel[:, 2:, 2:] = 5.0
    t = _score(
        "pixel-perturbation",
        Linear(w4),
        torch.ones(1, 1, 4, 4),
        T0,
        rel,
        params={"tile": 2, "steps": 4},
    )
    torch.testing.assert_close(t["morf-curve"][0], torch.tensor([sig(4)] + [sig(0)] * 4))
    torch.testing.assert_close(t["lerf-curve"][0], torch.tensor([sig(4)] * 4 + [sig(0)]))


def test_sensitivity_n_is_one_for_the_exact_attribution_of_a_linear_model():
    # For a linear model with a zero baseline, the logit drop of a subset equals the sum of
    # input x weight over it, so input x gradient correlates perfectly (and its negation at -1).
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 1, 6, 6, generator=g)
    x = torch.rand(1, 1, 6, 6, generator=g) + 0.5
    exact = (w * x)[:, 0]
    r = _score("sensitivity-n", Linear(w), x, T0, exact, params={"num_n": 5, "subsets": 20})
    torch.testing.assert_close(
        r["sensitivity-n-curve"], torch.ones(1, len(r["sensitivity-n-curve@x"]))
    )
    assert r["sensitivity-n-curve@x"].tolist() == sorted(set(r["sensitivity-n-curve@x"].tolist()))
    anti = _score("sensitivity-n", Linear(w), x, T0, -exact, params={"num_n": 5, "subsets": 20})
    assert float(anti["sensitivity-n"][0]) == pytest.approx(-1.0, abs=1e-5)
    const = _score(
        "sensitivity-n", Linear(w), x, T0, torch.ones(1, 6, 6), params={"num_n": 5, "subsets": 20}
    )
    assert float(const["sensitivity-n"][0]) == 0.0  # subset sums never vary: r defined as 0


# ----------------------------------------------------------------------------- localisation
def test_ebpg_bbox_accuracy_hand_cases():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    box = [torch.tensor([[1.0, 0.0, 2.0, 1.0]])]  # x in [1, 2), y in [0, 1): row 0, column 1
    r = _score("ebpg", None, torch.zeros(1, 1, 2, 2), T0, maps, boxes=box)
    assert float(r["ebpg"][0]) == pytest.approx(2 / 10)
    neg = torch.tensor([[[-5.0, 2.0], [3.0, -1.0]]])  # negative values carry no energy
    assert float(
        _score("ebpg", None, torch.zeros(1, 1, 2, 2), T0, neg, boxes=box)["ebpg"][0]
    ) == pytest.approx(2 / 5)
    m3 = torch.tensor([[[9.0, 8.0, 0.0], [0.0, 7.0, 0.0], [0.0, 0.0, 0.0]]])
    box2 = [
        torch.tensor([[0.0, 1.0, 2.0, 2.0]])
    ]  # row 1, columns 0-1: 2 pixels; top-2 = (0,0), (0,1)
    acc = _score("bbox-accuracy", None, torch.zeros(1, 1, 3, 3), T0, m3, boxes=box2)[
        "bbox-accuracy"
    ]
    assert float(acc[0]) == 0.0
    box3 = [
        torch.tensor([[1.0, 0.0, 2.0, 2.0]])
    ]  # column 1, rows 0-1: pixels 8 and 7; top-2 = 9, 8
    assert (
        float(
            _score("bbox-accuracy", None, torch.zeros(1, 1, 3, 3), T0, m3, boxes=box3)[
                "bbox-accuracy"
            ][0]
        )
        == 0.5
    )
    # class filter: a box of another class does not count; no box at all -> NaN
    lab = [torch.tensor([1])]
    assert math.isnan(
        float(
            _score("ebpg", None, torch.zeros(1, 1, 2, 2), T0, maps, boxes=box, box_labels=lab)[
                "ebpg"
            ][0]
        )
    )
    assert math.isnan(
        float(_score("ebpg", None, torch.zeros(1, 1, 2, 2), T0, maps, boxes=[None])["ebpg"][0])
    )


def test_ehr_hand_case():
    heat = torch.zeros(1, 4, 4)
    heat[0, :2, :2] = 1.0  # the box
    heat[0, 3, :] = 0.5  # four pixels outside
    box = [torch.tensor([[0.0, 0.0, 2.0, 2.0]])]
    r = _score("ehr", None, torch.zeros(1, 1, 4, 4), T0, heat, boxes=box)["ehr"]
    # poi = four 0.5 and four 1.0; thresholds for q <= 0.4 are 0.5 (ratio 4/8), q >= 0.5 above 0.5 (ratio 1)
    ratios = [0.5] * 5 + [1.0] * 6
    expected = sum((a + b) / 2 * 0.1 for a, b in zip(ratios, ratios[1:]))
    assert expected == pytest.approx(0.775)
    assert float(r[0]) == pytest.approx(expected, abs=1e-6)


def test_ehr_paper_form_sums_heat_and_keeps_unit_maps():
    """InputIBA 4.5: ratio = sum of attribution inside the box / number of pixels above t; a map
    its method declares to be in [0, 1] (a mask) is not divided by its maximum (scale=auto)."""
    heat = torch.zeros(1, 4, 4)
    heat[0, :2, :2] = 0.8  # the box
    heat[0, 3, :] = 0.4  # four pixels outside
    box = [torch.tensor([[0.0, 0.0, 2.0, 2.0]])]
    x = torch.zeros(1, 1, 4, 4)

    def ehr(**params):  # a mask: the method says its map is in [0, 1]
        mask = xplain.Attribution(heat, info={"map_range": "unit"})
        return float(
            REG.metric("ehr").compute(None, x, T0, mask, params=params, boxes=box)["ehr"][0]
        )

    # poi = four 0.4 and four 0.8: q <= 0.4 -> t = 0.4, 8 pixels above, heat inside 3.2 -> 0.4;
    # q >= 0.5 -> t in (0.4, 0.792], the 4 box pixels, heat 3.2 -> 0.8
    paper = trap([0.4] * 5 + [0.8] * 6)
    assert paper == pytest.approx(0.62)
    assert ehr() == pytest.approx(paper, abs=1e-6)
    # scale=max divides by 0.8 first: 1.0 inside, 0.5 outside -> ratios 0.5 and 1.0
    assert ehr(scale="max") == pytest.approx(0.775, abs=1e-6)
    # pixel counts (the former default) do not see the heat at all
    assert ehr(weight=False) == pytest.approx(0.775, abs=1e-6)
    assert ehr(weight=False, scale="max") == pytest.approx(0.775, abs=1e-6)
    # a map of arbitrary scale (no map_range) is divided by its maximum, whatever its values
    for scale in (10.0, 1.0, 0.01):
        r = _score("ehr", None, x, T0, heat * scale, boxes=box)["ehr"]
        assert float(r[0]) == pytest.approx(0.775, abs=1e-6)


def test_ibd_hand_case():
    border = torch.ones(1, 64, 64)
    border[:, 5:59, 5:59] = 0  # 16 px at 224 -> 5 px at 64
    x = torch.zeros(1, 3, 64, 64)
    assert float(_score("ibd", None, x, T0, border)["ibd"][0]) == pytest.approx(1.0)
    assert float(_score("ibd", None, x, T0, 1 - border)["ibd"][0]) == pytest.approx(0.0)
    flat = _score("ibd", None, x, T0, torch.ones(1, 64, 64))["ibd"][0]
    assert float(flat) == pytest.approx(1 - 54 * 54 / 64 / 64)


# ----------------------------------------------------------------------------- properties
def test_ssim_and_spearman_hand_cases():
    from xplain_builtins.metrics.properties import spearman, ssim

    a, b = 0.3, 0.8
    c1 = 0.01**2
    got = ssim(torch.full((1, 16, 16), a), torch.full((1, 16, 16), b))
    assert float(got[0]) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)
    x = torch.rand(2, 20, 20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    assert float(ssim(x[:1], 1 - x[:1])[0]) < 0  # inverted contrast: negative structure term
    u = torch.tensor([[1.0, 2.0, 2.0, 3.0]])
    v = torch.tensor([[1.0, 3.0, 2.0, 4.0]])
    ru, rv = np.array([1, 2.5, 2.5, 4]), np.array([1, 3, 2, 4.0])  # average ranks for the tie
    expected = np.corrcoef(ru, rv)[0, 1]
    assert float(spearman(u, v)[0]) == pytest.approx(expected, rel=1e-6)
    assert float(spearman(u, u.exp())[0]) == pytest.approx(1.0)


def test_class_sensitivity_hand_case():
    class Fixed(Linear):
        def __call__(self, x):
            return torch.tensor([[0.0, 5.0, 3.0, -1.0]]).expand(x.shape[0], 4)

    Fixed.num_classes = 4
    seen = {}

    def explain(x, targets):
        seen["other"] = targets.tolist()
        return xplain.Attribution(torch.tensor([[[0.0, 4.0]]]))

    a = torch.tensor([[[3.0, 0.0]]])
    r = _score(
        "class-sensitivity",
        Fixed(None),
        torch.zeros(1, 1, 1, 2),
        torch.tensor([1]),
        a,
        explain=explain,
        params={"normalise": "none"},
    )
    assert seen["other"] == [2] and float(r["class-sensitivity"][0]) == pytest.approx(5.0)
    _score(
        "class-sensitivity",
        Fixed(None),
        torch.zeros(1, 1, 1, 2),
        torch.tensor([1]),
        a,
        explain=explain,
        params={"other": "last"},
    )
    assert seen["other"] == [3]
    r = _score(
        "class-sensitivity",
        Fixed(None),
        torch.zeros(1, 1, 1, 2),
        torch.tensor([1]),
        a,
        explain=explain,
    )
    assert float(r["class-sensitivity"][0]) == pytest.approx(
        math.sqrt(2)
    )  # unit vectors at right angles


def test_completeness_hand_case():
    x = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[-1.0, -1.0], [-1.0, -1.0]]]])
    t = torch.tensor([0, 0])
    model = Linear(W)  # logit0(x) = 6 and -6
    r = _score("completeness", model, x, t, torch.zeros(2, 2, 2), extras={"source": 0.5 * x})
    torch.testing.assert_close(r["completeness"], torch.tensor([50.0, 50.0]))
    torch.testing.assert_close(
        r["completeness-positive"], torch.tensor([50.0, 0.0])
    )  # -3 > -6: sufficient
    exact = _score("completeness", model, x, t, torch.zeros(2, 2, 2), extras={"source": x})
    torch.testing.assert_close(exact["completeness"], torch.zeros(2))
    none = _score("completeness", model, x, t, torch.zeros(2, 2, 2))
    assert torch.isnan(none["completeness"]).all()
    # a source signal at an inner layer: the method reports its logit Φ(S₀) per sample instead
    metric = REG.metric("completeness")
    inner = xplain.Attribution(
        torch.zeros(2, 2, 2),
        {"source_signal": torch.zeros(2, 5)},
        sample_info=[{"source_logit": 3.0}, {"source_logit": -3.0}],
    )
    r = metric.compute(model, x, t, inner)
    torch.testing.assert_close(r["completeness"], torch.tensor([50.0, 50.0]))
    torch.testing.assert_close(r["completeness-positive"], torch.tensor([50.0, 0.0]))


def test_sanity_restores_the_model_and_separates_model_dependent_maps(tiny_model):
    from xplain_builtins.metrics.properties import weight_layers

    x = tiny_model.example_input(2, seed=3)
    t = torch.tensor([0, 2])
    before = {k: v.clone() for k, v in tiny_model.graph.state_dict().items()}
    code = tiny_model.graph.code
    results = {}
    for name in ("saliency", "random"):
        method = REG.method(name)
        a = run_method(tiny_model, method, x, t, {}, 0)
        results[name] = _score(
            "sanity",
            tiny_model,
            x,
            t,
            a.maps,
            explain=lambda xx, tt, m=method: run_method(tiny_model, m, xx, tt, {}, 0),
        )
    after = tiny_model.graph.state_dict()
    assert tiny_model.graph.code == code and all(torch.equal(before[k], after[k]) for k in before)
    layers = len(weight_layers(tiny_model))
    assert layers >= 4 and results["saliency"]["sanity-ssim-curve"].shape == (2, layers + 1)
    torch.testing.assert_close(
        results["random"]["sanity"], torch.ones(2)
    )  # ignores the model entirely
    assert (results["saliency"]["sanity"] < 0.9).all()
    assert (results["saliency"]["sanity-ssim-curve"][:, 0] == 1).all()


# ----------------------------------------------------------------------------- direction on shapes_eval
@pytest.fixture(scope="module")
def shapes():
    model, x, t, ctx, roi = shapes_eval_batch(16)
    oracle = roi.float() + 0.01 * torch.rand(roi.shape, generator=torch.Generator().manual_seed(0))
    anti = (~roi).float() + 0.01 * torch.rand(roi.shape, generator=torch.Generator().manual_seed(1))
    rand = torch.rand(roi.shape, generator=torch.Generator().manual_seed(2))
    return model, x, t, ctx, {"oracle": oracle, "random": rand, "anti": anti}


@pytest.mark.parametrize(
    "name,key",
    [
        ("ebpg", "ebpg"),
        ("bbox-accuracy", "bbox-accuracy"),
        ("ehr", "ehr"),
        ("deletion", "deletion"),
        ("insertion", "insertion"),
        ("pixel-perturbation", "pixel-perturbation"),
        ("sensitivity-n", "sensitivity-n"),
    ],
)
def test_direction_oracle_beats_random_beats_anti(shapes, name, key):
    model, x, t, ctx, maps = shapes
    params = (
        {"num_n": 6, "subsets": 30}
        if name == "sensitivity-n"
        else {"steps": 32}
        if name == "pixel-perturbation"
        else {}
    )
    if name == "deletion":
        # Deleting to black paints the box itself as a black rectangle, which this model reads as
        # a square (and a deleted disc as a circle): for square targets the box oracle is *not*
        # the best deletion order. Triangles and crosses are not recreated by a blank box.
        keep = (t == 2) | (t == 3)
        x, t = x[keep], t[keep]
        ctx = {k: [v for v, ok in zip(vs, keep) if ok] for k, vs in ctx.items()}
        maps = {k: m[keep] for k, m in maps.items()}
    means = {
        k: float(torch.nanmean(_score(name, model, x, t, m, params=dict(params), **ctx)[key]))
        for k, m in maps.items()
    }
    sign = 1 if REG.metric(name).higher_is_better_for(key) else -1
    assert sign * means["oracle"] > sign * means["random"] > sign * means["anti"], means


def test_ibd_direction(shapes):
    model, x, t, ctx, _ = shapes
    border = torch.ones(8, 64, 64)
    border[:, 5:59, 5:59] = 0
    centre, noise = 1 - border, torch.rand(8, 64, 64, generator=torch.Generator().manual_seed(3))
    ibd = {
        k: float(_score("ibd", model, x, t, m)["ibd"].mean())
        for k, m in (("centre", centre), ("random", noise), ("border", border))
    }
    assert ibd["centre"] < ibd["random"] < ibd["border"]  # lower is better


def test_class_sensitivity_and_completeness_direction(shapes):
    model, x, t, ctx, maps = shapes
    sal, rnd = REG.method("saliency"), REG.method("random")
    scores = {}
    for m in (sal, rnd):
        a = run_method(model, m, x, t, {}, 0)
        scores[m.name] = float(
            _score(
                "class-sensitivity",
                model,
                x,
                t,
                a.maps,
                explain=lambda xx, tt, m=m: run_method(model, m, xx, tt, {}, 0),
            )["class-sensitivity"].mean()
        )
    assert scores["saliency"] > 0.1 and scores["random"] == 0.0
    apc = {
        k: float(
            _score("completeness", model, x, t, maps["oracle"], extras={"source": s})[
                "completeness"
            ].mean()
        )
        for k, s in (
            ("exact", x),
            ("noisy", x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))),
            ("blank", torch.zeros_like(x)),
        )
    }
    assert apc["exact"] == 0 and apc["exact"] < apc["noisy"] < apc["blank"]  # lower is better


# ----------------------------------------------------------------------------- contract over every metric
@pytest.mark.parametrize("name", METRICS)
def test_metric_contract(name, tiny_model):
    """Per-sample (B,) scores, finite or NaN; batch of 3 == three batches of 1; model unchanged
    (:func:`xplain.testing.check_metric`, small settings for the expensive metrics)."""
    small = {
        "sensitivity-n": {"num_n": 3, "subsets": 5},
        "pixel-perturbation": {"steps": 8},
        "sanity": {"layers": 2},
        "faithfulness-correlation": {"nr_runs": 8, "subset_size": 16},
        "faithfulness-estimate": {"features_in_step": 64},
        "monotonicity-correlation": {"features_in_step": 128, "nr_samples": 3},
        "infidelity": {"perturb_patch_sizes": "8", "baseline": "uniform", "n_perturb_samples": 2},
        "region-perturbation": {"regions_evaluation": 8, "order": "random"},
        "continuity": {"nr_steps": 4},
        "mprt": {"layers": 2},
        "smooth-mprt": {"layers": 2, "nr_samples": 3},
        "efficient-mprt": {"layers": 2},
        "road": {"percentages": "10,50,90", "lerf": True},
        **{
            n: {"nr_samples": 3}
            for n in (
                "max-sensitivity",
                "avg-sensitivity",
                "local-lipschitz",
                "relative-input-stability",
                "relative-output-stability",
                "relative-representation-stability",
            )
        },
    }.get(name, {})
    xt.check_metric(REG.metric(name), tiny_model, params=small, registry=REG)


def test_perturbation_chunks_halve_on_out_of_memory():
    class Small(Linear):  # "runs out of memory" above 2 images per forward pass
        def __call__(self, x):
            if x.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().__call__(x)

    full = _score("deletion", Linear(W), ONES, T0, W[:, 0], params={"step": 1})["deletion-curve"]
    small = _score("deletion", Small(W), ONES, T0, W[:, 0], params={"step": 1})["deletion-curve"]
    torch.testing.assert_close(small, full)


# ----------------------------------------------------------------------------- batched path == naive
def _naive_curve(model, base, other, orders, counts, targets):
    """Reference: every step's image built from scratch (``base`` with the first ``counts[k]``
    pixels of ``orders[s]`` taken from ``other``) and forwarded alone; softmax of the target."""
    b, c, h, w = base.shape
    rows = []
    with torch.no_grad():
        for s in range(b):
            row = []
            for k in counts:
                img = base[s].clone().view(c, h * w)
                idx = orders[s][:k]
                img[:, idx] = other[s].reshape(c, h * w)[:, idx]
                # the metric's engine (model.infer): the reference checks the batching, not engines
                p = torch.softmax(model.infer(img.view(1, c, h, w)).float(), 1)[0, targets[s]]
                row.append(float(p))
            rows.append(row)
    return torch.tensor(rows)


# forward_batch 1..64 and a budget of ~one image: 1, 2 or 5 images per pass, chunks that split
# and straddle samples' curves, and one pass for everything
_PASSES = [
    {"forward_batch": 1},
    {"forward_batch": 2},
    {"forward_batch": 5},
    {"forward_batch": 64},
    {"forward_batch": None, "params": {"memory_budget_mb": 1e-6}},
    {"forward_batch": None},
]


def _curve_case(tiny_model):
    x = tiny_model.example_input(3, seed=7)
    with torch.no_grad():
        targets = tiny_model(x).argmax(1)
    maps = torch.randn(3, *x.shape[2:], generator=torch.Generator().manual_seed(2))
    maps[:, :2] = 0.5  # ties: ranked by pixel order
    return x, targets, maps


def _case_model(tiny_model, kind, x):
    """The real CNN, or a linear model of the same input (a model-like: the fallback pass size)
    whose logits do not depend on the batch they are computed in."""
    if kind == "cnn":
        return tiny_model
    w = torch.randn(1, *x.shape[1:], generator=torch.Generator().manual_seed(5))
    return Linear(0.02 * w)  # logits of order 1: probabilities away from 0 and 1


def _tolerance(kind, passes):
    """Exact, except for the CNN at several images per pass: its convolutions' float rounding
    depends on the batch (oneDNN's blocking), by a few 1e-8 — the model's, not the metric's."""
    one = passes["forward_batch"] == 1 or "params" in passes
    return 0.0 if kind == "linear" or one else 1e-6


@pytest.mark.parametrize("kind", ["cnn", "linear"])
@pytest.mark.parametrize("passes", _PASSES)
def test_perturbation_curves_equal_a_naive_per_step_reference(tiny_model, passes, kind):
    """Deletion, insertion and MoRF/LeRF from the batched, buffered path equal image-by-image
    forwards of images built from scratch, for any number of images per forward pass."""
    x, t, maps = _curve_case(tiny_model)
    model, tol = _case_model(tiny_model, kind, x), _tolerance(kind, passes)
    if kind == "linear":
        t = t % 2
    b, c, h, w = x.shape
    n = h * w
    step = 7
    counts = [min(k * step, n) for k in range(-(-n // step) + 1)]
    desc = [torch.argsort(m.flatten(), descending=True, stable=True) for m in maps]
    ctx = {"forward_batch": passes["forward_batch"]}
    extra = passes.get("params", {})
    from xplain_builtins.metrics.faithfulness import gaussian_blur

    got = _score("deletion", model, x, t, maps, params={"step": step, **extra}, **ctx)
    want = _naive_curve(model, x, torch.zeros_like(x), desc, counts, t)
    torch.testing.assert_close(got["deletion-curve"], want, rtol=0, atol=tol)
    got = _score("insertion", model, x, t, maps, params={"step": step, **extra}, **ctx)
    want = _naive_curve(model, gaussian_blur(x, 11, 5.0), x, desc, counts, t)
    torch.testing.assert_close(got["insertion-curve"], want, rtol=0, atol=tol)
    # pixel-perturbation with 2x2 tiles: a tile's pixels go together, tiles by mean relevance
    tile, steps = 2, 6
    rel = torch.nn.functional.avg_pool2d(maps[:, None], tile, ceil_mode=True)[:, 0]
    th, tw = rel.shape[1:]
    tile_of = (torch.arange(h)[:, None] // tile * tw + torch.arange(w)[None, :] // tile).flatten()
    tcounts = [round(k * th * tw / steps) for k in range(steps + 1)]
    got = _score(
        "pixel-perturbation",
        model,
        x,
        t,
        maps,
        params={"tile": tile, "steps": steps, **extra},
        **ctx,
    )
    for key, descending in (("morf-curve", True), ("lerf-curve", False)):
        rows = []
        for s in range(b):
            tiles = torch.argsort(rel[s].flatten(), descending=descending, stable=True)
            rank = torch.empty_like(tiles)
            rank[tiles] = torch.arange(tiles.numel())
            pix = torch.argsort(rank[tile_of], stable=True)  # pixels in their tiles' order
            done = [int((rank[tile_of] < k).sum()) for k in tcounts]  # pixels of the first k tiles
            zero = torch.zeros_like(x[s : s + 1])
            rows.append(_naive_curve(model, x[s : s + 1], zero, [pix], done, t[s : s + 1])[0])
        torch.testing.assert_close(got[key], torch.stack(rows), rtol=0, atol=tol)


@pytest.mark.parametrize("passes", _PASSES)
def test_sensitivity_n_equals_a_naive_per_subset_reference(tiny_model, passes):
    """Sensitivity-n from the batched path equals one forward per (image, subset) and a plain
    Pearson correlation, for any number of images per forward pass."""
    from xplain_builtins.metrics.faithfulness import _subset_masks

    x, t, maps = _curve_case(tiny_model)
    b, c, h, w = x.shape
    params = {"num_n": 3, "subsets": 4, **passes.get("params", {})}
    got = _score(
        "sensitivity-n",
        tiny_model,
        x,
        t,
        maps,
        params=params,
        forward_batch=passes["forward_batch"],
    )
    ns = [int(v) for v in got["sensitivity-n-curve@x"]]
    masks = _subset_masks(h * w, tuple(ns), 4, 0, x.device)
    assert [int(m.sum()) for m in masks[::4]] == ns
    want = torch.zeros(b, len(ns))
    with torch.no_grad():
        for s in range(b):
            clean = float(tiny_model(x[s : s + 1])[0, t[s]])
            drops, sums = [], []
            for m in masks:
                img = torch.where(m.view(1, h, w), torch.zeros(()), x[s])
                drops.append(clean - float(tiny_model(img[None])[0, t[s]]))
                sums.append(float(maps[s].flatten()[m].sum()))
            for j in range(len(ns)):
                r = np.corrcoef(sums[4 * j : 4 * j + 4], drops[4 * j : 4 * j + 4])[0, 1]
                want[s, j] = 0.0 if np.isnan(r) else r
    torch.testing.assert_close(got["sensitivity-n-curve"], want, rtol=0, atol=1e-4)


def test_a_method_with_gradients_runs_after_the_metrics_inference_mode(tiny_model):
    """The perturbation metrics forward under torch.inference_mode: nothing of that may stay in
    the model (a cached inference tensor would break the next batch's gradient method)."""
    x, t, maps = _curve_case(tiny_model)
    gradient = REG.method("gradient")
    params = xplain.validate_params(gradient.params, {}, "gradient")
    before = run_method(tiny_model, gradient, x, t, params, 0).maps
    for name in ("deletion", "insertion", "pixel-perturbation", "sensitivity-n"):
        small = {"sensitivity-n": {"num_n": 2, "subsets": 3}, "pixel-perturbation": {"steps": 4}}
        _score(name, tiny_model, x, t, maps, params=small.get(name, {"step": 64}))
    after = run_method(tiny_model, gradient, x, t, params, 0).maps
    assert torch.equal(before, after)
