"""The ONNX graph onnxruntime runs for forward-only work: the loader's graph, logits out.

The forward engine (:mod:`xplain.onnx.engine`) must compute what the converted torch graph
computes. It starts from the loader's graph after names are sanitised, unused optional outputs
dropped and constants folded, at the file's own opset: the graph onnxruntime verified the
conversion against, modulo renaming. Not the opset-normalised graph onnx2torch converts: that one
is written for onnx2torch and onnxruntime can refuse it (a dynamo export's ReduceMean after the
down-conversion to opset 17). Two edits make it match the torch graph: only the class-score output
is kept (so onnxruntime computes no other head), and a trailing Softmax/LogSoftmax over the class
axis becomes an Identity — the loader checks that it is the one stripped from the torch graph, so
methods see logits on both engines.
"""

from __future__ import annotations

from typing import Any

#: ops a stripped softmax may be followed by on its way to the output (the torch side's list)
_PASS_THROUGH = frozenset({"Flatten", "Identity", "Reshape", "Squeeze"})


def _softmax_axis(node: Any, opset: int) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(attr.i)
    return 1 if opset < 13 else -1


def logits_graph(work: Any, output_index: int) -> tuple[bytes, str | None] | str:
    """``work`` (an ``onnx.ModelProto``, not modified) as serialised bytes with one output, the
    class scores, and a trailing Softmax/LogSoftmax over the class axis replaced by an Identity.
    Returns the bytes and the kind replaced (None: none), to be compared with what the loader
    stripped from the torch graph; or a sentence saying why there is no such graph."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(work)
    graph = proto.graph
    if not 0 <= output_index < len(graph.output):
        return "the class-score output is missing after the loader's passes"
    keep = onnx.ValueInfoProto()
    keep.CopyFrom(graph.output[output_index])
    del graph.output[:]
    graph.output.append(keep)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    producer = {out: node for node in graph.node for out in node.output}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    stripped = None
    node = producer.get(keep.name)
    while node is not None and node.op_type in _PASS_THROUGH and node.input:
        source = node.input[0]
        node = producer.get(source) if users.get(source, 0) == 1 else None
    if (
        node is not None
        and node.op_type in ("Softmax", "LogSoftmax")
        and node.domain in ("", "ai.onnx")
        and _softmax_axis(node, opset) in (1, -1)
    ):
        stripped = node.op_type
        node.op_type = "Identity"
        del node.attribute[:]
        del node.input[1:]
    return proto.SerializeToString(), stripped
