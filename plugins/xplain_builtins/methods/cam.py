"""``grad-cam`` and ``fullgrad``: maps built from gradients at inner layers of the graph.

Both tap inner nodes through :meth:`xplain.Model.tap` (which restores the graph on exit) and
take the gradients they need with one ``torch.autograd.grad`` call: one forward and one
backward pass for the whole batch (a graph fixed at batch 1 runs sample by sample).
"""

import xplain


# ----------------------------------------------------------------------------- helpers
def _per_sample(model, x, targets, run):
    """``run(x, targets) -> (maps, info)`` for the batch, or per sample on a fixed-batch-1 graph
    (a tap records one activation per node, so each graph call must see the whole batch)."""
    import torch

    if not model.spec.fixed_batch or x.shape[0] == 1:
        return run(x, targets)
    parts = [run(x[i : i + 1], targets[i : i + 1]) for i in range(x.shape[0])]
    maps = torch.cat([m for m, _ in parts])
    info = dict(parts[0][1])
    for key, value in info.items():  # per-sample lists are concatenated, the rest kept
        if isinstance(value, list):
            info[key] = [v for _, i in parts for v in i[key]]
        elif isinstance(value, dict):
            info[key] = {k: [v for _, i in parts for v in i[key][k]] for k in value}
    return maps, info


def _layer_shape(model, name):
    try:
        return tuple(model.shape(name))
    except KeyError:
        raise xplain.UsageError(
            f"layer {name!r} does not carry a tensor",
            hint="see `xplain inspect MODEL` for layer names",
        ) from None


# ----------------------------------------------------------------------------- grad-cam
def _gradcam_layer(model, requested):
    """The feature layer (:class:`xplain.FeatureLayer`: name, layout, reshape to B×C×h×w)."""
    if requested:
        requested = model.node(
            requested
        ).name  # the fx id (an ONNX name is accepted too); UsageError if unknown
        _layer_shape(model, requested)
        layer = model.feature_layer(requested)
        if layer is None:
            shape = _layer_shape(model, requested)
            raise xplain.UsageError(
                f"grad-cam layer {requested!r} is not a spatial feature map: its output is "
                f"{'×'.join(map(str, shape)) or 'a scalar'}, grad-cam needs B×C×H×W, B×H×W×C or tokens "
                "B×N×C on a grid, with H×W > 1",
                hint="see `xplain inspect MODEL` for the feature layers",
            )
        return layer
    layer = model.default_feature_layer()
    if layer is None:
        raise xplain.UsageError(
            "grad-cam needs a spatial feature map, and this model has none "
            "(no layer with a B×C×H×W, B×H×W×C or token output)",
            hint="use a gradient method for fully connected models",
        )
    return layer


def _from_input(model, name):
    """Whether the node ``name`` is computed from the model's input (not a constant)."""
    stack, seen = [model.node(name)], set()
    while stack:
        node = stack.pop()
        if node.op == "placeholder":
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(node.all_input_nodes)
    return False


def layer_signal(model, layer, x, targets, gradients=True, method="grad-cam"):
    """The layer's activations and (with ``gradients``) the target logit's gradient there, both
    B×C×h×w (tokens/channels-last as maps, prefix tokens left out); grads None without."""
    import torch

    name = layer.name
    # the tap makes the layer's output a leaf: the network below it runs as inference (no
    # saved tensors, no input copy), the backward starts at the logit and stops at the layer
    with (
        model.tap([name], gradients=False, leaf=gradients) as tap,
        torch.set_grad_enabled(gradients),
    ):
        logits = model(x.detach())
        acts = tap.activations[name]
        if not (
            isinstance(acts, torch.Tensor) and acts.is_floating_point() and _from_input(model, name)
        ):
            raise xplain.UsageError(f"{method} layer {name!r} carries no signal from the input")
        if not gradients:
            return layer.to_spatial(acts.detach()), None
        (grads,) = torch.autograd.grad(
            logits.gather(1, targets[:, None]).sum(), acts, allow_unused=True
        )
    if grads is None:
        raise xplain.UsageError(f"{method} layer {name!r} does not reach the model's output")
    # tokens/channels-last as B×C×h×w; prefix tokens (class, distillation) are left out
    return layer.to_spatial(acts.detach()), layer.to_spatial(grads)


def _explain_gradcam(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    import torch.nn.functional as F

    layer = _gradcam_layer(model, params["layer"])
    name = layer.name
    size = (model.spec.height, model.spec.width)

    def run(x, targets):
        acts, grads = layer_signal(model, layer, x, targets)
        weights = grads.mean(dim=(2, 3), keepdim=True)  # α_k: spatial mean of d logit / d A_k
        cam = (weights * acts).sum(dim=1, keepdim=True)
        if params["relu"]:
            cam = F.relu(cam)
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
        return cam[:, 0], {}

    maps, _ = _per_sample(model, x, targets, run)
    return xplain.Attribution(
        maps,
        info={
            "layer": name,
            "layer_shape": list(layer.spatial_shape),
            "layout": layer.layout.kind if layer.layout else "nchw",
        },
    )


# ----------------------------------------------------------------------------- fullgrad
def _postprocess_summed(t, eps=1e-6, inplace=False):
    """FullGrad's post-processing of one term, summed over channels: |t|, min-max over C×H×W per
    sample ((|t| − min) / (max − min + eps)), then the channel sum, B×1×H×W.

    The normalisation is affine per sample, so it is applied after the channel sum (Σ_c|t| − C·min)
    / (max − min + eps): four passes over the C×H×W term (abs, min, max, sum) instead of eight, and no C×H×W temporaries (profiled: the post-processing of the 50 bias terms of
    EfficientNet-Lite0 took a third of FullGrad's time). ``inplace``: ``t`` may be overwritten."""
    a = t.abs_() if inplace else t.abs()
    flat = a.flatten(1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)  # (torch.aminmax is 3× slower on CPU)
    shape = (-1, 1, 1, 1)
    summed = a.sum(dim=1, keepdim=True)
    return (summed - a.shape[1] * low.view(shape)) / ((high - low).view(shape) + eps)


def _bias_parts(model, layer):
    """``[(label, bias)]`` for one bias layer, as the reference counts them.

    A conv with its own bias followed by BatchNorm is one bias layer in ``model.bias_layers()``
    (the BN folded into an effective bias at the BN output). The reference hooks the conv and
    the BN separately, so it has two maps there; splitting the folded bias b = s·b_conv + shift
    into s·b_conv (= the conv's own term, since d/d conv-out = s · d/d BN-out) and shift
    reproduces both exactly. The sum, and so completeness, is unchanged."""

    bias = layer.bias
    conv_bias = getattr(layer.module, "bias", None) if layer.kind == "conv" else None
    if conv_bias is None or layer.node == layer.layer:
        return [(layer.node, bias)]
    affine = model.batchnorm_affine(layer.node)  # the core's one BatchNorm canonicalisation
    if affine is None:
        return [(layer.node, bias)]
    scale = affine[0].reshape(bias.shape)
    own = conv_bias.detach().reshape(bias.shape) * scale
    return [(layer.layer, own), (layer.node, bias - own)]


def _explain_fullgrad(request: xplain.ExplainRequest):
    model, x, targets = request.model, request.x, request.targets
    import torch
    import torch.nn.functional as F

    layers = model.bias_layers()
    nodes = list(dict.fromkeys(b.node for b in layers))  # unique, in graph order
    size = (model.spec.height, model.spec.width)

    def run(x, targets):
        with model.tap(nodes, gradients=False) as tap, torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            logits = model(xg)
            score = logits.gather(1, targets[:, None])
            acts = [tap.activations[n] for n in nodes]
            live = [
                i for i, a in enumerate(acts) if isinstance(a, torch.Tensor) and a.requires_grad
            ]
            grads = torch.autograd.grad(
                score.sum(), [xg, *(acts[i] for i in live)], allow_unused=True
            )
        score = score[:, 0].detach()
        input_grad = grads[0] if grads[0] is not None else torch.zeros_like(xg)
        node_grad = {nodes[i]: g for i, g in zip(live, grads[1:])}
        input_term = input_grad * x
        maps = _postprocess_summed(input_term)[:, 0]
        totals = input_term.flatten(1).sum(dim=1)
        input_total = totals.clone()
        terms = {}
        for layer in layers:
            g = node_grad.get(layer.node)
            for label, bias in _bias_parts(model, layer):
                if g is None:  # the layer does not reach the logit: its term is zero
                    terms[label] = [0.0] * x.shape[0]
                    continue
                term = g * bias.to(g)
                per_sample = term.flatten(1).sum(dim=1)
                terms[label] = per_sample.tolist()
                totals = totals + per_sample
                if term.dim() == 4:
                    # resizing is linear per channel, so summing the channels first is the same
                    # map as the reference's resize-then-sum, at 1/C of the cost
                    summed = _postprocess_summed(term, inplace=True)
                    maps = (
                        maps
                        + F.interpolate(summed, size=size, mode="bilinear", align_corners=True)[
                            :, 0
                        ]
                    )
        return maps, {
            "logit": score.tolist(),
            "input_term": input_total.tolist(),
            "bias_terms": terms,
            "completeness_gap": (totals - score).abs().tolist(),
        }

    maps, info = _per_sample(model, x, targets, run)
    labels = [
        (label, len(layer.shape)) for layer in layers for label, _ in _bias_parts(model, layer)
    ]
    info["spatial_bias_terms"] = [label for label, rank in labels if rank == 4]
    info["scalar_bias_terms"] = [label for label, rank in labels if rank != 4]
    per_sample = [
        {
            "logit": info["logit"][i],
            "input_term": info["input_term"][i],
            "completeness_gap": info["completeness_gap"][i],
            "bias_terms": {k: v[i] for k, v in info["bias_terms"].items()},
        }
        for i in range(x.shape[0])
    ]
    return xplain.Attribution(maps, info=info, sample_info=per_sample)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="grad-cam",
            reference="captum.attr.LayerGradCam",
            summary="Grad-CAM at a spatial feature layer (Selvaraju et al. 2017)",
            description=(
                "One forward and one backward pass of the target logit (never the softmax), the backward "
                "stopping at the feature layer. At the layer's output A (K channels) the weights are the "
                "spatial means of the gradient, w_k = mean_ij d logit / d A_k[i,j]; the map is "
                "ReLU(sum_k w_k A_k) (`relu`, default true; false keeps the signed map), upsampled "
                "bilinearly to the input size with align_corners=False — what Captum's LayerGradCam "
                "followed by LayerAttribution.interpolate(..., 'bilinear') computes. `layer` (default: "
                "the model's default feature layer, the last spatial map all information passes "
                "through, e.g. the post-add ReLU of a ResNet's last block; `xplain inspect` lists the "
                "layers) may name any node with a spatial layout; an unknown or non-spatial layer is a "
                "usage error. Transformers: the layout comes from the graph (Model.feature_layer): "
                "B×H×W×C maps (Swin, ConvNeXt blocks) are permuted, B×N×C tokens lose their prefix "
                "tokens (class/distillation/register: N minus the grid cells) and are reshaped to the "
                "grid, as pytorch-grad-cam's reshape_transform does; the class token's own gradient is "
                "not part of the map. The default on class-token models (ViT, DeiT) is the tokens "
                "entering the last block after its first LayerNorm (pytorch-grad-cam's "
                "blocks[-1].norm1), since after the last block only the class token reaches the logits. "
                "Not normalised (rendering decides colours). info records the layer, its C×h×w grid "
                "shape and layout. A graph fixed at batch 1 runs one forward/backward per sample."
            ),
            explain=_explain_gradcam,
            params=[
                xplain.Param(
                    "layer", "str", "", "feature layer (fx node name); empty = the model's default"
                ),
                xplain.Param(
                    "relu", "bool", True, "apply ReLU to the weighted sum (positive evidence only)"
                ),
            ],
            capabilities=xplain.Capabilities(needs_gradients=True),
        )
    )
    register(
        xplain.Method(
            name="fullgrad",
            summary="FullGrad: input-gradient and bias-gradients of every layer (Srinivas & Fleuret 2019)",
            description=(
                "One forward and one backward pass of the target logit. The full-gradient "
                "decomposition: the input term x * df/dx and, for every bias source the loader finds "
                "(conv/linear biases, BatchNorm's effective bias beta - gamma*mu/sqrt(var+eps), folded "
                "after its conv, Gemm C, constant adds such as in-graph mean subtraction), the "
                "bias-gradient term b * df/dz at the node z where the bias has been added. On ReLU "
                "networks (max-pooling, residual adds included) the input term plus all bias terms "
                "equals the logit; info.completeness_gap = |input + sum of bias terms - logit| per "
                "sample (info.logit, info.input_term, info.bias_terms hold the terms; a gap on "
                "ReLU6/Clip/sigmoid networks is their activations' implicit biases, which FullGrad "
                "does not count; info's per-sample lists are in batch order). The map follows the "
                "reference post-processing (idiap/fullgrad-saliency): each term is taken in absolute "
                "value, min-max normalised per sample over C×H×W ((t - min) / (max + 1e-6), the "
                "reference's absolute eps), resized bilinearly to the input size with "
                "align_corners=True (the input term is already at input size), summed over channels "
                "(xplain sums before resizing: the same map, as resizing is linear, at 1/C of the "
                "cost), and all terms are summed — a "
                "non-negative map, not rescaled to [0, 1]. Only terms with a spatial (B×C×H×W) output enter the map; "
                "linear/Gemm bias terms are scalars that count for completeness only, as in the "
                "reference (info.scalar_bias_terms lists them). A conv with its own bias followed by "
                "BatchNorm contributes two maps (conv bias, BN shift), as the reference's separate "
                "hooks do. Deviation: constant adds on spatial maps (which the reference's module "
                "hooks cannot see) are bias terms and enter the map too. A graph fixed at batch 1 "
                "runs one forward/backward per sample. No parameters."
            ),
            explain=_explain_fullgrad,
            capabilities=xplain.Capabilities(needs_gradients=True),
        )
    )
