"""``sufficiency`` (Dasgupta et al. 2022, "Framework for evaluating faithfulness of local
explanations"; Quantus 0.6 ``Sufficiency``): the first dataset-scope metric.

An image's score is the share of the *other* images whose map lies within ``threshold`` of its
own map (distance matrix divided by its maximum) that the model gives the same class. It needs
the other images' maps, so the metric declares ``scope="dataset"``: ``xplain eval`` scores it
once per method after every batch, over the maps and predictions of all the images scored, in
the order of the image list, in groups of ``group`` images (:mod:`xplain.run.dataset_stage`).
Quantus scores within each batch of ``batch_size`` (default 64) images it iterates over;
``group=64`` (the default) is that, ``group=0`` the whole selection (the paper's expectation over
the data). Called on a batch (``metric.compute``) it scores within that batch the same way.
"""

import xplain

DISTANCES = ("seuclidean", "euclidean", "cosine")


def distance_matrix(a, kind: str):
    """N×N distances between the rows of ``a`` (N×P, float64), as SciPy's ``cdist``.

    ``seuclidean`` divides each feature's squared difference by its variance: SciPy's default
    ``V``, the sample variance of the stacked ``XA`` and ``XB`` (here the N rows twice, so
    2·SS / (2N - 1)). A feature with zero variance (the same value in every map: a
    border every map leaves at 0) is skipped — SciPy divides 0 by 0 there and every distance
    becomes NaN, so Quantus scores every image 0; the skipped feature adds nothing to any
    distance, which is the limit the definition has."""
    import torch

    if kind == "seuclidean":
        n = a.shape[0]
        var = 2.0 * ((a - a.mean(0)) ** 2).sum(0) / max(1, 2 * n - 1)
        keep = var > 0
        a = a[:, keep] / var[keep].sqrt()
    if kind == "cosine":
        n = a.norm(dim=1, keepdim=True)
        u = a / torch.where(n > 0, n, torch.ones_like(n))
        return (1.0 - u @ u.T).clamp_min(0.0).fill_diagonal_(0.0)
    sq = (a * a).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (a @ a.T)).clamp_min(0.0)
    return d2.sqrt().fill_diagonal_(0.0)


def group_scores(maps, preds, threshold: float, kind: str):
    """Quantus' Sufficiency on one group: (N,) scores from N×P maps and N predicted classes."""
    import torch

    n = maps.shape[0]
    d = distance_matrix(maps.double(), kind)
    top = d.abs().max() if n else d.new_zeros(())
    if bool(top > 0):  # Quantus' normalise_by_max over the whole matrix (all zero: left as is)
        d = d / top
    close = (d <= threshold).double()
    close = close * (1 - torch.eye(n, dtype=close.dtype, device=close.device))
    same = (preds[None, :] == preds[:, None]).double()
    count = close.sum(1)
    return ((same * close).sum(1) / torch.where(count > 0, count, torch.inf)).float()


def _sufficiency(context: xplain.MetricContext):
    import torch

    from .quantus_family import prepared

    p = context.params
    maps = prepared(context.attribution.maps, bool(p["normalise"]), bool(p["absolute"]))
    maps = maps.flatten(1)
    preds = context.predictions
    if preds is None:  # outside eval: the model's classes for x (Quantus' model.predict)
        preds = context.model.infer(context.x).argmax(1)
    preds = torch.as_tensor(preds).to(maps.device).long().reshape(-1)
    n, size = maps.shape[0], int(p["group"]) or max(1, maps.shape[0])
    parts = [
        group_scores(maps[i : i + size], preds[i : i + size], float(p["threshold"]), p["distance"])
        for i in range(0, n, size)
    ]
    scores = torch.cat(parts) if parts else maps.new_zeros(0)
    return {"sufficiency": scores.to(context.attribution.maps.device)}


@xplain.hookimpl
def register_metrics(register):
    register(
        xplain.Metric(
            name="sufficiency",
            summary="share of the images with a close map that get the same class (Dasgupta et al. 2022; Quantus Sufficiency; scored across the images)",
            description="Dasgupta et al. 2022, as Quantus 0.6's Sufficiency. For each image: the "
            "other images whose map is within `threshold` of its map (distance matrix divided by "
            "its largest entry; seuclidean = SciPy's standardised Euclidean distance, each pixel "
            "divided by its variance over the group) and, among them, the share with the same "
            "predicted class; 0 when no other map is close (Quantus). Dataset scope: the score "
            "depends on the other images. xplain eval scores it after the batches over every "
            "image scored, in the image list's order, in groups of `group` images (Quantus scores "
            "within each batch of its batch_size, default 64; group=0: all images together), so "
            "it does not depend on the batch size, on resuming or on shards (eval summarize "
            "scores the merged shards). metric.compute on a batch scores within that batch. "
            "Defaults are Quantus': threshold 0.6, seuclidean, |maps|. Quantus' normalise "
            "divides the whole batch by one number, which no distance here sees once the matrix "
            "is divided by its maximum; normalise=true divides each map by its own max |value| "
            "instead. Where Quantus differs: a pixel with the same value in every map of the "
            "group (SciPy: variance 0, every distance NaN, every Quantus score 0) is skipped. "
            "LATEC (threshold 0.9) calls Quantus on chunks of 2 images, where the one off-"
            "diagonal distance is the maximum (1 > 0.9) and every score is 0.",
            score=_sufficiency,
            scope="dataset",
            params=[
                xplain.Param(
                    "threshold",
                    "float",
                    0.6,
                    "distance (÷ the largest) that counts as close",
                    min=0.0,
                ),
                xplain.Param(
                    "distance", "str", "seuclidean", "distance between maps", choices=DISTANCES
                ),
                xplain.Param("absolute", "bool", True, "compare |maps| (Quantus' abs)"),
                xplain.Param(
                    "normalise", "bool", False, "divide each map by its max |value| first"
                ),
                xplain.Param(
                    "group",
                    "int",
                    64,
                    "images scored together, in the image list's order (Quantus' batch_size; 0 = all)",
                    min=0,
                ),
            ],
        )
    )
