"""Localisation metrics: how much of a map falls on the annotated object.

``ebpg`` (energy-based pointing game, TR-GBP Table 1), ``bbox-accuracy`` (MIP-IN Table 2),
``ehr`` (effective heat ratio, InputIBA Table 2) and ``ibd`` (intensity of boundary dependency,
TR-GBP eq. 12). Boxes arrive in ``context.boxes`` already mapped through the preprocessing
into model-input pixels (continuous ``x0, y0, x1, y1``); a pixel belongs to a box when its centre
does. Only the boxes of the evaluated target class count (when the annotation names classes);
a sample without boxes, or without a box of its class, scores NaN ("not applicable").
"""

import xplain


def box_masks(boxes, box_labels, targets, h, w, device):
    """B×H×W bool: union of each sample's target-class boxes; ``valid`` B bool (has a box)."""
    import torch

    boxes = boxes or [None] * len(targets)
    labels = box_labels or [None] * len(targets)
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, :] + 0.5
    masks = torch.zeros(len(targets), h, w, dtype=torch.bool, device=device)
    valid = torch.zeros(len(targets), dtype=torch.bool, device=device)
    for i, bx in enumerate(boxes):
        if bx is None or len(bx) == 0:
            continue
        bx = torch.as_tensor(bx, dtype=torch.float32, device=device).reshape(-1, 4)
        lab = labels[i]
        if lab is not None:
            lab = torch.as_tensor(lab, device=device).reshape(-1)
            if bool((lab >= 0).any()):  # the annotation names classes: keep the target's boxes
                bx = bx[lab == int(targets[i])]
        for x0, y0, x1, y1 in bx.tolist():
            masks[i] |= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        valid[i] = bool(masks[i].any())
    return masks, valid


def _energy(maps, mode):
    return maps.abs() if mode == "abs" else maps.clamp_min(0)


def _nan_where(values, ok):
    import torch

    return torch.where(ok, values, torch.full_like(values, float("nan")))


def _ebpg(context: xplain.MetricContext):
    x, targets, attribution = context.x, context.targets, context.attribution
    b, h, w = attribution.maps.shape
    m = attribution.maps.to(x.device).float()
    roi, valid = box_masks(context.boxes, context.box_labels, targets, h, w, x.device)
    e = _energy(m, context.params["energy"]).reshape(b, -1)
    total = e.sum(1)
    inside = (e * roi.reshape(b, -1)).sum(1)
    return {"ebpg": _nan_where(inside / total.clamp_min(1e-30), valid & (total > 0))}


def _bbox_accuracy(context: xplain.MetricContext):
    x, targets, attribution = context.x, context.targets, context.attribution
    import torch

    b, h, w = attribution.maps.shape
    m = attribution.maps.to(x.device).float().reshape(b, -1)
    if context.params["absolute"]:
        m = m.abs()
    roi, valid = box_masks(context.boxes, context.box_labels, targets, h, w, x.device)
    roi = roi.reshape(b, -1)
    n = roi.sum(1)
    order = torch.argsort(m, dim=1, descending=True, stable=True)
    hits = roi.gather(1, order).cumsum(1)  # hits[:, k-1] = top-k pixels inside the box
    m_in = hits.gather(1, (n - 1).clamp_min(0)[:, None])[:, 0]
    return {"bbox-accuracy": _nan_where(m_in.float() / n.clamp_min(1).float(), valid)}


def ehr_scale(heat, mode, unit=False):
    """The heat EHR thresholds. ``auto``: a map the method declares to be in [0, 1] already
    (``info["map_range"] == "unit"``: a mask, as InputIBA's Λ, which InputIBA's EHR reads as it
    is) stays as it is; any other map, whose scale is arbitrary, is divided by its maximum.
    ``max`` always divides by the maximum (the former default). Negative values are clamped to 0
    first in both modes."""
    heat = heat.clamp_min(0)
    top = heat.max()
    if top <= 0 or (mode == "auto" and unit and top <= 1):
        return heat
    return heat / top


def ehr_score(heat, roi, qs, base_threshold, weight):
    """EHR of one non-negative map ``heat`` (H×W, already scaled) and box mask ``roi``.

    Pixels below ``base_threshold`` are zeroed and excluded; for each quantile q of the
    remaining heat, t = min(quantile(q), 0.99·max) and the ratio is
    sum(heat ≥ t inside the box) / |heat ≥ t| (``weight``, the paper's sentence: the *sum of
    attribution* over the *number of pixels*) or |heat ≥ t inside| / |heat ≥ t| (pixel counts);
    EHR is the trapezoid of the ratios over q. NaN when no pixel reaches the base threshold."""
    import torch

    keep = heat >= base_threshold
    if not bool(keep.any()):
        return torch.tensor(float("nan"), device=heat.device)
    poi = heat[keep]
    heat = torch.where(keep, heat, torch.zeros_like(heat))
    ts = torch.minimum(torch.quantile(poi, qs), 0.99 * heat.max())
    ratios = []
    for t in ts:
        binary = heat >= t
        inside = binary & roi
        num = heat[inside].sum() if weight else inside.sum().to(heat.dtype)
        ratios.append(num / (binary.sum().to(heat.dtype) + 1e-8))
    return torch.trapezoid(torch.stack(ratios), qs)


def _ehr(context: xplain.MetricContext):
    x, targets, attribution = context.x, context.targets, context.attribution
    import torch

    params = context.params
    b, h, w = attribution.maps.shape
    roi, valid = box_masks(context.boxes, context.box_labels, targets, h, w, x.device)
    qs = torch.linspace(0, 1, int(params["quantiles"]), device=x.device)
    out = torch.full((b,), float("nan"), device=x.device)
    unit = (attribution.info or {}).get("map_range") == "unit"
    for i in range(b):
        heat = ehr_scale(attribution.maps[i].to(x.device).float(), params["scale"], unit)
        if not bool(valid[i]) or heat.max() <= 0:
            continue
        out[i] = ehr_score(
            heat, roi[i], qs, float(params["base_threshold"]), bool(params["weight"])
        )
    return {"ehr": out}


def _ibd(context: xplain.MetricContext):
    x, attribution = context.x, context.attribution
    import torch

    params = context.params
    b, h, w = attribution.maps.shape
    border = float(params["border"])
    bh = max(1, round(border * h / params["reference_size"]))
    bw = max(1, round(border * w / params["reference_size"]))
    mask = torch.ones(h, w, dtype=torch.bool, device=x.device)
    mask[bh : h - bh, bw : w - bw] = False
    e = _energy(attribution.maps.to(x.device).float(), params["energy"]).reshape(b, -1)
    total = e.sum(1)
    inside = (e * mask.reshape(-1)).sum(1)
    return {"ibd": _nan_where(inside / total.clamp_min(1e-30), total > 0)}


_BOXES = (
    "Boxes: VOC boxes mapped through the resize and crop into model-input pixels; a pixel "
    "counts when its centre is inside; the union of the boxes of the target class is used "
    "(all boxes when the annotation names no known class). NaN without a box."
)
_ENERGY = xplain.Param(
    "energy", "str", "positive", "how signed maps become energy", choices=("positive", "abs")
)


@xplain.hookimpl
def register_metrics(register):
    register(
        xplain.Metric(
            name="ebpg",
            summary="energy-based pointing game: share of the map's energy inside the box (TR-GBP Table 1)",
            description="Wang et al. 2020 (Score-CAM), as TR-GBP's Table 1: sum(E in box) / sum(E), with E "
            "the positive part of the map (energy=positive, default; Score-CAM maps are "
            "non-negative) or |map| (energy=abs). Boxes are indexed rows = y, columns = x (the "
            "official Score-CAM file transposes them). Deviations: the reference filters "
            "images with one box covering < 50% of the image; eval scores every image and "
            "uses the union of the target's boxes. NaN when the map has no energy. " + _BOXES,
            score=_ebpg,
            params=[_ENERGY],
            higher_is_better=True,
            needs=("boxes",),
        )
    )
    register(
        xplain.Metric(
            name="bbox-accuracy",
            summary="bounding-box accuracy: share of the top-n pixels inside the box, n = box area (MIP-IN)",
            description="MIP-IN section 6.3 / Table 2 (after Schulz et al.): with n the number of box "
            "pixels, the n highest-ranked pixels of the signed map (ties keep pixel order; "
            "absolute=true ranks |map|) are taken and the fraction m/n inside the box is the "
            "score. Deviation: the paper keeps only boxes covering < 33% of the image; eval "
            "scores every image. " + _BOXES,
            score=_bbox_accuracy,
            higher_is_better=True,
            needs=("boxes",),
            params=[xplain.Param("absolute", "bool", False, "rank by |map|")],
        )
    )
    register(
        xplain.Metric(
            name="ehr",
            summary="effective heat ratio: AUC over quantile thresholds of the heat inside the box (InputIBA)",
            description='InputIBA section 4.5 / Table 2: "at each quantile threshold, we compute the sum of '
            "attribution within the bounding box divided by the total number of pixels above this "
            'threshold", then the AUC over the quantiles. Heat = positive part of the map; a map '
            "its method declares to be in [0, 1] (Attribution.info map_range=unit: a mask, e.g. "
            "InputIBA's) is used as it is, any other map (arbitrary scale) is divided by its "
            "maximum (scale=auto; scale=max always divides, as the former default). Pixels "
            "below base_threshold (0.1) are zeroed and excluded (effective_heat_ratios.py); for "
            "quantiles q = linspace(0, 1, 11) of the remaining heat, t = min(quantile(q), 0.99 max), "
            "ratio = sum(heat >= t inside the box) / |heat >= t| (weight=true, default, the paper's "
            "definition and the reference function's default) or |heat >= t inside| / |heat >= t| "
            "(weight=false: pixel counts, the reference CLI's default and xplain's former one; it "
            "ranks coarse maps higher); EHR = trapezoid over q. The former default is weight=false "
            "scale=max. Deviations: the reference's driver skips images whose boxes cover > 33% of "
            "the image or whose target probability is < 0.6; eval scores every image. NaN for a map "
            "with no heat above the base threshold. " + _BOXES,
            score=_ehr,
            higher_is_better=True,
            needs=("boxes",),
            params=[
                xplain.Param(
                    "base_threshold", "float", 0.1, "heat below this is ignored", min=0.0, max=1.0
                ),
                xplain.Param(
                    "quantiles",
                    "int",
                    11,
                    "number of quantile thresholds in [0, 1]",
                    min=2,
                    max=1000,
                ),
                xplain.Param(
                    "weight",
                    "bool",
                    True,
                    "ratio = heat inside / pixels above t (the paper); false: "
                    "pixels inside / pixels above t",
                ),
                xplain.Param(
                    "scale",
                    "str",
                    "auto",
                    "auto: maps declared in [0, 1] (info map_range=unit) as "
                    "they are, others / max; max: always / max",
                    choices=("auto", "max"),
                ),
            ],
        )
    )
    register(
        xplain.Metric(
            name="ibd",
            summary="intensity of boundary dependency: share of the energy on the image border (TR-GBP eq. 12)",
            description="TR-GBP eq. 12: sum(E on the border) / sum(E), with E the positive part of the map "
            "(energy=abs for |map|). The border is `border` (16) pixels at `reference_size` "
            "(224), scaled to the model's input size and rounded (5 px at 64x64). Lower is "
            "better here: boundary attribution indicates dependence on the image edge, which "
            "TR-GBP links to prediction errors. Deviation: TR-GBP reports the ROC AUC of IBD "
            "as a predictor of wrong predictions over the worst half of ImageNet; eval reports "
            "the per-image IBD (no boxes needed).",
            score=_ibd,
            higher_is_better=False,
            params=[
                _ENERGY,
                xplain.Param(
                    "border", "float", 16.0, "border width at the reference size", min=0.0
                ),
                xplain.Param(
                    "reference_size", "float", 224.0, "image size the border refers to", min=1.0
                ),
            ],
        )
    )
