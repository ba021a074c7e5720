"""Faithfulness metrics of issue 23 against Quantus 0.6 (same model, images, maps, draws) and
hand-computed cases.

Quantus perturbs single array elements; on the one-channel digits model an element is a pixel,
so the two definitions coincide and the scores agree to float precision. Stochastic metrics get
xplain's draws handed to Quantus by replacing the NumPy function Quantus draws with.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

import xplain  # noqa: E402

from .quantus_family_common import Q, as_np, digits_batch, gradient, score, untie  # noqa: E402
from .shapes_batch import shapes_eval_batch  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    model, x, t = digits_batch()
    return model, x, t, untie(gradient(model.graph, x, t))


@pytest.fixture(scope="module")
def shapes():
    model, x, t, ctx, roi = shapes_eval_batch(4)
    return model, x, t, untie(gradient(model.graph, x, t))


def _q(cls, model, x, t, a, **kwargs):
    X, Y = as_np(x, t)
    return getattr(quantus, cls)(**kwargs, **Q)(
        model=model.graph, x_batch=X, y_batch=Y, a_batch=a[:, None].numpy(), device="cpu"
    )


def test_faithfulness_correlation_equals_quantus_with_the_same_subsets(digits, monkeypatch):
    from xplain_builtins.metrics.faithfulness_quantus import draw_subsets

    model, x, t, a = digits
    runs, size = 20, 50
    subsets = draw_subsets(x, 28 * 28, runs, size, 0).numpy()
    order = iter([subsets[b, r] for r in range(runs) for b in range(len(x))])
    monkeypatch.setattr(np.random, "choice", lambda *args, **kw: next(order))
    q = _q(
        "FaithfulnessCorrelation",
        model,
        x,
        t,
        a,
        nr_runs=runs,
        subset_size=size,
        return_aggregate=False,
    )
    monkeypatch.undo()
    ours = score(
        "faithfulness-correlation", model, x, t, a, params={"nr_runs": runs, "subset_size": size}
    )
    np.testing.assert_allclose(ours["faithfulness-correlation"], q, rtol=1e-5)
    assert np.ptp(q) > 0.05


def test_faithfulness_estimate_equals_quantus(digits):
    model, x, t, a = digits
    q = _q("FaithfulnessEstimate", model, x, t, a, features_in_step=28)
    ours = score("faithfulness-estimate", model, x, t, a, params={"features_in_step": 28})
    np.testing.assert_allclose(ours["faithfulness-estimate"], q, rtol=1e-5)


def test_monotonicity_correlation_equals_quantus_with_the_same_draws(digits, monkeypatch):
    model, x, t, a = digits
    step, samples = 56, 4
    draws = 784 // step * samples
    u = torch.stack([torch.rand(draws, generator=g) for g in xplain.sample_generators(x, 0)])
    calls = iter(range(draws))

    def uniform(low=0.0, high=1.0, size=None):  # Quantus draws one value per image and call
        assert size == len(x)
        return u[:, next(calls)].double().numpy()

    monkeypatch.setattr(np.random, "uniform", uniform)
    q = _q("MonotonicityCorrelation", model, x, t, a, features_in_step=step, nr_samples=samples)
    monkeypatch.undo()
    ours = score(
        "monotonicity-correlation",
        model,
        x,
        t,
        a,
        params={"features_in_step": step, "nr_samples": samples},
    )
    np.testing.assert_allclose(ours["monotonicity-correlation"], q, rtol=1e-5)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_equals_quantus_on_rgb_and_padded_grids(shapes, digits, order):
    """Quantus' patches cover all channels, so it agrees on RGB too; 28 px with 6-px patches
    checks the centred padding of the grid."""
    for (model, x, t, a), patch, regions in ((shapes, 8, 40), (digits, 6, 25)):
        q = np.array(
            _q(
                "RegionPerturbation",
                model,
                x,
                t,
                a,
                patch_size=patch,
                order=order,
                regions_evaluation=regions,
            )
        )
        ours = score(
            "region-perturbation",
            model,
            x,
            t,
            a,
            params={"patch_size": patch, "order": order, "regions_evaluation": regions},
        )
        np.testing.assert_allclose(ours["region-perturbation-curve"], q, atol=1e-5)
        np.testing.assert_allclose(
            ours["region-perturbation"], np.trapezoid(q, dx=1, axis=1), atol=1e-4
        )


def test_selectivity_equals_quantus(shapes):
    model, x, t, a = shapes
    q = np.array(_q("Selectivity", model, x, t, a, patch_size=16))
    ours = score("selectivity", model, x, t, a, params={"patch_size": 16})
    assert q.shape == (4, 16)
    np.testing.assert_allclose(ours["selectivity-curve"], q, atol=1e-5)
    np.testing.assert_allclose(ours["selectivity"], np.trapezoid(q, dx=1, axis=1), atol=1e-4)


def test_infidelity_equals_quantus_for_one_patch_and_follows_the_paper_for_several(digits):
    """One 28-px patch: Quantus' cumulative removal and the paper's single-patch removal are the
    same perturbation. With 14-px patches Quantus removes 1, 2, 3, 4 patches cumulatively;
    xplain removes each patch alone (the paper's square removal), checked by a naive loop."""
    model, x, t, a = digits
    q = _q("Infidelity", model, x, t, a, perturb_patch_sizes=[28], n_perturb_samples=1)
    ours = score("infidelity", model, x, t, a, params={"perturb_patch_sizes": "28"})
    np.testing.assert_allclose(ours["infidelity"], q, rtol=1e-5)
    ours14 = score("infidelity", model, x, t, a, params={"perturb_patch_sizes": "14"})["infidelity"]
    low = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
    y = model.graph(x).gather(1, t[:, None])[:, 0].detach()
    errs = []
    for i in range(2):
        for j in range(2):
            xp = x.clone()
            xp[:, :, 14 * i : 14 * i + 14, 14 * j : 14 * j + 14] = low.expand(-1, 1, 14, 14)
            yp = model.graph(xp).gather(1, t[:, None])[:, 0].detach()
            errs.append(((a[:, None] * (x - xp)).flatten(1).sum(1) - (y - yp)) ** 2)
    np.testing.assert_allclose(ours14, torch.stack(errs, 1).mean(1).numpy(), rtol=1e-4)
    q14 = _q("Infidelity", model, x, t, a, perturb_patch_sizes=[14], n_perturb_samples=1)
    assert np.abs(np.array(q14) - ours14).max() > 1e-3  # the documented difference


def test_irof_equals_quantus_on_one_channel_and_quantus_fails_on_rgb(digits, shapes, monkeypatch):
    pytest.importorskip("skimage")
    # Quantus 0.6's AUC calls np.trapz, which NumPy 2.4 removed; lend it np.trapezoid
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    model, x, t, a = digits
    for i in range(2):  # batches of one: Quantus' baseline is a statistic of the whole batch
        sl = slice(i, i + 1)
        q = _q("IROF", model, x[sl], t[sl], a[sl], perturb_baseline="black", return_aggregate=False)
        ours = score("irof", model, x[sl], t[sl], a[sl], params={"baseline": "black"})
        np.testing.assert_allclose(ours["irof"], q, rtol=1e-5)
    model, x, t, a = shapes
    with pytest.raises(AssertionError, match="mask shape"):
        _q("IROF", model, x, t, a)
    ours = score("irof", model, x, t, a)
    assert np.isfinite(ours["irof"]).all() and (ours["irof-segments"] > 10).all()


# ----------------------------------------------------------------------------- hand cases
class Linear:
    """logit0 = <w, x> summed over channels, logit1 = 0."""

    num_classes = 2
    device = torch.device("cpu")

    def __init__(self, w):
        self.w = w

    def __call__(self, x):
        z = (x * self.w).flatten(1).sum(1)
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_hand_cases_on_a_linear_model():
    """With a zero baseline (images >= 0 whose minimum is 0), a linear logit and the exact
    attribution a = w·x: every removal's logit drop equals the map's sum over it, so the
    correlations are 1 and infidelity (a · (x - x') vs the drop, a = w) is 0."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 1, 8, 8, generator=g)
    x = torch.rand(3, 1, 8, 8, generator=g)
    x[:, :, 0, 0] = 0  # black = 0
    t = torch.zeros(3, dtype=torch.long)
    model = Linear(w)
    exact = (w * x)[:, 0]
    fc = score(
        "faithfulness-correlation", model, x, t, exact, params={"nr_runs": 10, "subset_size": 5}
    )
    np.testing.assert_allclose(fc["faithfulness-correlation"], 1.0, atol=1e-5)
    fe = score("faithfulness-estimate", model, x, t, exact, params={"features_in_step": 4})
    np.testing.assert_allclose(fe["faithfulness-estimate"], 1.0, atol=1e-5)
    inf = score(
        "infidelity", model, x, t, w[:, 0].expand(3, 8, 8), params={"perturb_patch_sizes": "2,4"}
    )
    np.testing.assert_allclose(inf["infidelity"], 0.0, atol=1e-8)
    # region perturbation with one-pixel patches: drop after k = sum of the k largest w·x
    rp = score(
        "region-perturbation",
        model,
        x,
        t,
        exact,
        params={"patch_size": 1, "regions_evaluation": 5, "softmax": False},
    )
    top = torch.sort(exact.flatten(1), dim=1, descending=True).values[:, :5].cumsum(1)
    np.testing.assert_allclose(rp["region-perturbation-curve"], top.numpy(), rtol=1e-5)


def test_region_perturbation_uniform_baseline_equals_quantus_with_the_same_draws(
    shapes, monkeypatch
):
    """LATEC's setting: a U(0, 1) value per image and removed patch (Quantus draws one per
    removal call)."""
    from xplain_builtins.metrics.quantus_family import baseline_values

    model, x, t, a = shapes
    gens = xplain.sample_generators(x, 0)
    draws = baseline_values(x, "uniform", gens, 64).double().numpy()  # B×patches
    calls = iter(range(64))
    monkeypatch.setattr(np.random, "uniform", lambda *args, **kw: draws[:, next(calls)])
    q = np.array(
        _q(
            "RegionPerturbation",
            model,
            x,
            t,
            a,
            patch_size=8,
            regions_evaluation=12,
            perturb_baseline="uniform",
        )
    )
    monkeypatch.undo()
    ours = score(
        "region-perturbation",
        model,
        x,
        t,
        a,
        params={"patch_size": 8, "regions_evaluation": 12, "baseline": "uniform"},
    )
    np.testing.assert_allclose(ours["region-perturbation-curve"], q, atol=1e-5)


def test_infidelity_noise_equals_captum_with_the_same_noise(digits):
    """perturbation=noise is Captum's infidelity with x' = x - N(0, σ²) (as LATEC runs it)."""
    from captum.metrics import infidelity

    from xplain_builtins.metrics.robustness import draw_noise

    model, x, t, a = digits
    k = 4
    noise = draw_noise(x, 0, k, "normal", 0.0, 0.005)  # K×B×C×H×W
    calls = iter(range(k))

    def perturb(inputs):
        i = noise[next(calls)]
        return i, inputs - i

    want = infidelity(
        model.graph,
        perturb,
        x,
        a[:, None].expand_as(x),
        target=t,
        n_perturb_samples=k,
        max_examples_per_batch=len(x),
    )
    ours = score(
        "infidelity",
        model,
        x,
        t,
        a,
        params={"perturbation": "noise", "noise_std": 0.005, "n_perturb_samples": k},
    )
    np.testing.assert_allclose(ours["infidelity"], want.detach().numpy(), rtol=1e-4)
