"""Quantus 0.6's localisation family: ``pointing-game``, ``relevance-mass-accuracy``,
``relevance-rank-accuracy``, ``top-k-intersection`` and ``attribution-localisation``.

The region is the union of the target class's boxes rasterised as in :mod:`.localisation`
(a pixel counts when its centre is inside); Quantus takes the same region as a binary mask.
A sample without a box scores NaN (Quantus: NaN for an empty mask). Rankings select the top
pixels as a stable sort would (ties keep pixel order; :func:`top_set` finds them by selection,
without sorting; Quantus' ``np.argsort`` quicksort orders ties arbitrarily,
so the two agree on maps without ties). Every metric is computed for the whole batch at once.
"""

import xplain

from .localisation import box_masks
from .quantus_family import nan_where, prepared


def _inputs(context, absolute_default=False):
    x, targets, attribution = context.x, context.targets, context.attribution
    b, h, w = attribution.maps.shape
    roi, valid = box_masks(context.boxes, context.box_labels, targets, h, w, x.device)
    a = prepared(attribution.maps.to(x.device), True, bool(context.params["absolute"]))
    return a.reshape(b, -1), roi.reshape(b, -1), valid


def _pointing_game(context: xplain.MetricContext):
    import torch

    a, roi, valid = _inputs(context)
    top = a == a.max(1, keepdim=True).values  # every pixel at the maximum may be the hit
    hit = (roi & top).any(1).float()
    if context.params["weighted"]:  # the hit is worth more for a small region (see the help)
        hit = hit * (1 - roi.sum(1).float() / roi.shape[1])
    return {"pointing-game": nan_where(hit, valid & torch.isfinite(hit))}


def _relevance_mass_accuracy(context: xplain.MetricContext):
    a, roi, valid = _inputs(context)
    total = a.double().sum(1)
    inside = (a.double() * roi).sum(1)
    return {"relevance-mass-accuracy": nan_where((inside / total).float(), valid & (total != 0))}


def top_set(a, k):
    """B×P mask of each row's ``k[i]`` highest values, ties broken by pixel order (the first
    ``k`` of a stable descending sort) — found by selection (``kthvalue``, O(P)) instead of a
    full sort: the k-th largest value ``v``, every pixel above it and the first pixels equal
    to it that complete ``k``."""
    import torch

    b, p = a.shape
    out = torch.zeros_like(a, dtype=torch.bool)
    for i in range(b):
        ki = min(int(k[i]), p)
        if ki <= 0:
            continue
        v = torch.kthvalue(a[i], p - ki + 1).values
        above, tie = a[i] > v, a[i] == v
        need = ki - int(above.sum())
        out[i] = above | (tie & (tie.cumsum(0) <= need))
    return out


def _relevance_rank_accuracy(context: xplain.MetricContext):
    a, roi, valid = _inputs(context)
    n = roi.sum(1)
    hits = (top_set(a, n) & roi).sum(1)
    return {"relevance-rank-accuracy": nan_where(hits.float() / n.clamp_min(1).float(), valid)}


def _top_k_intersection(context: xplain.MetricContext):
    a, roi, valid = _inputs(context)
    k = min(int(context.params["k"]), a.shape[1])
    tki = (top_set(a, [k] * a.shape[0]) & roi).sum(1).float() / k
    if context.params["concept_influence"]:
        tki = tki * a.shape[1] / roi.sum(1).clamp_min(1).float()
    return {"top-k-intersection": nan_where(tki, valid)}


def _attribution_localisation(context: xplain.MetricContext):
    import torch

    params = context.params
    a, roi, valid = _inputs(context)
    if params["positive_attributions"]:
        a = a.clamp_min(0)
    a = a.double()
    inside = (a * roi).sum(1)
    mu = inside / (a.sum(1) + 1e-9)
    area = roi.sum(1).double()
    if params["weighted"]:  # Kohlbrenner et al.: mu_w = mu * S_total / S_box
        mu = mu * roi.shape[1] / area.clamp_min(1)
    ok = valid & (mu <= 1 if not params["weighted"] else torch.ones_like(valid))
    return {"attribution-localisation": nan_where(mu.float(), ok)}


_ABS = xplain.Param("absolute", "bool", False, "take |map| first (Quantus' abs)")
_REGION = (
    " Region: the union of the target class's boxes in model-input pixels (a pixel counts when "
    "its centre is inside); NaN without a box. The map is divided by its maximum |value| per "
    "image first, as Quantus' normalise (which no localisation score depends on)."
)


@xplain.hookimpl
def register_metrics(register):
    register(
        xplain.Metric(
            name="pointing-game",
            summary="is the map's maximum inside the box? (Zhang et al. 2018; Quantus PointingGame)",
            description="Zhang et al. 2018, as Quantus 0.6's PointingGame: 1 when a pixel holding the "
            "map's maximum lies in the region, else 0; mean over images = the hit rate. No "
            "tolerance margin (the paper allows 15 px; Quantus none). weighted=true multiplies "
            "a hit by 1 - |region| / |image| (Quantus documents this weighting, but its "
            "implementation writes the weight into a boolean array, so every hit stays 1; "
            "xplain applies the weight)." + _REGION,
            score=_pointing_game,
            higher_is_better=True,
            needs=("boxes",),
            params=[
                xplain.Param("weighted", "bool", False, "weight a hit by 1 - region/image"),
                _ABS,
            ],
        )
    )
    register(
        xplain.Metric(
            name="relevance-mass-accuracy",
            summary="share of the map's sum inside the box (Arras et al. 2022; Quantus RelevanceMassAccuracy)",
            description="Arras et al. 2022, as Quantus 0.6's RelevanceMassAccuracy: sum(a in region) / "
            "sum(a) over the signed map (absolute=false, Quantus' default). On a signed map the "
            "ratio is not bounded by [0, 1]; ebpg is the bounded variant on the positive part. "
            "NaN when the map sums to 0." + _REGION,
            score=_relevance_mass_accuracy,
            higher_is_better=True,
            needs=("boxes",),
            params=[_ABS],
        )
    )
    register(
        xplain.Metric(
            name="relevance-rank-accuracy",
            summary="share of the top-K pixels inside the box, K = box area (Arras et al. 2022; Quantus RelevanceRankAccuracy)",
            description="Arras et al. 2022, as Quantus 0.6's RelevanceRankAccuracy: with K the number "
            "of region pixels, the K highest-ranked pixels are taken and the fraction inside the "
            "region is the score (= bbox-accuracy)." + _REGION,
            score=_relevance_rank_accuracy,
            higher_is_better=True,
            needs=("boxes",),
            params=[_ABS],
        )
    )
    register(
        xplain.Metric(
            name="top-k-intersection",
            summary="share of the k top pixels inside the box (Theiner et al. 2021; Quantus TopKIntersection)",
            description="Theiner et al. 2021, as Quantus 0.6's TopKIntersection: the fraction of the k "
            "(default 1000, Quantus') highest-ranked pixels inside the region; "
            "concept_influence=true multiplies by |image| / |region|. k is capped at the "
            "number of pixels (Quantus refuses a k larger than the input)." + _REGION,
            score=_top_k_intersection,
            higher_is_better=True,
            needs=("boxes",),
            params=[
                xplain.Param("k", "int", 1000, "top pixels taken", min=1, max=10**8),
                xplain.Param(
                    "concept_influence", "bool", False, "scale by image area / region area"
                ),
                _ABS,
            ],
        )
    )
    register(
        xplain.Metric(
            name="attribution-localisation",
            summary="inside-total relevance ratio (Kohlbrenner et al. 2020; Quantus AttributionLocalisation)",
            description="Kohlbrenner et al. 2020, as Quantus 0.6's AttributionLocalisation: mu = "
            "sum(a in region) / (sum(a) + 1e-9) with a = |map| (absolute=true, Quantus' default) "
            "or the map's positive part (positive_attributions=true); a ratio above 1 (possible "
            "for signed maps) is NaN, as Quantus. weighted=true gives the paper's mu_w = mu * "
            "|image| / |region| (Quantus 0.6 multiplies by |region| / x_batch[2:].size instead: "
            "the inverse ratio, over the pixels of all but the first two images of the batch, "
            "so its weighted score depends on the batch; xplain follows the paper)." + _REGION,
            score=_attribution_localisation,
            higher_is_better=True,
            needs=("boxes",),
            params=[
                xplain.Param("weighted", "bool", False, "mu * image area / region area (paper)"),
                xplain.Param(
                    "positive_attributions", "bool", False, "clip the map at 0 before the ratio"
                ),
                xplain.Param("absolute", "bool", True, "take |map| first (Quantus' abs)"),
            ],
        )
    )
