"""ONNX-level passes that make real-world graphs convertible and safe.

Each pass takes and mutates a ``ModelProto`` and returns a short note of what it changed
(empty when nothing), so ``xplain inspect`` can say what was done to the user's model.
"""

from __future__ import annotations

import re
from collections import Counter

#: the opset range onnx2torch converts reliably; graphs outside it are version-converted.
MIN_OPSET, MAX_OPSET = 9, 17
_SAFE = re.compile(r"[^A-Za-z0-9_]")


def default_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def sanitize_names(model) -> tuple[dict[str, str], str]:
    """Rename every node, value and initializer to a plain identifier.

    ONNX names end up in the Python source torch.fx generates and executes; a crafted name
    can run code. After this pass every name matches ``[a-z][a-z0-9_]*``. Returns the map
    from new node names to the original ones (shown, escaped, by ``inspect``)."""
    graph = model.graph
    if graph.sparse_initializer:
        from ..errors import ModelError

        raise ModelError("sparse initializers are not supported")
    values: dict[str, str] = {}

    def rename(name: str) -> str:
        if name == "":
            return ""  # an omitted optional input stays omitted
        if name not in values:
            values[name] = f"v{len(values)}"
        return values[name]

    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        vi.name = rename(vi.name)
    for init in graph.initializer:
        init.name = rename(init.name)
    originals: dict[str, str] = {}
    for i, node in enumerate(graph.node):
        for j, name in enumerate(node.input):
            node.input[j] = rename(name)
        for j, name in enumerate(node.output):
            node.output[j] = rename(name)
        new = f"n{i:05d}_{_SAFE.sub('', node.op_type).lower()}"
        originals[new] = node.name
        node.name = new
        if node.domain == "ai.onnx":
            node.domain = ""
    for imp in model.opset_import:
        if imp.domain == "ai.onnx":
            imp.domain = ""
    note = "renamed all nodes and values to safe identifiers"
    if dropped := drop_omitted_trailing_inputs(model):
        note += "; " + dropped
    return originals, note


#: ops whose outputs after the first are optional extras (statistics, masks, indices)
_OPTIONAL_EXTRA_OUTPUTS = frozenset(
    {"LayerNormalization", "Dropout", "BatchNormalization", "MaxPool"}
)


def drop_unused_optional_outputs(model) -> str:
    """Remove optional extra outputs (LayerNorm's Mean/InvStdDev, Dropout's mask, …) nobody reads.

    onnx2torch treats a node with several output names as a tuple-returning module and indexes
    it; a converter that returns one tensor would then be indexed along the batch. Empty names
    (omitted outputs) and names no node or graph output reads are the same graph without them."""
    graph = model.graph
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    count = 0
    for node in graph.node:
        if node.op_type not in _OPTIONAL_EXTRA_OUTPUTS or node.domain not in ("", "ai.onnx"):
            continue
        while len(node.output) > 1 and (node.output[-1] == "" or node.output[-1] not in read):
            del node.output[-1]
            count += 1
    return f"dropped {count} unused optional node outputs" if count else ""


def drop_omitted_trailing_inputs(model) -> str:
    """Remove trailing empty input names (``Clip(x, min, "")``).

    ONNX spells an omitted optional input as ``""`` or leaves a trailing one out; the two are
    the same graph. onnx2torch counts ``""`` as a given input and looks it up as a constant:
    torch's classic exporter writes ``x.clamp(min=0)`` as ``Clip(x, min, "")``, which then
    fails with "Dynamic value of min/max is not implemented". Called by
    :func:`sanitize_names`, which already walks every input name."""
    count = 0
    for node in model.graph.node:
        while len(node.input) and node.input[-1] == "":
            del node.input[-1]
            count += 1
    return f"dropped {count} omitted trailing inputs" if count else ""


def fold_constants(model) -> str:
    """Turn ``Constant`` nodes into initializers and fold ``Identity(initializer)``.

    onnx2torch needs Conv/Gemm weights as initializers; torch's exporter re-emits
    deduplicated weights through Identity nodes and writes Clip bounds as Constants."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    folded = 0
    changed = True
    while changed:
        changed = False
        keep = []
        for node in graph.node:
            if node.op_type == "Constant" and node.domain == "" and node.output[0] not in outputs:
                tensor = _constant_value(node, numpy_helper)
                if tensor is not None:
                    tensor.name = node.output[0]
                    graph.initializer.append(tensor)
                    inits.add(tensor.name)
                    folded += 1
                    changed = True
                    continue
            if (
                node.op_type == "Identity"
                and node.input[0] in inits
                and node.output[0] not in outputs
            ):
                source = next(t for t in graph.initializer if t.name == node.input[0])
                copy = type(source)()
                copy.CopyFrom(source)
                copy.name = node.output[0]
                graph.initializer.append(copy)
                inits.add(copy.name)
                folded += 1
                changed = True
                continue
            keep.append(node)
        if changed:
            del graph.node[:]
            graph.node.extend(keep)
    _drop_unused_initializers(graph)
    return f"folded {folded} Constant/Identity nodes into initializers" if folded else ""


def _constant_value(node, numpy_helper):
    import numpy as np

    for attr in node.attribute:
        if attr.name == "value":
            t = type(attr.t)()
            t.CopyFrom(attr.t)
            return t
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    return None  # sparse or string constants are left to the converter


def _drop_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def drop_initializer_inputs(model) -> None:
    """Old exporters list weights as graph inputs too; they are not inputs a user feeds."""
    inits = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)


def normalize_opset(model):
    """Bring the default-domain opset into [9, 17] with onnx's version converter.

    Returns ``(model, note)``. When the converter cannot do it, the model is returned
    unchanged and the alias converters (``xplain.onnx.converters``) get their chance."""
    from onnx import version_converter

    opset = default_opset(model)
    if MIN_OPSET <= opset <= MAX_OPSET:
        return model, ""
    target = MAX_OPSET if opset > MAX_OPSET else 13
    hidden = _hide_unadapted_ops(model) if opset > MAX_OPSET else 0
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as err:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        _unhide_ops(model)
        return (
            model,
            f"opset {opset} kept (version converter failed: {str(err).splitlines()[0][:120]})",
        )
    _unhide_ops(model)
    _unhide_ops(converted)
    extra = f" ({hidden} Pad nodes carried over unchanged)" if hidden else ""
    return converted, f"converted opset {opset} -> {target}{extra}"


_HIDDEN_DOMAIN = "xplain.unchanged"
_HIDDEN_MARK = "xplain: parked during version conversion"


def _hide_unadapted_ops(model) -> int:
    """Park ``Pad`` nodes in a private domain while the version converter runs.

    onnx has no Pad 18 -> 17 adapter, so any model with a Pad (torch's dynamo exporter writes
    one for every ``F.pad`` it cannot fold into a conv) at opset >= 18 failed to convert as a
    whole. Pad-18+ without the new ``axes`` input and without mode ``wrap`` (Pad-19) means
    exactly what Pad-13 means, so such nodes are moved out of the converter's sight and moved
    back by :func:`_unhide_ops`. Returns how many were hidden."""
    from onnx import helper

    if any(node.domain == _HIDDEN_DOMAIN for node in model.graph.node):
        return 0  # the model uses our private domain itself: park nothing
    count = 0
    for node in model.graph.node:
        if node.op_type != "Pad" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.input) > 3 and node.input[3] != "":
            continue  # axes given: leave it to the converter (and its error)
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        if mode not in (b"constant", b"reflect", b"edge"):
            continue
        node.domain = _HIDDEN_DOMAIN
        node.doc_string = _HIDDEN_MARK  # only nodes we parked go back, never a model's own
        count += 1
    if count:
        model.opset_import.append(helper.make_opsetid(_HIDDEN_DOMAIN, 1))
    return count


def _unhide_ops(model) -> None:
    for node in model.graph.node:
        if node.domain == _HIDDEN_DOMAIN and node.doc_string == _HIDDEN_MARK:
            node.domain = ""
            node.doc_string = ""
    keep = [imp for imp in model.opset_import if imp.domain != _HIDDEN_DOMAIN]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)


def rewrite_reshape_allowzero(model) -> str:
    """``Reshape(allowzero=1)`` equals ``allowzero=0`` when the constant shape has no zero.

    torch's dynamo exporter writes allowzero=1 on every Reshape; onnx2torch refuses it."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        attrs = [a for a in node.attribute if a.name == "allowzero" and a.i == 1]
        if not attrs or len(node.input) < 2 or node.input[1] not in inits:
            continue
        shape = numpy_helper.to_array(inits[node.input[1]])
        if (shape == 0).any():
            continue
        node.attribute.remove(attrs[0])
        count += 1
    return f"rewrote {count} Reshape(allowzero=1) with zero-free constant shapes" if count else ""


def explicit_auto_pad(model) -> str:
    """Replace ``auto_pad=SAME_UPPER/SAME_LOWER`` (TF exports) with explicit pads.

    Needs the input's spatial size from shape inference; nodes whose size is unknown are
    left for the converter to reject."""
    import onnx

    shapes = _value_shapes(model)
    count = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MaxPool", "AveragePool"):
            continue
        attrs = {a.name: a for a in node.attribute}
        mode = attrs.get("auto_pad")
        if mode is None or mode.s not in (b"SAME_UPPER", b"SAME_LOWER"):
            if mode is not None and mode.s == b"VALID":
                node.attribute.remove(mode)
                count += 1
            continue
        shape = shapes.get(node.input[0])
        if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape[2:]):
            continue
        spatial = shape[2:]
        if "kernel_shape" in attrs:
            kernel = list(attrs["kernel_shape"].ints)
        else:
            wshape = shapes.get(node.input[1]) if len(node.input) > 1 else None
            if wshape is None:
                continue
            kernel = list(wshape[2:])
        n = len(spatial)
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * n
        dil = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * n
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dil):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begins.append(small if mode.s == b"SAME_UPPER" else big)
            ends.append(big if mode.s == b"SAME_UPPER" else small)
        node.attribute.remove(mode)
        if "pads" in attrs:
            node.attribute.remove(attrs["pads"])
        node.attribute.append(onnx.helper.make_attribute("pads", begins + ends))
        count += 1
    return f"made {count} auto_pad attributes explicit" if count else ""


def _value_shapes(model) -> dict[str, list]:
    """Static shapes of every value (ints, or None for unknown dims) via shape inference."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a best-effort helper here
        inferred = model
    out = {}
    graph = inferred.graph
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None
                for d in vi.type.tensor_type.shape.dim
            ]
    for t in graph.initializer:
        out[t.name] = list(t.dims)
    return out


def detach_weights(model, min_bytes: int = 4096) -> dict:
    """Take large initializer payloads out of the graph while graph passes run.

    onnx's version converter and shape inference serialise the whole model (seconds per
    call for VGG-sized weights) but only need dims; :func:`attach_weights` puts them back."""
    stash = {}
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) >= min_bytes or len(tensor.float_data) * 4 >= min_bytes:
            copy = type(tensor)()
            copy.CopyFrom(tensor)
            stash[tensor.name] = copy
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
    return stash


def attach_weights(model, stash: dict) -> None:
    for tensor in model.graph.initializer:
        saved = stash.get(tensor.name)
        if saved is not None:
            tensor.CopyFrom(saved)


def infer_shapes(model):
    """Fresh shape inference (stale value_info from exporters is dropped first)."""
    import onnx

    del model.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - conversion may still succeed without it
        return model


def op_counts(model) -> Counter:
    return Counter(
        (node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}")
        for node in model.graph.node
    )
