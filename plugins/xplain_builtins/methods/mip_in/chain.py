"""``mip-in``, the chain: which graphs MIP-IN can invert, and the forward pass it inverts.

Fitting and explaining both walk the same chain of steps from a start node (the input or a
feature layer) to the logits; this module reads that chain off the fx graph, classifies each
node as a step kind, and runs the forward pass that records every step's activations (the
gating patterns and regression targets). torch is imported inside functions.
"""

from __future__ import annotations

import xplain


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
    if isinstance(module, (nn.Flatten, nn.Unflatten)) or cls in (
        "OnnxReshape",
        "OnnxFlatten",
        "OnnxSqueezeStaticAxes",
        "OnnxUnsqueezeStaticAxes",
    ):
        return "reshape", None
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return "identity", None
    if "GlobalAveragePool" in cls:
        return "gap", None
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
        return "gap", None
    if (
        cls == "OnnxReduceStaticAxes"
        and module.operation_type == "ReduceMean"
        and list(module.axes or []) == [2, 3]
    ):
        return "gap", None
    raise _NotChain(node.name, f"no MIP-IN inverse for {cls}")


def _walk(model, start: str | None) -> list[dict]:
    """Steps from ``start`` (None: the input) to the logits, input side first."""
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
        inputs = model.signal_inputs(cur)  # a shape computed from the signal is not signal
        if len(inputs) != 1:
            raise _NotChain(
                cur.name, f"has {len(inputs)} signal inputs (a residual or branching graph)"
            )
        kind, module = _classify(model, cur)
        steps.append(
            {
                "node": cur.name,
                "kind": kind,
                "input": inputs[0].name,
                "module": module,
                "in_shape": list(model.shape(inputs[0].name)[1:]),
                "out_shape": list(model.shape(cur.name)[1:]),
            }
        )
        cur = inputs[0]
    steps.reverse()
    if not steps or steps[-1]["kind"] != "dense":
        raise _NotChain(
            steps[-1]["node"] if steps else "output", "the logits must come from a dense layer"
        )
    for step in steps:
        if step["kind"] == "conv":
            conv = step["module"]
            if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
                raise _NotChain(step["node"], "convolution with non-zero/string padding")
    return steps


def build_chain(model, layer: str = "") -> tuple[str | None, list[dict]]:
    """(start node or None for the input, steps). Falls back to the head for non-chains."""
    if layer and layer != "input":
        layer = model.node(
            layer
        ).name  # the fx id (an ONNX name is accepted too); UsageError if unknown
        try:
            return layer, _walk(model, layer)
        except _NotChain as err:
            raise xplain.UsageError(
                f"mip-in cannot invert the graph above layer {layer!r}: {err}",
                hint="choose a later feature layer (see `xplain inspect MODEL`)",
            ) from None
    try:
        return None, _walk(model, None)
    except _NotChain as err:
        if layer == "input":
            raise xplain.UsageError(
                f"mip-in cannot invert the whole graph: {err}",
                hint="leave `layer` empty to invert the head from the default feature layer",
            ) from None
        first = err
    default = model.default_feature_layer()
    if default is None:
        raise xplain.UsageError(
            f"mip-in cannot invert this graph ({first}) and it has no feature layer to start from"
        )
    try:
        return default.name, _walk(model, default.name)
    except _NotChain as err:
        raise xplain.UsageError(
            f"mip-in cannot invert the head above feature layer {default.name!r}: {err}"
        ) from None


def _step_meta(step: dict) -> dict:
    meta = {k: step[k] for k in ("node", "kind", "input", "in_shape", "out_shape")}
    if step["kind"] == "conv":
        conv = step["module"]
        meta.update(
            stride=list(conv.stride),
            padding=list(conv.padding),
            dilation=list(conv.dilation),
            groups=conv.groups,
            kernel=list(conv.kernel_size),
        )
    if step["kind"] == "maxpool":
        pool = step["module"]
        meta.update(
            kernel=pool.kernel_size,
            stride=pool.stride,
            padding=pool.padding,
            dilation=pool.dilation,
            ceil_mode=pool.ceil_mode,
        )
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
        parts = [run(x[i : i + 1]) for i in range(x.shape[0])]
        logits = torch.cat([p[0] for p in parts])
        acts = {k: torch.cat([p[1][k] for p in parts]) for k in names}
    else:
        logits, acts = run(x)
    acts["__input__"] = x
    return logits, acts


def _act(acts, name, start):
    return acts[name] if name in acts else acts["__input__"]
