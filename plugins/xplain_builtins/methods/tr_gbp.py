"""``tr-gbp``: Theoretical Refinements of Guided BackPropagation (ICLR 2022 submission).

Three things on top of guided backprop (see ``docs/tr-gbp.md`` for the derivations):

1. **Biases as all-ones inputs (eq. 8).** A conv layer ``z = W * a + b`` is rewritten as
   ``z = W * a + B * 1ˡ``: ``1ˡ`` is a one-channel all-ones map at the layer's *input* resolution,
   padded with ones where the conv pads its input, and ``B`` a uniform kernel of the conv's
   window with weight ``b_c / (kh·kw)`` for output channel c, so every window sums back to
   ``b_c`` and the forward pass is unchanged. The guided gradient with respect to ``1ˡ`` is
   then ``R̃ˡ = conv_transpose(Σ_c G_c b_c, ones(kh, kw) / (kh·kw))`` (stride, padding and
   dilation of the conv), cropped to the input grid, where ``G`` is the guided gradient at the
   node where the bias has been added. A one-channel ones-map with ``b/(kh·kw)`` equals a
   C_in-channel ones-map with ``b/(C_in·kh·kw)`` (the paper's ``b/p``) summed over channels.
   The part of a border window that lies on padding is not attributed to any pixel, so
   border pixels, which lie in fewer windows, get less (the paper's section 4.2 (2)).
2. **Aggregation (eq. 9):** ``R̃ = R̃⁰ + Σ_l ψ(R̃ˡ)``, ψ = bilinear upsampling.
3. **Class-mean subtraction (eq. 10)** over the top-K classes ∪ {target}.

All classes of all images go through the model as one batch of copies: one forward, one
backward (the torch part is imported inside functions, as for every plugin).
"""

import xplain

from .guided import NON_RECTIFIER

_ALL, _CONV = "all", "conv"
_UPSAMPLE, _SPREAD, _NONE = "upsample", "spread", "none"


# ----------------------------------------------------------------------------- bias layers
class _Term:
    """One bias layer as TR-GBP uses it: where to tap, its bias, and how its ones-map looks.

    ``mode``: ``conv`` (bias spread over the conv window, map at the conv's input grid),
    ``elementwise`` (BatchNorm without a conv, constant adds, transposed convs: a 1×1 window,
    map at the node's own grid) or ``scalar`` (no spatial map: linear/Gemm layers and any layer
    whose map would be 1×1; only its total is reported)."""

    def __init__(self, name, node, bias, mode, conv=None, in_hw=None, pad_tl=(0, 0), dims=3):
        self.name, self.node, self.bias, self.mode = name, node, bias, mode
        self.conv, self.in_hw, self.pad_tl = conv, in_hw, pad_tl
        self.dims = dims  # dimensions of the node's output per image (C×H×W: 3)


def _conv_geometry(model, layer):
    """(Conv2d, input H×W, (top, left) total padding) of a conv bias layer, or None.

    onnx2torch wraps a conv with asymmetric padding as ``Sequential(OnnxPadStatic, Conv2d)``;
    the static pad then adds to the conv's own padding."""
    import torch.nn as nn

    module = model.module(layer.layer)
    pad_t = pad_l = 0
    if isinstance(module, nn.Sequential):
        for part in list(module)[:-1]:
            pads = getattr(part, "pads", None)
            if pads is None or len(pads) < 4 or getattr(part, "mode", "constant") != "constant":
                return None
            pad_l, pad_t = pad_l + int(pads[0]), pad_t + int(pads[2])
        module = module[-1]
    if not isinstance(module, nn.Conv2d) or isinstance(module.padding, str):
        return None
    node = model.node(layer.layer)
    source = node.args[0] if node.args else None
    try:
        in_shape = model.shape(source.name)
    except (AttributeError, KeyError):
        return None
    if len(in_shape) != 4:
        return None
    return (
        module,
        (int(in_shape[2]), int(in_shape[3])),
        (pad_t + module.padding[0], pad_l + module.padding[1]),
    )


def bias_terms(model, spec=_ALL):
    """The bias layers TR-GBP uses for the ``layers`` parameter ``spec``, as :class:`_Term`s.

    ``all``: every bias layer the loader reports; ``conv``: conv layers only; otherwise a
    comma-separated list of layer or node names (``xplain inspect`` lists them)."""
    layers = model.bias_layers()
    if spec in (_ALL, _CONV):
        chosen = [b for b in layers if spec == _ALL or b.kind == "conv"]
    else:
        wanted = [s.strip() for s in spec.split(",") if s.strip()]
        known = {n for b in layers for n in (b.node, b.layer)}
        unknown = [w for w in wanted if w not in known]
        if unknown or not wanted:
            names = ", ".join(dict.fromkeys(b.layer for b in layers)) or "none"
            raise xplain.UsageError(
                f"tr-gbp: unknown bias layer(s) {', '.join(unknown) or repr(spec)}",
                hint=f"use all, conv or a comma-separated list of: {names}",
            )
        chosen = [b for b in layers if b.node in wanted or b.layer in wanted]
    terms = []
    for b in chosen:
        shape = tuple(b.shape)
        spatial = len(shape) == 4
        geometry = _conv_geometry(model, b) if b.kind == "conv" and spatial else None
        if geometry is not None and geometry[1][0] * geometry[1][1] > 1:
            conv, in_hw, pad_tl = geometry
            terms.append(
                _Term(b.layer, b.node, b.bias, "conv", conv, in_hw, pad_tl, len(shape) - 1)
            )
        elif (
            b.kind not in ("linear", "gemm")
            and spatial
            and shape[2] * shape[3] > 1
            and geometry is None
        ):
            # the bias broadcasts against the node's output exactly as the graph adds it
            terms.append(
                _Term(b.layer, b.node, b.bias, "elementwise", in_hw=(shape[2], shape[3]), dims=3)
            )
        else:
            terms.append(_Term(b.layer, b.node, b.bias, "scalar", dims=len(shape) - 1))
    return terms


def ones_map_gradient(weighted, conv, in_hw, pad_tl):
    """Guided gradient w.r.t. a conv's ones-map: ``weighted`` = Σ_c G_c b_c (N×1×h×w).

    The transpose of "window sum of the ones-map / (kh·kw)": each output position hands its
    ``G·b`` back evenly to the kh×kw input positions of its window (stride, dilation as the
    conv), and what falls on padding is dropped. Returns N×1×H×W at the conv's input grid."""
    import torch
    import torch.nn.functional as F

    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    if tuple(conv.dilation) == (1, 1):
        # the same numbers as the transposed conv below, ~10x faster on CPU: spread the strided
        # grid back out with zeros, then a kh×kw box mean over the zero-padded result
        if (sh, sw) != (1, 1):
            n, _, h, w = weighted.shape
            grid = weighted.new_zeros(n, 1, (h - 1) * sh + 1, (w - 1) * sw + 1)
            grid[:, :, ::sh, ::sw] = weighted
            weighted = grid
        full = F.avg_pool2d(F.pad(weighted, (kw - 1, kw - 1, kh - 1, kh - 1)), (kh, kw), stride=1)
    else:
        kernel = torch.full(
            (1, 1, kh, kw), 1.0 / (kh * kw), device=weighted.device, dtype=weighted.dtype
        )
        full = F.conv_transpose2d(weighted, kernel, stride=conv.stride, dilation=conv.dilation)
    (height, width), (top, left) = in_hw, pad_tl
    need_h, need_w = top + height, left + width
    if full.shape[2] < need_h or full.shape[3] < need_w:  # trailing rows no window reached
        full = F.pad(full, (0, max(0, need_w - full.shape[3]), 0, max(0, need_h - full.shape[2])))
    return full[:, :, top : top + height, left : left + width]


# ----------------------------------------------------------------------------- the passes
class _NotBatchable(Exception):
    """The graph's backward cannot run under vmap: use copies instead."""


def _contract(g, term):
    """Σ_c G_c b_c of the gradient ``g`` at ``term``'s node (…×C×spatial, the last ``term.dims``
    dimensions per image): …×1×spatial for map terms, … for scalar terms (summed over the
    positions too). A per-channel bias is one matrix-vector product per image, without the
    C-channel product ``G·b`` (on EfficientNet-Lite0 that product and its sum cost more than
    a tenth of TR-GBP)."""
    import torch

    lead, image = g.shape[: g.dim() - term.dims], g.shape[g.dim() - term.dims :]
    bias = term.bias.to(g)
    per_channel = tuple(bias.shape[-term.dims :]) == (image[0],) + (1,) * (term.dims - 1)
    if per_channel and bias.numel() == image[0]:
        flat = g.reshape(-1, image[0], max(1, image[1:].numel()))
        weighted = torch.matmul(bias.reshape(1, image[0]), flat).view(*lead, 1, *image[1:])
    else:
        weighted = (g * bias).sum(dim=g.dim() - term.dims, keepdim=True)
    if term.mode == "scalar":
        return weighted.flatten(len(lead)).sum(dim=-1)
    return weighted


def _gradients(model, images, pick, copies, terms, rule, batched):
    """Guided gradients of U images for up to L classes each, in one forward and one backward.

    ``pick(logits U×K) -> U×L`` class indices (-1: none) is called on the forward's logits, so
    the top-K can be read off the same pass. Batched (the default): one forward of the U images,
    then one backward run for all L one-hot output gradients at once (``is_grads_batched``: the
    backward graph is vmapped over L, the forward shared; convolutions and pads fold L into
    their batch, :func:`xplain.batched_backward`). Each term's node gradient is contracted
    with its bias (:func:`_contract`) by a hook as it passes, on the L×… tensor beneath the
    batched gradient (:func:`xplain.unbatched`), so no node gradient is kept. Copies (graphs
    fixed at batch 1, whose tapped activations are per-call slices, or a backward that vmap
    cannot run): one forward of ``copies`` copies of each image (a second forward only for
    classes beyond them) and one backward of the sum of each copy's logit. Returns
    ``(classes U×L, input gradient U×L×C×H×W, {term name: U×L×… contraction})``; terms whose
    node no gradient reaches are missing."""
    import torch

    nodes = list(dict.fromkeys(t.node for t in terms))
    chooser = xplain.rectifier_rules(rule)
    if batched:  # convolutions and pads whose backward folds the L classes into the batch
        chooser = xplain.batched_backward(chooser)
    with (
        xplain.apply_rules(model, chooser),
        model.tap(nodes, gradients=not batched) as tap,
        torch.enable_grad(),
    ):
        if batched:
            xg = images.detach().clone().requires_grad_(True)
            logits = model(xg)
            classes = pick(logits.detach())
            valid = classes >= 0
            outputs = torch.zeros(
                classes.shape[1], *logits.shape, device=logits.device, dtype=logits.dtype
            )
            cols, rows = valid.T.nonzero(as_tuple=True)
            outputs[cols, rows, classes[rows, cols]] = 1.0
            acts = tap.activations
            contracted = {}

            def contract_at(node):
                def hook(g):
                    physical = xplain.unbatched(g)
                    if physical is None:  # the gradient is out of reach: use copies
                        raise RuntimeError("tr-gbp: a batched gradient could not be read")
                    for term in terms:
                        if term.node == node:  # noqa: B023 - the node of this hook
                            contracted[term.name] = _contract(physical[0], term)

                return hook

            for n in nodes:
                if n in acts and isinstance(acts[n], torch.Tensor) and acts[n].requires_grad:
                    acts[n].register_hook(contract_at(n))
            try:
                (grad,) = torch.autograd.grad(logits, [xg], outputs, is_grads_batched=True)
            except RuntimeError as err:
                raise _NotBatchable(str(err)) from err
            return (
                classes,
                grad.transpose(0, 1),
                {n: c.transpose(0, 1) for n, c in contracted.items()},
            )
        n_images = images.shape[0]
        xg = images.detach().repeat_interleave(copies, dim=0).requires_grad_(True)
        logits = model(xg)
        classes = pick(logits.detach()[::copies])
        score = logits.gather(1, classes[:, :copies].reshape(-1, 1)).sum()
        inputs = [xg]
        extra_u, extra_j = (classes[:, copies:] >= 0).nonzero(as_tuple=True)
        extra_j = extra_j + copies
        if extra_u.numel():
            xe = images.detach()[extra_u].clone().requires_grad_(True)
            score = score + model(xe).gather(1, classes[extra_u, extra_j][:, None]).sum()
            inputs.append(xe)
        flat = torch.autograd.grad(score, inputs)
        tapped = tap.gradients

    def spread(main_and_extra):
        """Rows in call order (U·copies main, then extras) → U×L×…"""
        out = main_and_extra.new_zeros(n_images, classes.shape[1], *main_and_extra.shape[1:])
        out[:, :copies] = main_and_extra[: n_images * copies].view(
            n_images, copies, *main_and_extra.shape[1:]
        )
        out[extra_u, extra_j] = main_and_extra[n_images * copies :]
        return out

    contracted = {t.name: spread(_contract(tapped[t.node], t)) for t in terms if t.node in tapped}
    return classes, spread(torch.cat(flat)), contracted


def _core(model, images, pick, copies, terms, reduce, rule):
    """R̃⁰ and the bias terms for U images × L classes: ``(classes U×L, input map U×L×H×W,
    {term: U×L×h×w R̃ˡ at its own grid; U×L for scalar terms}, "batched" or "copies")``;
    :func:`_upsample` gives ψ(R̃ˡ)."""
    import torch

    batched = not model.spec.fixed_batch
    try:
        classes, input_grad, grads = _gradients(model, images, pick, copies, terms, rule, batched)
    except _NotBatchable:
        batched = False
        classes, input_grad, grads = _gradients(model, images, pick, copies, terms, rule, False)
    shape = classes.shape
    size = (model.spec.height, model.spec.width)
    input_map = xplain.reduce_channels(input_grad.flatten(0, 1), reduce)
    natives = {}
    for term in terms:
        weighted = grads.get(term.name)
        if weighted is None:  # the node carries no signal from the input: no gradient, no term
            zeros = dict(device=images.device, dtype=images.dtype)
            natives[term.name] = (
                torch.zeros(shape, **zeros)
                if term.mode == "scalar"
                else torch.zeros(*shape, *term.in_hw, **zeros)
            )
            continue
        if term.mode == "scalar":
            natives[term.name] = weighted
            continue
        weighted = weighted.flatten(0, 1)  # Σ_c G_c b_c: the ones-map has one channel
        if term.mode == "conv":
            native = ones_map_gradient(weighted, term.conv, term.in_hw, term.pad_tl)
        else:
            native = weighted
        natives[term.name] = native[:, 0].view(*shape, *native.shape[2:])
    return classes, input_map.view(*shape, *size), natives, "batched" if batched else "copies"


def _upsample(native, size):
    """ψ: bilinear upsampling of …×h×w maps to ``size`` (align_corners=False)."""
    import torch.nn.functional as F

    if tuple(native.shape[-2:]) == tuple(size):
        return native
    lead = native.shape[:-2]
    flat = native.reshape(-1, 1, *native.shape[-2:])
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).view(*lead, *size)


def guided_terms(model, x, classes, terms, reduce="sum", rule="guided"):
    """Un-centred TR-GBP parts for each row of ``x`` and its class in ``classes``.

    Returns ``(input_map N×H×W, {term name: N×H×W map ψ(R̃ˡ)}, {term name: N totals})``:
    ``input_map`` is R̃⁰ reduced over channels, the maps are at the input size and the totals
    are Σ R̃ˡ at the layer's own grid (for scalar terms Σ G·b). ``rule`` is ``guided`` for
    TR-GBP; ``plain`` gives the ordinary gradient (tests)."""
    _, input_map, natives, _ = _core(
        model, x, lambda logits: classes.reshape(-1, 1), 1, terms, reduce, rule
    )
    size = (model.spec.height, model.spec.width)
    maps = {t.name: _upsample(natives[t.name][:, 0], size) for t in terms if t.mode != "scalar"}
    totals = {
        n: t[:, 0].flatten(1).sum(dim=1) if t.dim() > 2 else t[:, 0] for n, t in natives.items()
    }
    return input_map[:, 0], maps, totals


def _fractions(mass):
    whole = sum(mass.values()) or 1.0
    return {name: round(m / whole, 6) for name, m in mass.items()}


def _explain(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    import torch

    terms = bias_terms(model, params["layers"]) if params["bias"] else []
    # identical rows (``--target top5`` repeats the image) share one forward and their classes
    unique, inverse = torch.unique(x.flatten(1), dim=0, return_inverse=True)
    unique = unique.view(-1, *x.shape[1:])
    n_unique = unique.shape[0]
    k = min(params["topk"], model.num_classes)
    wanted = [list(dict.fromkeys(targets[inverse == u].tolist())) for u in range(n_unique)]
    found = {}

    def pick(logits):
        """Each image's top-k classes, then its targets outside them; -1 pads the rows."""
        top = logits.topk(k, dim=1).indices
        lists = [
            top[u].tolist() + [t for t in wanted[u] if t not in top[u].tolist()]
            for u in range(n_unique)
        ]
        width_l = max(len(row) for row in lists)
        found["top"] = top.tolist()
        return torch.tensor([row + [-1] * (width_l - len(row)) for row in lists], device=x.device)

    classes, input_map, natives, backward = _core(
        model, unique, pick, k, terms, params["reduce"], "guided"
    )
    size = (model.spec.height, model.spec.width)
    scalar = [t.name for t in terms if t.mode == "scalar"]
    column = [{c: j for j, c in enumerate(row) if c >= 0} for row in classes.tolist()]
    # each output row is a combination of the U×L class maps (its own, minus the mean of its
    # members): one coefficient matrix, applied to every part at its own grid; ψ is linear, so
    # only these B centred maps are upsampled, not all U×L
    coef = input_map.new_zeros(x.shape[0], classes.numel())
    members_of = []
    for b in range(x.shape[0]):
        u, t = int(inverse[b]), int(targets[b])
        members = list(dict.fromkeys(found["top"][u] + [t]))
        members_of.append(members if params["center"] else [t])
        width_l = classes.shape[1]
        coef[b, u * width_l + column[u][t]] += 1.0
        if params["center"]:
            for c in members:
                coef[b, u * width_l + column[u][c]] -= 1.0 / len(members)

    def centred(values):
        """B centred rows of U×L×… values."""
        return (coef @ values.reshape(classes.numel(), -1)).view(x.shape[0], *values.shape[2:])

    full = centred(input_map)
    in_map = {"input": full.flatten(1).abs().sum(dim=1)}
    native_mass = {"input": in_map["input"]}  # each term at its own grid: |R⁰|, |Rˡ| before ψ
    layer_totals = {}
    # eq. 9 sums psi(R^l) over every bias layer; a linear layer's ones-input is one value, and
    # bilinear upsampling of a 1x1 map puts that value on every pixel (fc_bias=upsample);
    # spread divides it over the pixels, so the map's total gains it once
    scale = 1.0 if params["fc_bias"] == _UPSAMPLE else 1.0 / (size[0] * size[1])
    for name, values in natives.items():
        own = centred(values)
        rows = own.reshape(x.shape[0], -1)
        native_mass[name] = rows.abs().sum(dim=1)
        layer_totals[name] = rows.sum(dim=1)
        if name in scalar:
            if params["fc_bias"] == _NONE:
                continue
            full = full + (own * scale)[:, None, None]
            in_map[name] = (own * scale).abs() * (size[0] * size[1])
        else:
            mapped = _upsample(own, size)
            full = full + mapped
            in_map[name] = mapped.flatten(1).abs().sum(dim=1)
    in_map_rows = {n: v.tolist() for n, v in in_map.items()}
    native_rows = {n: v.tolist() for n, v in native_mass.items()}
    total_rows = {n: v.tolist() for n, v in layer_totals.items()}
    sample_info = [
        {
            "classes": members_of[b],
            "shares": _fractions({n: v[b] for n, v in native_rows.items()}),
            "map_shares": _fractions({n: v[b] for n, v in in_map_rows.items()}),
            "layer_totals": {n: round(v[b], 6) for n, v in total_rows.items()},
        }
        for b in range(x.shape[0])
    ]
    info = {
        "topk": k,
        "map_layers": [t.name for t in terms if t.mode != "scalar" or params["fc_bias"] != _NONE],
        "scalar_layers": scalar,
        "fc_bias": params["fc_bias"],
        "backward": backward,
        "classes_per_pass": int((classes >= 0).sum()),
    }
    return xplain.Attribution(full, info=info, sample_info=sample_info)


# ----------------------------------------------------------------------------- registration
@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="tr-gbp",
            summary="TR-GBP: guided backprop + bias ones-maps + top-K class-mean subtraction",
            description=(
                "Theoretical Refinements of Guided BackPropagation (ICLR 2022 submission). (1) Guided "
                "backprop (eq. 4) through every rectifier (ReLU, ReLU6, Clip, Hardtanh, LeakyReLU, PReLU; "
                "the guided-backprop rule set): R0 = guided d logit_k / d x, reduced over colour channels "
                "by `reduce` (default sum, the signed sum; the paper leaves it open). The input term is the "
                "guided gradient itself, not gradient x input, as in eq. 9. (2) Biases as all-ones inputs "
                "(eq. 8): for each bias layer (`layers`, default all: conv/linear biases with BatchNorm's "
                "effective bias beta - gamma*mu/sqrt(var+eps) folded in, lone BatchNorm, Gemm C, constant "
                "adds) the guided gradient with respect to its ones-map. A conv's ones-map is one channel "
                "at the conv's INPUT resolution; the bias b_c is spread evenly over the kh x kw window "
                "(b_c/(kh*kw) per position; the same as the paper's b/p per element of a C_in-channel "
                "ones-map, summed over channels), and the ones-map is padded with ones, so the forward is "
                "unchanged and Rl = conv_transpose(sum_c G_c*b_c, ones/(kh*kw), stride, dilation), "
                "cropped to the input grid (G = guided gradient where the bias is added). Window parts on "
                "padding are not attributed, so borders are weaker (section 4.2 (2)). Lone BatchNorm, "
                "constant adds and transposed convs use a 1x1 window (map at their own grid). Linear/Gemm "
                "layers, and layers whose map would be 1x1, have a one-value ones-input: R^l = sum_j G_j b_j; "
                "eq. 9 sums psi(R^l) over all l, and bilinear upsampling of a 1x1 map puts R^l on every "
                "pixel (fc_bias=upsample, default). fc_bias=spread puts R^l/(H*W) on every pixel (the "
                "map's total gains R^l once); fc_bias=none leaves them out of the map (as FullGrad; the "
                "former default) and only reports them. After the class-mean subtraction they are a "
                "uniform offset: they change no ranking, but they move the sign balance, so positive-"
                "energy scores (EBPG, IBD with energy=positive) depend on this choice (docs/tr-gbp.md). "
                "(3) Aggregation (eq. 9): R = R0 + "
                "sum_l psi(Rl), psi = bilinear upsampling to the input size (align_corners=False; the "
                "paper does not say). (4) Class-mean subtraction (eq. 10): R_k minus the mean of R over "
                "the top-`topk` predicted classes (default 5, clamped to the number of classes) and the "
                "target when it is not among them (then the mean is over K+1 maps). Cost: one forward of "
                "the distinct images of the batch (the top-K are read off its logits) and ONE backward, "
                "batched over the K classes (torch.autograd.grad with is_grads_batched: the backward graph "
                "is vmapped over K one-hot output gradients, equivalent to a batch of B*K copies sharing "
                "their forward). Graphs fixed at batch 1, or a backward vmap cannot run, use K real "
                "copies per image instead (one forward of the copies, one backward; a target outside "
                "the top-K adds one copy in a second forward). Identical rows (--target top5) share one "
                "image's pass. Output: the signed R_k (the paper displays ReLU(R_k), appendix A: regions "
                "more relevant for k than the top-K average). `bias=false` gives guided backprop + "
                "centring, `center=false` the un-centred eq. 9 (ablations). Record info per sample: "
                "classes (those averaged), shares (each term's L1 mass of its centred map at its own "
                "grid, before psi: input, every bias layer incl. those without a map, whose ones-map is "
                "one value), map_shares (the terms' L1 mass in the output map, after psi), layer_totals "
                "(the centred sum of each layer's ones-map gradient at its own grid); per batch: topk, "
                "map_layers, scalar_layers, fc_bias, backward (batched or copies). What to expect: on BatchNorm "
                "networks the folded BN biases are large and psi multiplies a coarse term's mass by its area "
                "ratio, so the map is mostly upsampled deep-layer bias terms, a smooth CAM-like map (measured: "
                "the input term is 0.3% of the map on an ImageNet EfficientNet-Lite0, 92% on the BN-free "
                "digits_cnn; see map_shares in the record and docs/tr-gbp.md). For fine detail pass `layers` "
                "with the early bias layers only (e.g. those at >= 1/4 of the input resolution; `xplain "
                "inspect` lists them) or bias=false (guided backprop + centring). " + NON_RECTIFIER
            ),
            explain=_explain,
            params=[
                xplain.Param(
                    "topk",
                    "int",
                    5,
                    "classes averaged for the class-mean subtraction (clamped to "
                    "the number of classes; the target is added when outside them)",
                    min=2,
                    max=100000,
                ),
                xplain.Param(
                    "bias",
                    "bool",
                    True,
                    "add the bias ones-map terms (false: guided backprop + centring, an ablation)",
                ),
                xplain.Param(
                    "center",
                    "bool",
                    True,
                    "subtract the top-K class mean (false: the un-centred eq. 9 map, an ablation)",
                ),
                xplain.Param(
                    "layers",
                    "str",
                    _ALL,
                    "bias layers: all, conv, or comma-separated layer names (see `xplain inspect`)",
                ),
                xplain.Param(
                    "fc_bias",
                    "str",
                    _UPSAMPLE,
                    "bias layers without a spatial map (linear/Gemm, 1x1 "
                    "maps): upsample = eq. 9, psi of the 1x1 map, the value on every pixel; spread = "
                    "the value / (H*W) on every pixel; none = left out (FullGrad)",
                    choices=(_UPSAMPLE, _SPREAD, _NONE),
                ),
                xplain.reduce_param(
                    help="how the C input channels of the input term become one map"
                ),
            ],
            capabilities=xplain.Capabilities(
                needs_gradients=True,
                multi_class=True,
                requires=("rectifiers",),
                alternatives=("gradient", "integrated-gradients", "grad-cam", "lrp-epsilon"),
            ),
        )
    )
