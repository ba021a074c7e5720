"""``occlusion``: the drop in the target logit when a sliding square patch is set to a baseline."""

import xplain


def _positions(size, patch, stride):
    """Window offsets along one axis, as Captum: ceil((size − patch)/stride) + 1 of them, k·stride;
    the last one may reach past the edge and is then cut off there."""
    count = -(-(size - patch) // stride) + 1
    return [k * stride for k in range(count)]


def occlusion_windows(height, width, patch, stride):
    """The (top, left) corners of every occlusion window, rows outer, columns inner."""
    return [
        (top, left)
        for top in _positions(height, patch, stride)
        for left in _positions(width, patch, stride)
    ]


def _resolve(params, height, width):
    side = min(height, width)
    patch = params["patch"] or 2 * max(1, round(side / 16))
    stride = params["stride"] or max(1, patch // 2)
    if patch > side:
        raise xplain.UsageError(
            f"occlusion patch {patch} is larger than the {height}×{width} input",
            hint=f"use --param patch=N with N <= {side}",
        )
    if stride > patch:
        raise xplain.UsageError(
            f"occlusion stride {stride} is larger than the patch {patch}: pixels would be skipped",
            hint="use a stride no larger than the patch",
        )
    return patch, stride


def _explain(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    import torch

    batch, channels, height, width = x.shape
    patch, stride = _resolve(params, height, width)
    windows = occlusion_windows(height, width, patch, stride)
    masks = torch.zeros((len(windows), height, width), device=x.device, dtype=torch.bool)
    for i, (top, left) in enumerate(windows):
        masks[i, top : top + patch, left : left + patch] = True
    counts = masks.sum(dim=0).to(x.dtype)  # windows covering each pixel (never 0: stride <= patch)
    fill = torch.tensor(params["baseline"], device=x.device, dtype=x.dtype)
    per_pass = xplain.images_per_forward_pass(model, params["batch"], params["memory_budget_mb"])
    group = min(batch, per_pass)  # images per pass; all of them when they fit
    per_group = max(1, per_pass // group)  # windows per pass
    total = torch.zeros((batch, height, width), device=x.device, dtype=x.dtype)
    buffer = x.new_empty(min(per_group, len(windows)), group, channels, height, width)  # reused
    with torch.no_grad():
        x = x.detach()
        reference = model.infer(x).gather(1, targets[:, None])[:, 0]  # B
        for lo in range(0, batch, group):
            xs, ts = x[lo : lo + group], targets[lo : lo + group]
            n = xs.shape[0]
            for start in range(0, len(windows), per_group):
                mask = masks[start : start + per_group]
                k = mask.shape[0]
                occluded = buffer[:k, :n]
                torch.where(mask[:, None, None], fill, xs[None], out=occluded)  # k×n×C×H×W
                logits = model.infer(occluded.reshape(k * n, channels, height, width))
                drop = reference[None, lo : lo + n] - logits.gather(1, ts.repeat(k)[:, None]).view(
                    k, n
                )
                total[lo : lo + n] += torch.einsum("kb,khw->bhw", drop, mask.to(x.dtype))
                done = lo * len(windows) + n * (start + k)
                xplain.report_progress(done, batch * len(windows), "occluded images")
    return xplain.Attribution(
        total / counts, info={"patch": patch, "stride": stride, "occlusions": len(windows)}
    )


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="occlusion",
            reference="captum.attr.Occlusion",
            summary="logit drop when a sliding patch is set to a baseline (Zeiler & Fergus 2014)",
            description=(
                "A `patch`×`patch` window (all channels) slides over the image with step `stride`; for each "
                "position the window's pixels are set to `baseline` and the drop logit(x) − logit(occluded) "
                "of the target class is recorded. A pixel's value is the mean drop over the windows that "
                "cover it (signed: negative where hiding the region raises the logit). Window positions are "
                "Captum's: ceil((H − patch)/stride) + 1 per axis at multiples of `stride`, the last one cut "
                "off at the border when the stride does not divide H − patch, so every pixel is covered. "
                "The map equals Captum's Occlusion(sliding_window_shapes=(C, patch, patch), strides=(C, "
                "stride, stride), baselines=baseline), whose value is the same for every channel (xplain "
                "keeps one: no channel sum). Cost: one forward pass per window plus one, `batch` occluded "
                "images per pass (by default as many as fit in `memory_budget_mb`: one image's "
                "activations each, a quarter of free memory, at most 256 MB), no backward pass. "
                "Defaults scale with the image: patch = 2·round(min(H, W)/16) "
                "≈ min(H, W)/8 and stride = patch/2 (patch 28, stride 14 on 224×224; patch 4, stride 2 on "
                "28×28; patch 2, stride 1 on 16×16), i.e. about 15×15 = 225 occlusions at any resolution "
                "instead of a cost that grows with the pixel count; `baseline` 0 is zero in the model's "
                "preprocessed input space (the mean colour for mean/std normalisation)."
            ),
            explain=_explain,
            params=[
                xplain.Param(
                    "patch",
                    "int",
                    0,
                    "window side in pixels; 0 = auto, 2·round(min(H, W)/16)",
                    min=0,
                    max=4096,
                ),
                xplain.Param(
                    "stride",
                    "int",
                    0,
                    "window step in pixels (<= patch); 0 = auto, patch // 2",
                    min=0,
                    max=4096,
                ),
                xplain.Param(
                    "baseline",
                    "float",
                    0.0,
                    "value the occluded pixels are set to (preprocessed space)",
                ),
                xplain.Param(
                    "batch",
                    "int",
                    0,
                    "occluded images per forward pass; 0 = as many as fit in "
                    "memory_budget_mb (xplain.images_per_forward_pass). Never changes the map",
                    min=0,
                    max=4096,
                ),
                xplain.pass_params("", forward_only=True)[1],
            ],
            capabilities=xplain.Capabilities(needs_gradients=False),
        )
    )
