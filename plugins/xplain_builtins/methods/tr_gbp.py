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

    def __init__(self, name, node, bias, mode, conv=None, in_hw=None, pad_tl=(0, 0)):
        self.name, self.node, self.bias, self.mode = name, node, bias, mode
        self.conv, self.in_hw, self.pad_tl = conv, in_hw, pad_tl


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
            terms.append(_Term(b.layer, b.node, b.bias, "conv", conv, in_hw, pad_tl))
        elif (
            b.kind not in ("linear", "gemm")
            and spatial
            and shape[2] * shape[3] > 1
            and geometry is None
        ):
            # the bias broadcasts against the node's output exactly as the graph adds it
            terms.append(_Term(b.layer, b.node, b.bias, "elementwise", in_hw=(shape[2], shape[3])))
        else:
            terms.append(_Term(b.layer, b.node, b.bias, "scalar"))
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


def _gradients(model, images, pick, copies, nodes, rule, batched):
    """Guided gradients of U images for up to L classes each, in one forward and one backward.

    ``pick(logits U×K) -> U×L`` class indices (-1: none) is called on the forward's logits, so
    the top-K can be read off the same pass. Batched (the default): one forward of the U images,
    then one backward run for all L one-hot output gradients at once (``is_grads_batched``: the
    backward graph is vmapped over L, the forward shared). Copies (graphs fixed at batch 1, whose
    tapped activations are per-call slices, or a backward that vmap cannot run): one forward of
    ``copies`` copies of each image (a second forward only for classes beyond them) and one
    backward of the sum of each copy's logit. Returns ``(classes U×L, input gradient U×L×C×H×W,
    {node: U×L×… gradient})``."""
    import torch

    with (
        xplain.apply_rules(model, xplain.rectifier_rules(rule)),
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
            live = [
                n
                for n in nodes
                if n in acts and isinstance(acts[n], torch.Tensor) and acts[n].requires_grad
            ]
            try:
                grads = torch.autograd.grad(
                    logits,
                    [xg, *(acts[n] for n in live)],
                    outputs,
                    is_grads_batched=True,
                    allow_unused=True,
                )
            except RuntimeError as err:
                raise _NotBatchable(str(err)) from err
            grads = [None if g is None else g.transpose(0, 1) for g in grads]
            return classes, grads[0], {n: g for n, g in zip(live, grads[1:]) if g is not None}
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

    return classes, spread(torch.cat(flat)), {n: spread(g) for n, g in tapped.items()}


def _core(model, images, pick, copies, terms, reduce, rule):
    """R̃⁰ and the bias terms for U images × L classes: ``(classes U×L, input map U×L×H×W,
    {term: U×L×H×W map ψ(R̃ˡ)}, {term: U×L×h×w R̃ˡ at its own grid; U×L for scalar terms},
    "batched" or "copies")``."""
    import torch
    import torch.nn.functional as F

    size = (model.spec.height, model.spec.width)
    nodes = list(dict.fromkeys(t.node for t in terms))
    batched = not model.spec.fixed_batch
    try:
        classes, input_grad, grads = _gradients(model, images, pick, copies, nodes, rule, batched)
    except _NotBatchable:
        batched = False
        classes, input_grad, grads = _gradients(model, images, pick, copies, nodes, rule, False)
    shape = classes.shape
    input_map = xplain.reduce_channels(input_grad.flatten(0, 1), reduce)
    maps, natives = {}, {}
    for term in terms:
        g = grads.get(term.node)
        if g is None:  # the node carries no signal from the input: no gradient, no term
            zeros = dict(device=images.device, dtype=images.dtype)
            natives[term.name] = (
                torch.zeros(shape, **zeros)
                if term.mode == "scalar"
                else torch.zeros(*shape, *term.in_hw, **zeros)
            )
            if term.mode != "scalar":
                maps[term.name] = torch.zeros(*shape, *size, **zeros)
            continue
        g = g.flatten(0, 1)
        weighted = g * term.bias.to(g)
        if term.mode == "scalar":
            natives[term.name] = weighted.flatten(1).sum(dim=1).view(shape)
            continue
        weighted = weighted.sum(dim=1, keepdim=True)  # Σ_c G_c b_c: the ones-map has one channel
        if term.mode == "conv":
            native = ones_map_gradient(weighted, term.conv, term.in_hw, term.pad_tl)
        else:
            native = weighted
        natives[term.name] = native[:, 0].view(*shape, *native.shape[2:])
        if tuple(native.shape[2:]) != size:
            native = F.interpolate(native, size=size, mode="bilinear", align_corners=False)
        maps[term.name] = native[:, 0].view(*shape, *size)
    return classes, input_map.view(*shape, *size), maps, natives, "batched" if batched else "copies"


def guided_terms(model, x, classes, terms, reduce="sum", rule="guided"):
    """Un-centred TR-GBP parts for each row of ``x`` and its class in ``classes``.

    Returns ``(input_map N×H×W, {term name: N×H×W map ψ(R̃ˡ)}, {term name: N totals})``:
    ``input_map`` is R̃⁰ reduced over channels, the maps are at the input size and the totals
    are Σ R̃ˡ at the layer's own grid (for scalar terms Σ G·b). ``rule`` is ``guided`` for
    TR-GBP; ``plain`` gives the ordinary gradient (tests)."""
    _, input_map, maps, natives, _ = _core(
        model, x, lambda logits: classes.reshape(-1, 1), 1, terms, reduce, rule
    )
    totals = {
        n: t[:, 0].flatten(1).sum(dim=1) if t.dim() > 2 else t[:, 0] for n, t in natives.items()
    }
    return input_map[:, 0], {n: m[:, 0] for n, m in maps.items()}, totals


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

    classes, input_map, maps, natives, backward = _core(
        model, unique, pick, k, terms, params["reduce"], "guided"
    )
    scalar = [t.name for t in terms if t.mode == "scalar"]
    if params["fc_bias"] != _NONE:
        # eq. 9 sums psi(R^l) over every bias layer; a linear layer's ones-input is one value, and
        # bilinear upsampling of a 1x1 map puts that value on every pixel (fc_bias=upsample);
        # spread divides it over the pixels, so the map's total gains it once
        size = (model.spec.height, model.spec.width)
        scale = 1.0 if params["fc_bias"] == _UPSAMPLE else 1.0 / (size[0] * size[1])
        for name in scalar:
            maps[name] = (natives[name] * scale)[..., None, None].expand(
                *natives[name].shape, *size
            )
    column = [{c: j for j, c in enumerate(row) if c >= 0} for row in classes.tolist()]
    parts = {"input": input_map, **maps}
    full = input_map + sum(maps.values()) if maps else input_map

    out, sample_info = [], []
    for b in range(x.shape[0]):
        u, t = int(inverse[b]), int(targets[b])
        members = list(dict.fromkeys(found["top"][u] + [t]))
        me = column[u][t]
        picks = torch.tensor([column[u][c] for c in members], device=x.device)

        def centred(values):
            own = values[u, me]  # noqa: B023 - called within this iteration only
            return own - values[u, picks].mean(dim=0) if params["center"] else own  # noqa: B023

        out.append(centred(full))
        in_map = {name: float(centred(m).abs().sum()) for name, m in parts.items()}
        native = {"input": in_map["input"]}  # each term at its own grid: |R⁰|, |Rˡ| before ψ
        native.update({n: float(centred(v).abs().sum()) for n, v in natives.items()})
        sample_info.append(
            {
                "classes": members if params["center"] else [t],
                "shares": _fractions(native),
                "map_shares": _fractions(in_map),
                "layer_totals": {n: round(float(centred(v).sum()), 6) for n, v in natives.items()},
            }
        )
    info = {
        "topk": k,
        "map_layers": [t.name for t in terms if t.mode != "scalar" or params["fc_bias"] != _NONE],
        "scalar_layers": scalar,
        "fc_bias": params["fc_bias"],
        "backward": backward,
        "classes_per_pass": int((classes >= 0).sum()),
    }
    return xplain.Attribution(torch.stack(out), info=info, sample_info=sample_info)


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
