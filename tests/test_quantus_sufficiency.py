"""sufficiency (issue 23, a dataset-scope metric) against Quantus 0.6, and a hand case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

from .quantus_family_common import Q, as_np, digits_batch, score  # noqa: E402


def _maps(n, seed=0, size=28):
    """Maps with no pixel equal across the batch (Quantus' seuclidean would give NaN)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(2, size, size, generator=g)
    mix = torch.rand(n, 2, generator=g)
    return torch.einsum("nk,khw->nhw", mix, base) + 0.05 * torch.randn(n, size, size, generator=g)


@pytest.mark.parametrize("threshold", [0.6, 0.9])
def test_sufficiency_equals_quantus(threshold):
    """Quantus passes V=None to SciPy's cdist, so only seuclidean runs there."""
    model, x, t = digits_batch()
    x, t = x.repeat(2, 1, 1, 1)[:7], t.repeat(2)[:7]  # 7 images: some share a class
    x = x + 0.3 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    maps = _maps(7)
    ours = score("sufficiency", model, x, t, maps, params={"threshold": threshold})["sufficiency"]
    X, Y = as_np(x, t)
    q = quantus.Sufficiency(threshold=threshold, **Q)(
        model=model.graph, x_batch=X, y_batch=Y, a_batch=maps[:, None].numpy(), device="cpu"
    )
    np.testing.assert_allclose(ours, q, rtol=1e-5, atol=1e-7)
    assert 0 < ours.mean() < 1  # not a degenerate case


def test_sufficiency_groups_are_quantus_batches():
    """group=3 on 7 images = Quantus with batch_size=3 (its batches of 3, 3, 1)."""
    model, x, t = digits_batch()
    x, t = x.repeat(2, 1, 1, 1)[:7], t.repeat(2)[:7]
    maps = _maps(7, seed=3)
    ours = score("sufficiency", model, x, t, maps, params={"group": 3, "threshold": 0.8})
    X, Y = as_np(x, t)
    q = quantus.Sufficiency(threshold=0.8, **Q)(
        model=model.graph,
        x_batch=X,
        y_batch=Y,
        a_batch=maps[:, None].numpy(),
        device="cpu",
        batch_size=3,
    )
    np.testing.assert_allclose(ours["sufficiency"], q, rtol=1e-5, atol=1e-7)


def test_sufficiency_hand_case_and_constant_pixels():
    """Four 1×2 maps, two classes: by hand. Euclidean distances from map 0 = (0, 0): map 1
    (0, 1) at 1, map 2 (3, 0) at 3, map 3 (3, 1) at √10 (the largest: ÷ √10). threshold 0.5:
    close pairs are (0, 1) at 0.32 and (2, 3) at 0.32; classes 0, 0, 1, 0 → scores 1, 1, 0, 0.
    seuclidean divides by the variances 3 and 1/3: the maps become the corners of a square of
    side √3, the diagonals the largest; threshold 0.75 keeps the sides (0.71): each map has two
    close neighbours → 1/2, 1, 0, 1/2. A pixel equal in every map is skipped under seuclidean
    (SciPy: NaN, every Quantus score 0)."""
    from xplain_builtins.metrics.sufficiency import group_scores

    maps = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0]])
    preds = torch.tensor([0, 0, 1, 0])
    got = group_scores(maps, preds, 0.5, "euclidean")
    assert got.tolist() == [1.0, 1.0, 0.0, 0.0]
    with_constant = torch.cat([maps, torch.full((4, 1), 2.0)], 1)
    plain = group_scores(maps, preds, 0.75, "seuclidean")
    assert plain.tolist() == [0.5, 1.0, 0.0, 0.5]
    assert torch.equal(group_scores(with_constant, preds, 0.75, "seuclidean"), plain)
    from scipy.spatial.distance import cdist

    assert np.isnan(cdist(with_constant.numpy(), with_constant.numpy(), "seuclidean")).all()


@pytest.mark.parametrize("distance", ["seuclidean", "euclidean", "cosine"])
def test_distance_matrix_is_scipy_cdist(distance):
    from scipy.spatial.distance import cdist

    from xplain_builtins.metrics.sufficiency import distance_matrix

    a = _maps(6, seed=5).flatten(1).double()
    np.testing.assert_allclose(
        distance_matrix(a, distance).numpy(), cdist(a.numpy(), a.numpy(), distance), atol=1e-9
    )
