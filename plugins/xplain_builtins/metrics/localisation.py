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


def _ehr(context: xplain.MetricContext):
    x, targets, attribution = context.x, context.targets, context.attribution
    import torch

    params = context.params
    b, h, w = attribution.maps.shape
    roi, valid = box_masks(context.boxes, context.box_labels, targets, h, w, x.device)
    qs = torch.linspace(0, 1, int(params["quantiles"]), device=x.device)
    out = torch.full((b,), float("nan"), device=x.device)
    for i in range(b):
        heat = attribution.maps[i].to(x.device).float().clamp_min(0)
        top = heat.max()
        if not bool(valid[i]) or top <= 0:
            continue
        heat = heat / top  # InputIBA reads maps saved as images in [0, 1]
        poi = heat[heat >= params["base_threshold"]]
        heat = torch.where(heat >= params["base_threshold"], heat, torch.zeros_like(heat))
        ts = torch.minimum(torch.quantile(poi, qs), 0.99 * heat.max())
        ratios = []
        for t in ts:
            binary = heat >= t
            inside = binary & roi[i]
            num = heat[inside].sum() if params["weight"] else inside.sum().float()
            ratios.append(num / (binary.sum().float() + 1e-8))
        r = torch.stack(ratios)
        out[i] = torch.trapezoid(r, qs)
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
    mask[bh:h - bh, bw:w - bw] = False
    e = _energy(attribution.maps.to(x.device).float(), params["energy"]).reshape(b, -1)
    total = e.sum(1)
    inside = (e * mask.reshape(-1)).sum(1)
    return {"ibd": _nan_where(inside / total.clamp_min(1e-30), total > 0)}


_BOXES = ("Boxes: VOC boxes mapped through the resize and crop into model-input pixels; a pixel "
          "counts when its centre is inside; the union of the boxes of the target class is used "
          "(all boxes when the annotation names no known class). NaN without a box.")
_ENERGY = xplain.Param("energy", "str", "positive", "how signed maps become energy",
                       choices=("positive", "abs"))


@xplain.hookimpl
def register_metrics(register):
    register(xplain.Metric(
        name="ebpg",
        summary="energy-based pointing game: share of the map's energy inside the box (TR-GBP Table 1)",
        description="Wang et al. 2020 (Score-CAM), as TR-GBP's Table 1: sum(E in box) / sum(E), with E "
                    "the positive part of the map (energy=positive, default; Score-CAM maps are "
                    "non-negative) or |map| (energy=abs). Boxes are indexed rows = y, columns = x (the "
                    "official Score-CAM file transposes them). Deviations: the reference filters "
                    "images with one box covering < 50% of the image; eval scores every image and "
                    "uses the union of the target's boxes. NaN when the map has no energy. "
                    + _BOXES,
        score=_ebpg, params=[_ENERGY], higher_is_better=True, needs=("boxes",),
    ))
    register(xplain.Metric(
        name="bbox-accuracy",
        summary="bounding-box accuracy: share of the top-n pixels inside the box, n = box area (MIP-IN)",
        description="MIP-IN section 6.3 / Table 2 (after Schulz et al.): with n the number of box "
                    "pixels, the n highest-ranked pixels of the signed map (ties keep pixel order; "
                    "absolute=true ranks |map|) are taken and the fraction m/n inside the box is the "
                    "score. Deviation: the paper keeps only boxes covering < 33% of the image; eval "
                    "scores every image. " + _BOXES,
        score=_bbox_accuracy, higher_is_better=True, needs=("boxes",),
        params=[xplain.Param("absolute", "bool", False, "rank by |map|")],
    ))
    register(xplain.Metric(
        name="ehr",
        summary="effective heat ratio: AUC over quantile thresholds of the heat inside the box (InputIBA)",
        description="InputIBA Table 2, as coded in effective_heat_ratios.py: heat = positive part of "
                    "the map divided by its maximum (InputIBA reads maps saved in [0, 1]); pixels below "
                    "base_threshold (0.1) are zeroed and excluded; for quantiles q = linspace(0, 1, 11) "
                    "of the remaining heat, t = min(quantile(q), 0.99 max), and the ratio is |heat>=t "
                    "inside box| / |heat>=t| (weight=false, the CLI default of the reference) or "
                    "sum(heat inside)/|heat>=t| (weight=true); EHR = trapezoid over q. Deviations: "
                    "the reference's driver skips images whose boxes cover > 33% of the image or whose "
                    "target probability is < 0.6; eval scores every image. NaN for an all-non-positive "
                    "map. " + _BOXES,
        score=_ehr, higher_is_better=True, needs=("boxes",),
        params=[xplain.Param("base_threshold", "float", 0.1, "heat below this is ignored", min=0.0, max=1.0),
                xplain.Param("quantiles", "int", 11, "number of quantile thresholds in [0, 1]", min=2, max=1000),
                xplain.Param("weight", "bool", False, "weight the ratio by heat")],
    ))
    register(xplain.Metric(
        name="ibd",
        summary="intensity of boundary dependency: share of the energy on the image border (TR-GBP eq. 12)",
        description="TR-GBP eq. 12: sum(E on the border) / sum(E), with E the positive part of the map "
                    "(energy=abs for |map|). The border is `border` (16) pixels at `reference_size` "
                    "(224), scaled to the model's input size and rounded (5 px at 64x64). Lower is "
                    "better here: boundary attribution indicates dependence on the image edge, which "
                    "TR-GBP links to prediction errors. Deviation: TR-GBP reports the ROC AUC of IBD "
                    "as a predictor of wrong predictions over the worst half of ImageNet; eval reports "
                    "the per-image IBD (no boxes needed).",
        score=_ibd, higher_is_better=False,
        params=[_ENERGY, xplain.Param("border", "float", 16.0, "border width at the reference size", min=0.0),
                xplain.Param("reference_size", "float", 224.0, "image size the border refers to", min=1.0)],
    ))
