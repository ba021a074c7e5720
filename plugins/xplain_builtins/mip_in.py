"""``mip-in``: the mutual-information-preserving inverse network (Deng et al., arXiv 2104.06629).

MIP-IN learns, per class c, an inverse of the classifier that maps the class logit Y_c back to
the input so that it reconstructs the data (eq. 4-5): layer by layer from the top, each inverse
g is fitted so that g(S) reproduces the true input activations X of that layer over the N
samples of the class, where S is the *reconstructed* signal coming from above, gated by each
sample's own forward-ReLU pattern (eq. 9). Explaining then runs the gated inverse once:
S_0 (with biases) is the source signal and A (chained linear parts, no biases) the attribution.

The graph is read as a chain of steps between a start node (the input, or a feature layer for
graphs that are not a chain, as the paper does for VGG19/ResNet50) and the logits:

========  ===================================================  ====================================
step      forward module                                       inverse
========  ===================================================  ====================================
dense     Linear                                               ridge closed form (eq. 6), streamed
conv      Conv2d                                               ConvTranspose2d, same geometry, free
                                                               weights, trained with Adam (eq. 7),
                                                               or solved exactly (conv_solver=lstsq)
gap       GlobalAveragePool / ReduceMean over H, W             ridge with the transposed structure:
                                                               one free weight per channel, shared
                                                               by all positions
affine    lone BatchNorm                                       per-channel ridge
maxpool   MaxPool2d                                            the sample's switches (eq. 8)
gate      ReLU, ReLU6, Clip, Hardtanh, LeakyReLU, PReLU        S ⊙ 1[X_l ≠ 0] (eq. 9)
reshape   Flatten / Reshape                                    exact reshape
identity  Dropout / Identity                                   identity
========  ===================================================  ====================================

Only the public ``xplain`` API is imported here; torch is imported inside functions.
"""

from __future__ import annotations

import xplain

NAME = "mip-in"
STATE_VERSION = 1
FITTED = ("dense", "conv", "gap", "affine")

_PARAMS = [
    xplain.Param("layer", "str", "",
                 "start layer: '' = the input when the graph is a plain chain, else the default feature "
                 "layer (the head is inverted from there); 'input' forces the full chain; or a layer name "
                 "from `xplain inspect` (fit; explain checks it matches the fitted state)"),
    xplain.Param("classes", "str", "", "fit only: comma-separated class indices or names ('' = every class "
                                       "present in the data)"),
    xplain.Param("ridge", "float", 0.001, "fit only: λ of the dense ridge solution (eq. 6, paper 0.001), on "
                                          "sums over samples", min=0.0),
    xplain.Param("epochs", "int", 20, "fit only: training epochs of each convolution inverse (paper E = 20)",
                 min=1),
    xplain.Param("lr", "float", 0.01, "fit only: Adam learning rate of the convolution inverses", min=0.0),
    xplain.Param("conv_batch", "int", 8, "fit only: mini-batch size of the convolution inverses", min=1),
    xplain.Param("conv_solver", "str", "adam",
                 "fit only: 'adam' trains each convolution inverse for `epochs` (the paper); 'lstsq' solves the "
                 "same transposed-convolution family exactly (ridge normal equations, one pass)",
                 choices=("adam", "lstsq")),
    xplain.Param("gating", "bool", True, "forward-ReLU gating (local adaptation, eq. 9); false gives the "
                                         "global inverse of Figure 3"),
    xplain.Param("relu", "bool", False, "explain only: keep only positive attribution (the paper does so "
                                        "for ImageNet); false keeps the signed map"),
]


class _NotChain(Exception):
    """The graph between the start and the logits is not a chain of supported steps."""

    def __init__(self, node: str, why: str):
        super().__init__(f"{node}: {why}")
        self.node, self.why = node, why


# ----------------------------------------------------------------------------- the chain
def _classify(model, node):
    """The step kind of one fx node (raises _NotChain for what MIP-IN cannot invert)."""
    import torch
    from torch import nn

    if node.op == "call_function" and node.target in (torch.flatten, torch.reshape):
        return "reshape", None
    if node.op == "call_method" and node.target in ("view", "reshape", "flatten", "contiguous"):
        return "reshape", None
    if node.op != "call_module":
        raise _NotChain(node.name, f"unsupported operation {node.target!r}")
    module = model.graph.get_submodule(node.target)
    cls = type(module).__name__
    for act in model.activations():
        if act.name == node.name:
            if act.rectifier:
                return "gate", None
            raise _NotChain(node.name, f"activation {act.kind} is not a rectifier")
    if isinstance(module, nn.Linear):
        return "dense", module
    if isinstance(module, nn.Conv2d):
        return "conv", module
    if isinstance(module, nn.MaxPool2d):
        return "maxpool", module
    if isinstance(module, nn.BatchNorm2d):
        return "affine", module
    if isinstance(module, (nn.Flatten, nn.Unflatten)) or cls in ("OnnxReshape", "OnnxFlatten", "OnnxSqueezeStaticAxes",
                                                                    "OnnxUnsqueezeStaticAxes"):
        return "reshape", None
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return "identity", None
    if "GlobalAveragePool" in cls:
        return "gap", None
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
        return "gap", None
    if cls == "OnnxReduceStaticAxes" and module.operation_type == "ReduceMean" and list(module.axes or []) == [2, 3]:
        return "gap", None
    raise _NotChain(node.name, f"no MIP-IN inverse for {cls}")


def _signal_nodes(model) -> set:
    """Nodes whose value depends on the input (constants and shapes are not signal)."""
    reached = set()
    for node in model.graph.graph.nodes:
        if node.op == "placeholder" or (node.op in ("call_module", "call_function", "call_method")
                                        and any(a in reached for a in node.all_input_nodes)):
            reached.add(node)
    return reached


def _walk(model, start: str | None) -> list[dict]:
    """Steps from ``start`` (None: the input) to the logits, input side first."""
    signal = _signal_nodes(model)
    output = next(n for n in model.graph.graph.nodes if n.op == "output")
    cur = output.args[0]
    if isinstance(cur, (tuple, list)):
        cur = cur[0]
    steps = []
    while True:
        if cur.op == "placeholder":
            if start is not None:
                raise _NotChain(start, "is not on the path from the input to the logits")
            break
        if start is not None and cur.name == start:
            break
        inputs = [a for a in cur.all_input_nodes if a in signal]
        if len(inputs) != 1:
            raise _NotChain(cur.name, f"has {len(inputs)} signal inputs (a residual or branching graph)")
        kind, module = _classify(model, cur)
        steps.append({"node": cur.name, "kind": kind, "input": inputs[0].name, "module": module,
                      "in_shape": list(model.shape(inputs[0].name)[1:]), "out_shape": list(model.shape(cur.name)[1:])})
        cur = inputs[0]
    steps.reverse()
    if not steps or steps[-1]["kind"] != "dense":
        raise _NotChain(steps[-1]["node"] if steps else "output", "the logits must come from a dense layer")
    for step in steps:
        if step["kind"] == "conv":
            conv = step["module"]
            if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
                raise _NotChain(step["node"], "convolution with non-zero/string padding")
    return steps


def build_chain(model, layer: str = "") -> tuple[str | None, list[dict]]:
    """(start node or None for the input, steps). Falls back to the head for non-chains."""
    if layer and layer != "input":
        model.node(layer)  # UsageError for an unknown name
        try:
            return layer, _walk(model, layer)
        except _NotChain as err:
            raise xplain.UsageError(f"mip-in cannot invert the graph above layer {layer!r}: {err}",
                                    hint="choose a later feature layer (see `xplain inspect MODEL`)") from None
    try:
        return None, _walk(model, None)
    except _NotChain as err:
        if layer == "input":
            raise xplain.UsageError(f"mip-in cannot invert the whole graph: {err}",
                                    hint="leave `layer` empty to invert the head from the default feature layer")
        first = err
    default = model.default_feature_layer()
    if default is None:
        raise xplain.UsageError(f"mip-in cannot invert this graph ({first}) and it has no feature layer to start from")
    try:
        return default.name, _walk(model, default.name)
    except _NotChain as err:
        raise xplain.UsageError(f"mip-in cannot invert the head above feature layer {default.name!r}: {err}") from None


def _step_meta(step: dict) -> dict:
    meta = {k: step[k] for k in ("node", "kind", "input", "in_shape", "out_shape")}
    if step["kind"] == "conv":
        conv = step["module"]
        meta.update(stride=list(conv.stride), padding=list(conv.padding), dilation=list(conv.dilation),
                    groups=conv.groups, kernel=list(conv.kernel_size))
    if step["kind"] == "maxpool":
        pool = step["module"]
        meta.update(kernel=pool.kernel_size, stride=pool.stride, padding=pool.padding, dilation=pool.dilation,
                    ceil_mode=pool.ceil_mode)
    return meta


# ----------------------------------------------------------------------------- forward pass
def _activations(model, x, start, steps):
    """Activations at every step's output (and the start) for a batch, plus the logits."""
    import torch

    names = sorted({s["node"] for s in steps} | ({start} if start else set()))

    def run(xb):
        with model.tap(names, gradients=False) as tap, torch.no_grad():
            logits = model.graph(xb)
            return logits, {k: v.detach() for k, v in tap.activations.items()}

    if model.spec.fixed_batch and x.shape[0] > 1:  # a tap keeps one call: run sample by sample
        parts = [run(x[i:i + 1]) for i in range(x.shape[0])]
        logits = torch.cat([p[0] for p in parts])
        acts = {k: torch.cat([p[1][k] for p in parts]) for k in names}
    else:
        logits, acts = run(x)
    acts["__input__"] = x
    return logits, acts


def _act(acts, name, start):
    return acts[name] if name in acts else acts["__input__"]


# ----------------------------------------------------------------------------- one inverse step
def _inverse(step, tensors, s, acts, *, bias=True, gating=True):
    """Map the signal at a step's output to its input (the inverse g of that step)."""
    import torch
    import torch.nn.functional as F

    kind = step["kind"]
    b = s.shape[0]
    if kind == "dense":
        out = s.reshape(b, -1) @ tensors["weight"].T
        if bias:
            out = out + tensors["bias"]
        return out.reshape(b, *step["in_shape"])
    if kind == "conv":
        x_in = step["in_shape"]
        out = F.conv_transpose2d(s, tensors["weight"], tensors["bias"] if bias else None, stride=step["stride"],
                                 padding=step["padding"], dilation=step["dilation"], groups=step["groups"],
                                 output_padding=_output_padding(step, s.shape[-2:]))
        return out[..., :x_in[1], :x_in[2]]
    if kind == "gap":
        c = step["in_shape"][0]
        out = (s.reshape(b, c, 1, 1) * tensors["weight"].reshape(1, c, 1, 1)).expand(b, *step["in_shape"])
        return out + tensors["bias"] if bias else out
    if kind == "affine":
        out = s * tensors["weight"].reshape(1, -1, 1, 1)
        return out + tensors["bias"].reshape(1, -1, 1, 1) if bias else out
    if kind == "gate":
        return s * (acts[step["node"]] != 0).to(s.dtype) if gating else s
    if kind == "maxpool":  # eq. 8: put the signal where the sample's maxima were (switches)
        x = _act(acts, step["input"], None)
        _, idx = F.max_pool2d(x, step["kernel"], step["stride"], step["padding"], step["dilation"],
                              step["ceil_mode"], return_indices=True)
        flat = torch.zeros(b, x.shape[1], x.shape[2] * x.shape[3], device=s.device, dtype=s.dtype)
        flat.scatter_add_(2, idx.flatten(2), s.flatten(2))
        return flat.reshape(x.shape)
    if kind == "reshape":
        return s.reshape(b, *step["in_shape"])
    return s  # identity


def _output_padding(step, s_hw):
    k, st, p, d = step["kernel"], step["stride"], step["padding"], step["dilation"]
    pads = []
    for i in range(2):
        full = (s_hw[i] - 1) * st[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1
        pads.append(max(0, min(step["in_shape"][1 + i] - full, max(st[i], d[i]) - 1)))
    return tuple(pads)


def _propagate(steps, inv, s, acts, lowest, *, bias=True, gating=True):
    """Run the gated inverse from the logits (signal ``s``) down to the input of step ``lowest``."""
    for k in range(len(steps) - 1, lowest - 1, -1):
        s = _inverse(steps[k], inv.get(k, {}), s, acts, bias=bias, gating=gating)
    return s


# ----------------------------------------------------------------------------- fitting
def _parse_classes(model, text: str) -> list[int] | None:
    if not text.strip():
        return None
    out = []
    for item in text.split(","):
        item = item.strip()
        if item.lstrip("-").isdigit():
            idx = int(item)
        elif model.labels and item in model.labels:
            idx = model.labels.index(item)
        else:
            raise xplain.UsageError(f"mip-in: unknown class {item!r}", hint="give class indices or label names")
        if not 0 <= idx < model.num_classes:
            raise xplain.UsageError(f"mip-in: class {idx} out of range 0..{model.num_classes - 1}")
        out.append(idx)
    return sorted(set(out))


def _labelled(model, batches):
    """(x, labels) batches; unknown labels (or a plain x stream) become the model's prediction."""
    import torch

    try:
        stream = batches(labels=True)
    except TypeError:  # an older stream that yields x only
        stream = batches()
    for item in stream:
        x, labels = item if isinstance(item, (tuple, list)) else (item, None)
        if labels is None:
            labels = torch.full((x.shape[0],), -1, dtype=torch.long)
        labels = torch.as_tensor(labels).to(x.device).long()
        if (labels < 0).any():
            with torch.no_grad():
                labels = torch.where(labels < 0, model(x).argmax(1), labels)
        yield x, labels


class _ClassData:
    """The inputs of one class, cached in memory up to ``cache_bytes``, else re-streamed."""

    def __init__(self, model, batches, cls, batch_size, cache_bytes=256 * 2 ** 20):
        self.model, self.batches, self.cls, self.batch_size = model, batches, cls, batch_size
        self.cached, self.count = [], 0
        size = 0
        for x in self._stream():
            self.count += x.shape[0]
            size += x.numel() * x.element_size()
            if self.cached is not None:
                self.cached.append(x)
                if size > cache_bytes:
                    self.cached = None

    def _stream(self):
        import torch

        pending = []
        have = 0
        for x, labels in _labelled(self.model, self.batches):
            keep = x[labels == self.cls]
            if keep.shape[0]:
                pending.append(keep)
                have += keep.shape[0]
            while have >= self.batch_size:
                allx = torch.cat(pending)
                yield allx[:self.batch_size]
                pending, have = [allx[self.batch_size:]], have - self.batch_size
        if have:
            yield torch.cat(pending)

    def __iter__(self):
        return iter(self.cached) if self.cached is not None else self._stream()


def _fit_class(model, start, steps, data, cls, params, task):
    """Fit every inverse of one class top-down (Algorithm 1); returns (inverses, errors)."""
    import torch

    inv: dict[int, dict] = {}
    errors: dict[str, dict] = {}
    gating = params["gating"]
    for k in range(len(steps) - 1, -1, -1):
        step = steps[k]
        if step["kind"] not in FITTED:
            continue
        if task is not None:
            task.update(f"class {cls}: {step['kind']} {step['node']}")

        def pairs():  # (S at this step's output, true X at its input) per batch
            for x in data:
                logits, acts = _activations(model, x, start, steps)
                s = logits[:, cls:cls + 1]
                s = _propagate(steps, inv, s, acts, k + 1, gating=gating)
                yield s, _act(acts, step["input"], start)

        if step["kind"] == "conv" and params.get("conv_solver") == "lstsq":
            inv[k], errors[step["node"]] = _fit_conv_lstsq(step, pairs, params["ridge"])
            if task is not None:
                task.advance(params["epochs"])
        elif step["kind"] == "conv":
            inv[k], errors[step["node"]] = _fit_conv(step, pairs, params, task)
        else:
            inv[k], errors[step["node"]] = _fit_closed(step, pairs, params["ridge"])
            if task is not None:
                task.advance(1)
    return inv, errors


def _solve(a, b):
    """``a⁻¹ b`` for a symmetric PSD ``a``; the minimum-norm least-squares solution when ``a`` is
    singular (λ = 0 with fewer samples than regressors, or regressors that are always zero)."""
    import torch

    try:
        return torch.linalg.solve(a, b)
    except RuntimeError:  # torch.linalg.LinAlgError
        return torch.linalg.pinv(a, hermitian=True) @ b


def _fit_closed(step, pairs, lam):
    """Ridge regression X ≈ W S + b on centred data, accumulated in float64 (eq. 6).

    dense: full W; gap: channel c of S feeds only channel c of X, with one slope per channel
    shared by all positions and an intercept per position; affine (BatchNorm): one scalar
    regression per channel, pooled over positions."""
    import torch

    kind = step["kind"]
    n = 0
    acc = {}
    for s, x in pairs():
        s, x = s.double(), x.double()
        b = s.shape[0]
        if kind == "dense":
            s2, x2 = s.reshape(b, -1), x.reshape(b, -1)
            terms = {"s": s2.sum(0), "x": x2.sum(0), "ss": s2.T @ s2, "xs": x2.T @ s2, "xx": (x2 * x2).sum()}
        elif kind == "gap":
            s2 = s.reshape(b, -1, 1, 1)
            terms = {"s": s2.sum(0), "x": x.sum(0), "ss": (s2 * s2).sum(0), "xs": (x * s2).sum(0),
                     "xx": (x * x).sum(0)}
        else:  # affine: pool over positions
            hw = x.shape[2] * x.shape[3]
            terms = {"s": s.sum((0, 2, 3)), "x": x.sum((0, 2, 3)), "ss": (s * s).sum((0, 2, 3)),
                     "xs": (x * s).sum((0, 2, 3)), "xx": (x * x).sum((0, 2, 3))}
            b = b * hw
        for key, value in terms.items():
            acc[key] = acc[key] + value if key in acc else value
        n += b
    if n < 2:
        raise xplain.InputDataError(f"mip-in needs at least 2 samples per class, got {n}")
    mu_s, mu_x = acc["s"] / n, acc["x"] / n
    if kind == "dense":
        css = acc["ss"] - n * torch.outer(mu_s, mu_s)
        cxs = acc["xs"] - n * torch.outer(mu_x, mu_s)
        eye = torch.eye(css.shape[0], dtype=css.dtype, device=css.device)
        w = _solve(css + lam * eye, cxs.T).T
        bias = mu_x - w @ mu_s
        sse = (acc["xx"] - n * (mu_x @ mu_x)) - 2 * (w * cxs).sum() + (w @ css * w).sum()
        sst = acc["xx"] - n * (mu_x @ mu_x)
        count = n * mu_x.numel()
    elif kind == "gap":  # one slope per channel, shared by all positions; intercept per position
        css = acc["ss"] - n * mu_s * mu_s  # C×1×1
        cxs = acc["xs"] - n * mu_x * mu_s  # C×H×W
        hw = cxs.shape[1] * cxs.shape[2]
        w = cxs.sum((1, 2), keepdim=True) / (hw * css + lam)
        bias = mu_x - w * mu_s
        sst_el = acc["xx"] - n * mu_x * mu_x
        sse = (sst_el - 2 * w * cxs + w * w * css).sum()
        sst = sst_el.sum()
        count = n * mu_x.numel()
        w = w.reshape(-1)
    else:
        css = acc["ss"] - n * mu_s * mu_s
        cxs = acc["xs"] - n * mu_x * mu_s
        w = cxs / (css + lam)
        bias = mu_x - w * mu_s
        sst_el = acc["xx"] - n * mu_x * mu_x
        sse = (sst_el - 2 * w * cxs + w * w * css).sum()
        sst = sst_el.sum()
        count = n * mu_x.numel()
    errors = {"mse": float(sse.clamp(min=0) / count), "relative": float(sse.clamp(min=0) / sst.clamp(min=1e-30)),
              "samples": n}
    return {"weight": w.float(), "bias": bias.float()}, errors


def _fit_conv(step, pairs, params, task):
    """A transposed convolution with the layer's geometry and free weights (eq. 7).

    Zero-initialised (deterministic, no random state) and trained with Adam on the mean squared
    reconstruction error for ``epochs`` passes over the class's samples."""
    import torch
    import torch.nn.functional as F

    weight = bias = opt = None
    history = []
    sst = sxx = None
    count = 0
    for epoch in range(params["epochs"]):
        total, elems = 0.0, 0
        for s, x in pairs():
            if weight is None:
                c_s, c_x = s.shape[1], x.shape[1]
                kh, kw = step["kernel"]
                weight = torch.zeros(c_s, c_x // step["groups"], kh, kw, device=s.device, dtype=s.dtype,
                                     requires_grad=True)
                bias = torch.zeros(c_x, device=s.device, dtype=s.dtype, requires_grad=True)
                opt = torch.optim.Adam([weight, bias], lr=params["lr"])
            if epoch == 0:  # for the relative error: variance of X around its per-element mean
                xd = x.double()
                sst = xd.sum(0) if sst is None else sst + xd.sum(0)
                sxx = (xd * xd).sum(0) if sxx is None else sxx + (xd * xd).sum(0)
                count += x.shape[0]
            for part in range(0, s.shape[0], params["conv_batch"]):
                sb, xb = s[part:part + params["conv_batch"]], x[part:part + params["conv_batch"]]
                with torch.enable_grad():
                    rec = _inverse(step, {"weight": weight, "bias": bias}, sb, None)
                    loss = F.mse_loss(rec, xb)
                    opt.zero_grad()
                    loss.backward()
                opt.step()
                loss = loss.detach()
                total += loss.item() * xb.numel()
                elems += xb.numel()
        history.append(total / max(elems, 1))
        if task is not None:
            task.advance(1)
    if count < 2:
        raise xplain.InputDataError(f"mip-in needs at least 2 samples per class, got {count}")
    # final error of the trained inverse, one more pass without updates
    total, elems = 0.0, 0
    with torch.no_grad():
        for s, x in pairs():
            rec = _inverse(step, {"weight": weight, "bias": bias}, s, None)
            total += float(((rec - x) ** 2).sum())
            elems += x.numel()
    var = float((sxx - sst * sst / count).sum()) / elems
    mse = total / elems
    errors = {"mse": mse, "relative": mse / max(var, 1e-30), "samples": count, "epoch_mse": history}
    return {"weight": weight.detach(), "bias": bias.detach()}, errors


def _conv_features(step, s):
    """The transposed convolution's regressors: one output channel per weight (c_s, u, v).

    A transposed convolution is linear in its weights: output channel i at position p is
    Σ W[c, i, u, v]·φ[c, u, v](S)[p]. Computing φ with the very same conv_transpose2d call (a
    one-hot weight per regressor) keeps stride, padding, dilation and cropping identical to
    :func:`_inverse`."""
    import torch
    import torch.nn.functional as F

    c_s = s.shape[1]
    kh, kw = step["kernel"]
    n_f = c_s * kh * kw
    onehot = torch.zeros(c_s, n_f, kh, kw, device=s.device, dtype=s.dtype)
    idx = torch.arange(n_f, device=s.device)
    onehot[idx // (kh * kw), idx, (idx // kw) % kh, idx % kw] = 1
    out = F.conv_transpose2d(s, onehot, None, stride=step["stride"], padding=step["padding"],
                             dilation=step["dilation"], output_padding=_output_padding(step, s.shape[-2:]))
    return out[..., :step["in_shape"][1], :step["in_shape"][2]]


def _fit_conv_lstsq(step, pairs, lam):
    """The least-squares transposed convolution (ridge on the weights, free bias), streamed."""
    import torch

    if step["groups"] != 1:
        raise xplain.UsageError("conv_solver=lstsq supports only ungrouped convolutions; use conv_solver=adam")
    gram = cross = None
    n = 0
    sx = sxx = None
    for s, x in pairs():
        for i in range(0, s.shape[0], 8):  # a few samples at a time: the regressors are large
            phi = _conv_features(step, s[i:i + 8]).double()
            xb = x[i:i + 8].double()
            phi = torch.cat([phi, torch.ones_like(phi[:, :1])], 1).transpose(0, 1).reshape(phi.shape[1] + 1, -1)
            target = xb.transpose(0, 1).reshape(xb.shape[1], -1)
            g, r = phi @ phi.T, phi @ target.T
            gram, cross = (g, r) if gram is None else (gram + g, cross + r)
            sx = xb.sum(0) if sx is None else sx + xb.sum(0)
            sxx = (xb * xb).sum(0) if sxx is None else sxx + (xb * xb).sum(0)
            n += xb.shape[0]
    if n < 2:
        raise xplain.InputDataError(f"mip-in needs at least 2 samples per class, got {n}")
    reg = torch.full((gram.shape[0],), lam, dtype=gram.dtype, device=gram.device)
    reg[-1] = 0  # the bias is not penalised
    sol = _solve(gram + torch.diag(reg), cross)
    kh, kw = step["kernel"]
    c_x = cross.shape[1]
    weight = sol[:-1].reshape(-1, kh, kw, c_x).permute(0, 3, 1, 2)
    sse = float((sxx.sum() - 2 * (sol * cross).sum() + (sol * (gram @ sol)).sum()).clamp(min=0))
    elems = n * sx.numel()
    mse = sse / elems
    var = float((sxx - sx * sx / n).sum()) / elems
    errors = {"mse": mse, "relative": mse / max(var, 1e-30), "samples": n, "solver": "lstsq"}
    return {"weight": weight.float().contiguous(), "bias": sol[-1].float()}, errors


class _NoTask:
    def update(self, text):
        pass

    def advance(self, n=1):
        pass

    def close(self):
        pass


def fit(model, batches, params, console=None):
    """Method.fit: per class, top-down, the inverses of Algorithm 1.

    ``batches(labels=True)`` yields ``(x, labels)`` (label -1 = unknown: the model's prediction
    is used); a stream that yields only x is labelled by prediction."""
    import time

    import torch

    model.__dict__.pop("_mip_in_state", None)
    start, raw = build_chain(model, params["layer"])
    steps = [_step_meta(s) for s in raw]
    wanted = _parse_classes(model, params["classes"])
    present: dict[int, int] = {}
    for x, labels in _labelled(model, batches):
        for c in labels.tolist():
            present[c] = present.get(c, 0) + 1
    classes = wanted if wanted is not None else sorted(present)
    missing = [c for c in classes if present.get(c, 0) < 2]
    if missing and wanted is None and len(missing) < len(classes):  # fit what can be fitted
        classes = [c for c in classes if c not in missing]
        if console is not None:
            console.print(f"mip-in: skipping class(es) {missing}: fewer than 2 samples each")
        missing = []
    if missing:
        raise xplain.InputDataError(
            f"mip-in needs at least 2 samples of each class it fits; class(es) {missing} have "
            f"{[present.get(c, 0) for c in missing]}", hint="add images of those classes or pass --classes")
    units = sum(params["epochs"] if s["kind"] == "conv" else 1 for s in steps if s["kind"] in FITTED)
    tensors, errors, counts = {}, {}, {}
    t0 = time.perf_counter()
    batch = 64
    for cls in classes:
        maker = getattr(console, "task", None)
        task = maker(f"mip-in class {cls}", total=units) if maker else None
        try:
            data = _ClassData(model, batches, cls, batch)
            torch.manual_seed(0)
            inv, err = _fit_class(model, start, steps, data, cls, params, task)
        finally:
            if task is not None:
                task.close()
        for k, t in inv.items():
            for key, value in t.items():
                tensors[f"c{cls}.s{k}.{key}"] = value.contiguous()
        errors[str(cls)] = err
        counts[str(cls)] = data.count
    meta = {
        "state_version": STATE_VERSION,
        "start": start or "input",
        "mode": "chain" if start is None else "head",
        "steps": steps,
        "classes": classes,
        "class_labels": [model.label(c) for c in classes],
        "lambda": params["ridge"],
        "epochs": params["epochs"],
        "lr": params["lr"],
        "conv_batch": params["conv_batch"],
        "conv_solver": params["conv_solver"],
        "gating": params["gating"],
        "samples_per_class": counts,
        "reconstruction_errors": errors,
        "fit_seconds": round(time.perf_counter() - t0, 3),
    }
    return tensors, meta


# ----------------------------------------------------------------------------- explaining
def _cache_key(model):
    import os

    return str(model.state_dir), os.environ.get("XPLAIN_STATE_DIR"), model.digest, str(model.device)


def load(model, params):
    """The fitted state as (start, steps, {class: {step: tensors}}, meta).

    Kept on the model object (keyed by state dir and device), so explaining batch after batch
    reads the safetensors file once; ``fit`` drops it."""
    cached = getattr(model, "_mip_in_state", None)
    if cached is not None and cached[0] == _cache_key(model):
        tensors, meta = cached[1]
    else:
        tensors, meta = model.fitted_state(NAME)
        model._mip_in_state = (_cache_key(model), (tensors, meta))
    if meta.get("state_version") != STATE_VERSION or "steps" not in meta:
        raise xplain.InputDataError("mip-in state was written by another version",
                                    hint=f"refit: `xplain fit mip-in {model.report.path} DATA`")
    start = None if meta["start"] == "input" else meta["start"]
    if params.get("layer") and params["layer"] != meta["start"]:
        raise xplain.UsageError(f"mip-in was fitted from layer {meta['start']!r}, not {params['layer']!r}",
                                hint=f"refit with `--layer {params['layer']}` or drop the parameter")
    steps = meta["steps"]
    inv: dict[int, dict[int, dict]] = {}
    for key, value in tensors.items():
        c, k, name = key.split(".")
        inv.setdefault(int(c[1:]), {}).setdefault(int(k[1:]), {})[name] = value
    return start, steps, inv, meta


def invert(model, x, targets, params, state=None):
    """(A, S_0) at the start layer for a batch: attribution (no biases) and source signal."""
    import torch

    start, steps, inv, meta = state or load(model, params)
    unknown = sorted({int(t) for t in targets.tolist()} - set(meta["classes"]))
    if unknown:
        raise xplain.InputDataError(
            f"mip-in was not fitted for class(es) {unknown} of this model (fitted: {meta['classes']})",
            path=model.report.path,
            hint=f"refit with every class you need: `xplain fit mip-in {model.report.path} DATA --classes "
                 f"{','.join(map(str, sorted(set(meta['classes']) | set(unknown))))}`")
    gating = params["gating"]
    logits, acts = _activations(model, x, start, steps)
    y = logits.gather(1, targets[:, None])
    attribution = torch.zeros((x.shape[0], *steps[0]["in_shape"]), device=x.device, dtype=x.dtype)
    source = torch.zeros_like(attribution)
    for c in sorted({int(t) for t in targets.tolist()}):
        rows = (targets == c).nonzero()[:, 0]
        sub = {k: v[rows] for k, v in acts.items()}
        s = torch.cat([y[rows], y[rows]])  # first half with biases (S), second without (A)
        n = rows.numel()
        for k in range(len(steps) - 1, -1, -1):
            t = inv[c].get(k, {})
            s = torch.cat([_inverse(steps[k], t, s[:n], sub, bias=True, gating=gating),
                           _inverse(steps[k], t, s[n:], sub, bias=False, gating=gating)])
        if start is not None and gating:  # the paper also gates the start (input) layer
            s = s * (torch.cat([sub[start], sub[start]]) != 0).to(s.dtype)
        source[rows], attribution[rows] = s[:n], s[n:]
    return attribution, source, logits, start


def _explain(model, x, targets, params, seed):
    import torch.nn.functional as F

    attribution, source, _, start = invert(model, x, targets, params)
    phi = source_logits(model, source, targets, start)  # Φ(S₀), for APC (eq. 10) at any start layer
    if start is None:
        maps = attribution.sum(dim=1)  # input channels summed (one channel for digits)
    else:  # head: average over channels at the feature layer, resized like Grad-CAM
        maps = attribution.mean(dim=1, keepdim=True)
        maps = F.interpolate(maps, size=(model.spec.height, model.spec.width), mode="bilinear",
                             align_corners=False)[:, 0]
    if params["relu"]:
        maps = maps.clamp(min=0)
    return xplain.Attribution(maps, extras={"source_signal": source, "attribution": attribution},
                              info={"start": start or "input"},
                              sample_info=[{"source_logit": float(v)} for v in phi.tolist()])


def source_logits(model, source, targets, start):
    """Φ(S): the target logits of the source signal (fed in at the start layer)."""
    import torch
    from torch import nn

    class _Replace(nn.Module):
        def forward(self, _):
            return source

    with torch.no_grad():
        if start is None:
            return model(source).gather(1, targets[:, None])[:, 0]
        if model.spec.fixed_batch and source.shape[0] > 1:
            return torch.cat([source_logits(model, source[i:i + 1], targets[i:i + 1], start)
                              for i in range(source.shape[0])])
        with model.insert_after({start: _Replace()}):
            return model.graph(torch.zeros((source.shape[0], model.spec.channels, model.spec.height,
                                            model.spec.width), device=source.device, dtype=source.dtype)
                               ).gather(1, targets[:, None])[:, 0]


def completeness(model, x, targets, params=None) -> dict:
    """APC and Positive APC of section 5 (eq. 10-11), in percent, averaged per class then over classes."""
    import torch

    values = xplain.validate_params(_PARAMS, params or {}, NAME)
    _, source, logits, start = invert(model, x, targets, values)
    phi_x = logits.gather(1, targets[:, None])[:, 0]
    phi_s = source_logits(model, source, targets, start)
    rel = (phi_x - phi_s).abs() / phi_x.abs().clamp(min=1e-12)
    pos = (phi_x - phi_s).clamp(min=0) / phi_x.abs().clamp(min=1e-12)
    per_class = [(float(rel[targets == c].mean()), float(pos[targets == c].mean())) for c in targets.unique().tolist()]
    return {"apc": 100 * sum(a for a, _ in per_class) / len(per_class),
            "positive_apc": 100 * sum(p for _, p in per_class) / len(per_class),
            "classes": len(per_class), "samples": int(targets.numel())}


_DESCRIPTION = (
    "MIP-IN (Deng et al. 2021) learns to invert the classifier. `xplain fit mip-in MODEL DATA` fits, for "
    "each class c separately and on that class's samples (labels from class sub-folders or a manifest; "
    "unlabelled images count for the class the model predicts), one inverse per layer, top-down "
    "(Algorithm 1, eq. 5): S_L = Y_c (the class logit); each inverse g is fitted so that g(S) "
    "reconstructs that layer's true input activations X over the samples, where S is the signal "
    "reconstructed from above, gated by each sample's own forward-ReLU pattern (S ⊙ 1[X_l ≠ 0], eq. 9). "
    "Dense layers: ridge closed form on centred data, W = X̄S̄ᵀ(S̄S̄ᵀ + λI)⁻¹, b = E[X] − W E[S] "
    "(eq. 6; `ridge` λ = 0.001 on sums over samples, statistics streamed in float64). Convolutions: a "
    "transposed convolution with the layer's geometry and free weights (not the forward filter), "
    "zero-initialised and trained with Adam (`lr` 0.01, mini-batches of `conv_batch` 8) on the mean "
    "squared error for `epochs` = 20 passes (eq. 7); a class's inputs are cached in memory up to 256 MB, "
    "else re-read for every pass; `conv_solver`=lstsq (not in the paper) solves the same "
    "transposed-convolution family exactly by ridge normal equations instead. Classes with fewer than 2 "
    "samples are skipped (an error if asked for). Max-pooling: the sample's own switches (eq. 8; "
    "overlapping windows sum). Flatten/Reshape: exact. Deviations/choices (the paper does not cover "
    "them): global average pooling is inverted with its transposed structure and a free weight, "
    "X[c,h,w] ≈ a[c]·S[c] + b[c,h,w] (one slope per channel shared by all positions, as a transposed "
    "convolution shares its kernel; intercept per position), fitted by the same ridge; a lone BatchNorm by a per-channel ridge "
    "(BatchNorm folded into a convolution is just that convolution); LeakyReLU/PReLU gate with X ≠ 0 "
    "like the paper's eq. 9, so they barely gate. Graphs that are not a plain chain (residual adds, "
    "branches) are handled as the paper does for VGG19/ResNet50: only the head from a feature layer "
    "(`layer`, default the loader's default feature layer) to the logits is inverted, the gating also "
    "acts on that feature layer, and the map is the attribution averaged over channels and resized "
    "bilinearly to the input. Explaining runs the gated inverse once: the map is A, the chained linear "
    "parts of the inverses without biases applied to Y_c and gated like S (section 4.3), signed (the "
    "paper's ImageNet maps keep only A > 0: `relu`=true); input channels are summed. extras: "
    "`source_signal` S_0 (with biases) and `attribution` A, both at the start layer. `gating`=false "
    "gives the global inverse of Figure 3. Without fitted state explain stops with the `xplain fit` "
    "command to run."
)


@xplain.hookimpl
def register_methods(register):
    register(xplain.Method(
        name=NAME,
        summary="mutual-information-preserving inverse network, fitted per class (Deng et al. 2021)",
        description=_DESCRIPTION,
        explain=_explain,
        fit=fit,
        params=_PARAMS,
        capabilities=xplain.Capabilities(needs_gradients=False, needs_fitting=True),
    ))
