"""ROAD (issue 23): the imputation against Quantus' noisy_linear_imputation (SciPy spsolve),
the metric against Quantus 0.6's ROAD with the same noise, and hand cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

from quantus.functions import perturb_func as qpf  # noqa: E402

from .quantus_family_common import Q, as_np, digits_batch, gradient, score, untie  # noqa: E402


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_imputation_equals_quantus_spsolve_on_rgb(solver):
    from xplain_builtins.metrics.road import impute

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 10, generator=g)
    removed = torch.rand(2, 12, 10, generator=g) < torch.tensor([0.3, 0.9]).view(2, 1, 1)
    ours = impute(x, removed, solver=solver)
    for i in range(2):
        idx = np.flatnonzero(removed[i].numpy().reshape(-1))
        q = qpf.noisy_linear_imputation(arr=x[i].double().numpy(), indices=idx, noise=0.0)
        np.testing.assert_allclose(ours[i].numpy(), q, atol=1e-6)
    assert torch.equal(ours[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])


def test_road_equals_quantus_with_the_same_noise(monkeypatch):
    from xplain_builtins.metrics.road import road_noise

    model, x, t = digits_batch()
    a = untie(gradient(model.graph, x, t))
    pct = [5, 20, 40, 60, 80, 95]
    draws = road_noise(x, 0, len(pct)).numpy()
    calls = iter(range(len(pct) * len(x)))
    real_randn = np.random.randn

    def perturb(arr, indices, noise=0.01, **kw):  # Quantus' imputation with xplain's draws
        k, s = divmod(next(calls), len(x))  # Quantus: for each percentage, for each image
        field = draws[k, s].reshape(arr.shape[0], -1)[:, indices]
        monkeypatch.setattr(np.random, "randn", lambda *shape: field)
        try:
            return qpf.noisy_linear_imputation(arr=arr, indices=indices, noise=noise)
        finally:
            monkeypatch.setattr(np.random, "randn", real_randn)

    X, Y = as_np(x, t)
    metric = quantus.ROAD(percentages=pct, perturb_func=perturb, **Q)
    metric(model=model.graph, x_batch=X, y_batch=Y, a_batch=a[:, None].numpy(), device="cpu")
    ours = score("road", model, x, t, a, params={"percentages": ",".join(map(str, pct))})
    per_pct = ours["road-curve"].mean(0)  # Quantus reports the accuracy per percentage
    np.testing.assert_allclose(per_pct, list(metric.evaluation_scores.values()), atol=1e-6)
    assert 0 < per_pct.min() < per_pct.max() <= 1  # the curve moves


def test_road_hand_cases():
    """A constant image: imputation reproduces it exactly (noise 0), so a model that reads the
    image keeps its prediction at every percentage; the curve is all ones."""
    from xplain_builtins.metrics.road import impute

    x = torch.full((1, 2, 6, 6), 0.7)
    removed = torch.zeros(1, 6, 6, dtype=torch.bool)
    removed[0, 1:5, 1:5] = True
    torch.testing.assert_close(impute(x, removed), x)
    # a linear ramp is harmonic for the stencil: its interior is reproduced from its border
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 6, 6).contiguous()
    torch.testing.assert_close(impute(ramp, removed), ramp)


@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.3, 0.9, 0.99, 1.0])
def test_direct_factorisation_equals_conjugate_gradients(fraction):
    """The CPU path (one sparse LU per image and mask, all channels) and the device path
    (batched CG to 1e-10) solve the same system: equal to float32 rounding, on scattered and on
    blob-shaped masks, and both the ``auto`` choice on the CPU; nothing removed / everything
    removed are the edge cases (identity / CG's zero answer)."""
    pytest.importorskip("scipy")
    from xplain_builtins.metrics.road import impute, impute_cg, impute_direct

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 20, 17, generator=g)
    scattered = torch.rand(20, 17, generator=g)
    blob = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 20, 17, generator=g), 7, 1, 3)[0, 0]
    removed = torch.stack(
        [
            v.flatten().argsort().argsort().view(20, 17) < int(fraction * 340)
            for v in (scattered, blob)
        ]
    )
    direct, cg = impute_direct(x, removed), impute_cg(x, removed)
    torch.testing.assert_close(direct, cg, atol=2e-6, rtol=0)
    assert torch.equal(impute(x, removed), direct)
    kept = ~removed[:, None].expand_as(x)
    assert torch.equal(direct[kept], x[kept])
