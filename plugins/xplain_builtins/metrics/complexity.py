"""Complexity metrics (Quantus 0.6's family): how concentrated is a map?

``sparseness`` (Chalasani et al. 2020, the Gini index of the map), ``complexity`` (Bhatt et al.
2020, the entropy of the map's fractional contributions) and ``effective-complexity``
(Nguyen & Martínez 2020, the number of pixels above a threshold). They read only the map: no
forward pass, deterministic, computed for the whole batch at once on the map's device.

Each preprocesses the map as Quantus does (``quantus_family.prepared``: divide by max |map|,
then |map|), per image instead of Quantus' per batch (the only difference; see that module).
"""

import xplain

from .quantus_family import prepared


def _flat(context):
    params = context.params
    maps = context.attribution.maps.to(context.x.device)
    a = prepared(maps, bool(params["normalise"]), bool(params["absolute"]))
    return a.flatten(1).double()


def _sparseness(context: xplain.MetricContext):
    import torch

    a = _flat(context) + 1e-7  # Quantus' offset: a zero map is perfectly un-sparse, not 0/0
    n = a.shape[1]
    a = torch.sort(a, dim=1).values
    k = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    gini = ((2 * k - n - 1) * a).sum(1) / (n * a.sum(1))
    return {"sparseness": gini.float()}


def _complexity(context: xplain.MetricContext):
    a = _flat(context)
    p = a / a.abs().sum(1, keepdim=True)
    return {"complexity": (-(p * (p + 1e-12).log()).sum(1)).float()}


def _effective_complexity(context: xplain.MetricContext):
    a = _flat(context)
    return {"effective-complexity": (a > float(context.params["eps"])).sum(1).float()}


def _common():
    return [
        xplain.Param("absolute", "bool", True, "take |map| (Quantus' abs, default true)"),
        xplain.Param(
            "normalise", "bool", True, "divide by max |map| per image first (Quantus' normalise)"
        ),
    ]


_PREP = (
    " The map is divided by its maximum |value| (normalise=true) and then made absolute "
    "(absolute=true), as Quantus' defaults; Quantus divides by the maximum over the whole batch, "
    "xplain per image, so an image's score never depends on its batch (identical on a batch of "
    "one). Maps only: no forward pass."
)


@xplain.hookimpl
def register_metrics(register):
    register(
        xplain.Metric(
            name="sparseness",
            summary="Gini index of the map (Chalasani et al. 2020; Quantus Sparseness): higher = sparser",
            description="Chalasani et al. 2020, as Quantus 0.6's Sparseness: with a' = a + 1e-7 "
            "sorted ascending over the N pixels, G = sum_k (2k - N - 1) a'_k / (N sum_k a'_k), in "
            "[0, 1]; 1 = all relevance on one pixel, 0 = a uniform map." + _PREP,
            score=_sparseness,
            higher_is_better=True,
            params=_common(),
        )
    )
    register(
        xplain.Metric(
            name="complexity",
            summary="entropy of the map's fractional contributions (Bhatt et al. 2020; Quantus Complexity): lower = simpler",
            description="Bhatt et al. 2020, as Quantus 0.6's Complexity: p_i = a_i / sum |a|, "
            "H = -sum p_i log(p_i + 1e-12) (natural log), between 0 (one pixel) and log N (a "
            "uniform map)." + _PREP,
            score=_complexity,
            higher_is_better=False,
            params=_common(),
        )
    )
    register(
        xplain.Metric(
            name="effective-complexity",
            summary="number of pixels whose |map| exceeds eps (Nguyen & Martinez 2020; Quantus EffectiveComplexity): lower = simpler",
            description="Nguyen & Martinez 2020, as Quantus 0.6's EffectiveComplexity: the count "
            "of pixels with a > eps (default 1e-5) after the preprocessing. The threshold is "
            "absolute, so the normalisation matters here: with Quantus' per-batch maximum an "
            "image's count changes with the other images of its batch; per image it does "
            "not." + _PREP,
            score=_effective_complexity,
            higher_is_better=False,
            params=[
                xplain.Param("eps", "float", 1e-5, "threshold on the normalised |map|", min=0.0),
                *_common(),
            ],
        )
    )
