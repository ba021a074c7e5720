"""Complexity and localisation metrics (issue 23) against Quantus 0.6 and hand-computed cases.

Both libraries get the same images, maps and masks; deterministic scores agree to 1e-5
relative. Quantus is a test dependency (the ``test`` extra); without it the module is skipped.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

from .quantus_family_common import Q, as_np, gradient, score, untie  # noqa: E402
from .shapes_batch import shapes_eval_batch  # noqa: E402


@pytest.fixture(scope="module")
def shapes():
    model, x, t, ctx, roi = shapes_eval_batch(4)
    g = untie(gradient(model.graph, x, t))
    assert (g < 0).any()
    return model, x, t, ctx, roi[:, None].numpy().astype(np.uint8), g


# ----------------------------------------------------------------------------- complexity
@pytest.mark.parametrize(
    "name,cls,kwargs",
    [
        ("sparseness", "Sparseness", {}),
        ("complexity", "Complexity", {}),
        ("effective-complexity", "EffectiveComplexity", {}),
        ("effective-complexity", "EffectiveComplexity", {"eps": 0.05}),
    ],
)
def test_complexity_equals_quantus(shapes, name, cls, kwargs):
    model, x, t, _, _, g = shapes
    X, Y = as_np(x, t)
    params = dict(kwargs)
    for absolute in (True, False):
        if not absolute and name != "effective-complexity":
            continue  # Gini and entropy of a signed map are ill-posed (sums near 0, log < 0)
        ours = score(name, model, x, t, g, params={**params, "absolute": absolute})[name]
        per_image = [  # Quantus normalises by the batch maximum: compare image by image
            float(
                getattr(quantus, cls)(abs=absolute, **kwargs, **Q)(
                    model=None,
                    x_batch=X[i : i + 1],
                    y_batch=Y[i : i + 1],
                    a_batch=g[i : i + 1, None].numpy(),
                )[0]
            )
            for i in range(len(x))
        ]
        np.testing.assert_allclose(ours, per_image, rtol=1e-5)
    assert len(set(np.round(ours, 5))) > 1


def test_effective_complexity_quantus_depends_on_the_batch_ours_does_not(shapes):
    """Quantus divides by the maximum over the batch: scaling one image's map changes the other
    images' counts. xplain normalises per image, so a batch of 4 scores as 4 batches of 1."""
    model, x, t, _, _, g = shapes
    X, Y = as_np(x, t)
    a = g.clone()
    a[0] *= 100
    q = quantus.EffectiveComplexity(eps=0.05, **Q)(
        model=None, x_batch=X, y_batch=Y, a_batch=a[:, None].numpy()
    )
    ours = score("effective-complexity", model, x, t, a, params={"eps": 0.05})
    alone = [
        score(
            "effective-complexity",
            model,
            x[i : i + 1],
            t[i : i + 1],
            a[i : i + 1],
            params={"eps": 0.05},
        )["effective-complexity"][0]
        for i in range(4)
    ]
    np.testing.assert_array_equal(ours["effective-complexity"], alone)
    assert (np.array(q)[1:] < ours["effective-complexity"][1:]).all()


def test_complexity_hand_cases():
    x = torch.zeros(3, 1, 2, 2)
    t = torch.zeros(3, dtype=torch.long)
    maps = torch.tensor(
        [[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]], [[-2.0, 1.0], [1.0, 0.0]]]
    )
    sp = score("sparseness", None, x, t, maps)["sparseness"]
    # one pixel: sorted (e, e, e, 1+e), G = (-3e - e + e + 3(1+e)) / (4 (1+4e)) -> 3/4
    assert sp[0] == pytest.approx(0.75, abs=1e-6) and sp[1] == pytest.approx(0.0, abs=1e-6)
    # |(-2, 1, 1, 0)| / 2 = (1, .5, .5, 0): sorted (0, .5, .5, 1): (-3*0 - .5 + .5 + 3) / (4*2)
    assert sp[2] == pytest.approx(3 / 8, abs=1e-6)
    cx = score("complexity", None, x, t, maps)["complexity"]
    assert cx[0] == pytest.approx(0.0, abs=1e-6) and cx[1] == pytest.approx(math.log(4), rel=1e-6)
    assert cx[2] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)), rel=1e-6)
    ec = score("effective-complexity", None, x, t, maps, params={"eps": 0.4})
    assert ec["effective-complexity"].tolist() == [1, 4, 3]


# ----------------------------------------------------------------------------- localisation
LOCALISATION = [
    ("pointing-game", "PointingGame", {}, {}),
    ("relevance-mass-accuracy", "RelevanceMassAccuracy", {}, {}),
    ("relevance-mass-accuracy", "RelevanceMassAccuracy", {"absolute": True}, {"abs": True}),
    ("relevance-rank-accuracy", "RelevanceRankAccuracy", {}, {}),
    ("top-k-intersection", "TopKIntersection", {"k": 300}, {"k": 300}),
    (
        "top-k-intersection",
        "TopKIntersection",
        {"k": 50, "concept_influence": True},
        {"k": 50, "concept_influence": True},
    ),
    ("attribution-localisation", "AttributionLocalisation", {}, {}),
    (
        "attribution-localisation",
        "AttributionLocalisation",
        {"absolute": False, "positive_attributions": True},
        {"abs": False, "positive_attributions": True},
    ),
]


@pytest.mark.parametrize("name,cls,ours_params,q_kwargs", LOCALISATION)
def test_localisation_equals_quantus(shapes, name, cls, ours_params, q_kwargs):
    model, x, t, ctx, s, g = shapes
    X, Y = as_np(x, t)
    if name == "relevance-mass-accuracy" and not ours_params:
        # a signed gradient sums to nearly 0, where Quantus' float32 sum loses the digits: shift
        # the map so that its signed sum is well conditioned
        g = g + g.abs().mean((1, 2), keepdim=True)
    ours = score(name, model, x, t, g, params=dict(ours_params), **ctx)[name]
    q = np.array(
        getattr(quantus, cls)(**q_kwargs, **Q)(
            model=None, x_batch=X, y_batch=Y, a_batch=g[:, None].numpy(), s_batch=s
        ),
        dtype=np.float64,
    )
    np.testing.assert_allclose(ours, q, rtol=1e-5, atol=1e-7)


def test_pointing_game_hits_and_misses_the_quantus_way(shapes):
    """A map whose maximum is put inside / outside the box: 1 / 0 in both libraries."""
    model, x, t, ctx, s, g = shapes
    X, Y = as_np(x, t)
    roi = torch.from_numpy(s[:, 0].astype(bool))
    m = g.clone()
    top = m.flatten(1).abs().amax(1).view(-1, 1, 1) * 2
    for i in range(4):
        where = roi[i] if i % 2 == 0 else ~roi[i]
        yy, xx = torch.nonzero(where)[0]
        m[i, yy, xx] = top[i, 0, 0]
    ours = score("pointing-game", model, x, t, m, **ctx)["pointing-game"]
    q = quantus.PointingGame(**Q)(
        model=None, x_batch=X, y_batch=Y, a_batch=m[:, None].numpy(), s_batch=s
    )
    assert ours.tolist() == [1, 0, 1, 0] == np.array(q, dtype=float).tolist()


def test_localisation_hand_cases():
    """4×4 map, box = the top-left 2×2 block (4 of 16 pixels)."""
    x = torch.zeros(1, 1, 4, 4)
    t = torch.zeros(1, dtype=torch.long)
    boxes = [torch.tensor([[0.0, 0.0, 2.0, 2.0]])]
    ctx = {"boxes": boxes, "box_labels": [None]}
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0], m[0, 1, 1], m[0, 3, 3], m[0, 2, 0] = 4.0, 2.0, 3.0, -1.0

    def s(name, **params):
        return float(score(name, None, x, t, m, params=params, **ctx)[name][0])

    assert s("pointing-game") == 1.0
    assert s("pointing-game", weighted=True) == pytest.approx(1 - 4 / 16)
    assert s("relevance-mass-accuracy") == pytest.approx(6 / 8)  # signed sums: (4+2)/(4+2+3-1)
    assert s("relevance-mass-accuracy", absolute=True) == pytest.approx(6 / 10)
    # top-4: 4 (in), 3 (out), 2 (in), then the first zero in pixel order: (0, 1), inside
    assert s("relevance-rank-accuracy") == pytest.approx(3 / 4)
    assert s("top-k-intersection", k=2) == pytest.approx(1 / 2)
    assert s("top-k-intersection", k=2, concept_influence=True) == pytest.approx(1 / 2 * 16 / 4)
    assert s("attribution-localisation") == pytest.approx(6 / 10)
    assert s("attribution-localisation", weighted=True) == pytest.approx(6 / 10 * 16 / 4)
    assert s("attribution-localisation", absolute=False, positive_attributions=True) == (
        pytest.approx(6 / 9)
    )
    no_box = score("pointing-game", None, x, t, m, boxes=[None], box_labels=[None])
    assert math.isnan(float(no_box["pointing-game"][0]))


def test_top_set_is_the_head_of_a_stable_descending_sort():
    """The selection behind relevance-rank-accuracy / top-k-intersection picks exactly the
    first k pixels of a stable descending sort, ties included (by hand: [1, 3, 3, 2, 3], k = 2
    → the first two 3s)."""
    from xplain_builtins.metrics.localisation_quantus import top_set

    a = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert top_set(a, [2]).tolist() == [[False, True, True, False, False]]
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 7, (3, 200), generator=g).float()  # many ties
    for k in (1, 13, 57, 200):
        order = torch.argsort(a, dim=1, descending=True, stable=True)[:, :k]
        want = torch.zeros_like(a, dtype=torch.bool).scatter_(1, order, True)
        assert torch.equal(top_set(a, [k] * 3), want)
