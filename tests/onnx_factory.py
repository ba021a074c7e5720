"""Small ONNX-building helpers for the bad-input and security tests.

Every builder returns an ``onnx.ModelProto`` (never touching disk); :func:`save` writes one.
The default model is a tiny classifier::

    x [N,3,8,8] -> Conv(4, 3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y [N,4]

small enough that loading + verifying it against onnxruntime takes well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
C, H, W, K = 3, 8, 8, 4  # input channels, height, width; classes


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    """The tiny classifier's parameters (float32), keyed by their default initializer names."""
    g = _rng(seed)
    return {
        "conv_w": (g.standard_normal((K, C, 3, 3)) * 0.3).astype(np.float32),
        "conv_b": (g.standard_normal(K) * 0.1).astype(np.float32),
        "fc_w": (g.standard_normal((K, K)) * 0.5).astype(np.float32),
        "fc_b": (g.standard_normal(K) * 0.1).astype(np.float32),
    }


def tensor_info(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def make_model(
    nodes,
    inputs,
    outputs,
    initializers=(),
    *,
    opset: int = OPSET,
    extra_opsets=(),
    ir_version: int = IR_VERSION,
    sparse_initializers=(),
) -> onnx.ModelProto:
    """Wrap graph parts into a model with the given default-domain opset (+ ``(domain, ver)`` pairs)."""
    graph = helper.make_graph(
        list(nodes),
        "g",
        list(inputs),
        list(outputs),
        list(initializers),
        sparse_initializer=list(sparse_initializers),
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="xplain-tests")
    model.ir_version = ir_version
    return model


def classifier_nodes(extra_relu: bool = False) -> list[onnx.NodeProto]:
    """The tiny classifier's nodes (optionally a second Relu after the first), with default names."""
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    last = "r"
    if extra_relu:
        nodes.append(helper.make_node("Relu", ["r"], ["r2"], name="relu2"))
        last = "r2"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    return nodes


def classifier(*, batch="N", extra_relu: bool = False, seed: int = 0) -> onnx.ModelProto:
    """The tiny valid classifier. ``batch``: a dim_param name (dynamic) or a fixed int."""
    inits = [numpy_helper.from_array(a, name) for name, a in weights(seed).items()]
    return make_model(
        classifier_nodes(extra_relu),
        [tensor_info("x", [batch, C, H, W])],
        [tensor_info("y", [batch, K])],
        inits,
    )


def rename_values(model: onnx.ModelProto, mapping: dict[str, str]) -> onnx.ModelProto:
    """Rename values/initializers everywhere (inputs, outputs, value_info, node inputs/outputs)."""
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = mapping.get(vi.name, vi.name)
    for t in g.initializer:
        t.name = mapping.get(t.name, t.name)
    for node in g.node:
        for i, name in enumerate(node.input):
            node.input[i] = mapping.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = mapping.get(name, name)
    return model


def set_node_names(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Give the graph's nodes these names, in order ("" = unnamed)."""
    assert len(names) == len(model.graph.node), (len(names), len(model.graph.node))
    for node, name in zip(model.graph.node, names):
        node.name = name
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Serialise ``model`` to ``path`` (parents created) without any external-data handling."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


# ------------------------------------------------------------------------------ bad models
#: shape-safe ops (N×C×H×W in, N×C×h×w out, default attributes valid at opset 13) that a
#: converter may or may not exist for; tests pick the ones ``unsupported_ops`` reports missing
UNSUPPORTED_CANDIDATES = (
    "GlobalMaxPool",
    "ThresholdedRelu",
    "Shrink",
    "GlobalLpPool",
    "Hardmax",
    "LpNormalization",
    "MeanVarianceNormalization",
)


def single_op_model(op: str, domain: str = "") -> onnx.ModelProto:
    """A one-node model (not necessarily a valid classifier) for probing converter coverage."""
    extra = [(domain, 1)] if domain else []
    return make_model(
        [helper.make_node(op, ["x"], ["y"], domain=domain)],
        [tensor_info("x", ["N", C, H, W])],
        [tensor_info("y", None)],
        extra_opsets=extra,
    )


def unsupported_ops_model(
    twice: str = "GlobalMaxPool", once: str = "ThresholdedRelu"
) -> onnx.ModelProto:
    """A classifier-shaped graph with ops onnx2torch may lack: ``twice`` two times, ``once``
    once, and a custom ``com.example.Foo`` once; the ops around them are convertible::

        Conv -> twice -> twice -> once -> GlobalAveragePool -> com.example.Foo -> Flatten -> Gemm
    """
    w = weights()
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(twice, ["c"], ["a1"], name="twice_1"),
        helper.make_node(twice, ["a1"], ["a2"], name="twice_2"),
        helper.make_node(once, ["a2"], ["b"], name="once"),
        helper.make_node("GlobalAveragePool", ["b"], ["g"], name="gap"),
        helper.make_node("Foo", ["g"], ["gf"], name="foo", domain="com.example"),
        helper.make_node("Flatten", ["gf"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    inits = [numpy_helper.from_array(w[n], n) for n in ("conv_w", "conv_b", "fc_w", "fc_b")]
    return make_model(
        nodes,
        [tensor_info("x", ["N", C, H, W])],
        [tensor_info("y", ["N", K])],
        inits,
        extra_opsets=[("com.example", 1)],
    )


def undefined_input_model() -> onnx.ModelProto:
    """The classifier with its Relu reading a value nothing defines (fails onnx's checker)."""
    model = classifier()
    model.graph.node[1].input[0] = "nowhere"
    return model


def wrong_attribute_type_model() -> onnx.ModelProto:
    """The classifier with Conv's ``pads`` given as a string (fails onnx's checker)."""
    model = classifier()
    conv = model.graph.node[0]
    del conv.attribute[:]
    conv.attribute.append(helper.make_attribute("pads", "1,1,1,1"))
    return model


def rank3_input_model() -> onnx.ModelProto:
    """B×C×L input (a 1-D signal model), B×K output."""
    g = _rng()
    inits = [
        numpy_helper.from_array((g.standard_normal((K, C * 8))).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(K, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    return make_model(nodes, [tensor_info("x", ["N", C, 8])], [tensor_info("y", ["N", K])], inits)


def rank4_output_model() -> onnx.ModelProto:
    """B×C×H×W in, B×K×H×W out (a segmentation-style head, not a classifier)."""
    w = weights()
    inits = [
        numpy_helper.from_array(w["conv_w"], "conv_w"),
        numpy_helper.from_array(w["conv_b"], "conv_b"),
    ]
    nodes = [helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["y"], pads=[1, 1, 1, 1])]
    return make_model(
        nodes, [tensor_info("x", ["N", C, H, W])], [tensor_info("y", ["N", K, H, W])], inits
    )


def two_inputs_model() -> onnx.ModelProto:
    """Two float image inputs added together before the classifier body."""
    model = classifier()
    model.graph.input.append(tensor_info("x2", ["N", C, H, W]))
    model.graph.node.insert(0, helper.make_node("Add", ["x", "x2"], ["xs"], name="add"))
    model.graph.node[1].input[0] = "xs"
    return model


def sparse_initializer_model() -> onnx.ModelProto:
    """The classifier plus an (unused by the op graph) sparse initializer feeding an Add."""
    model = classifier()
    values = numpy_helper.from_array(np.array([1.0], np.float32), "sp")
    indices = numpy_helper.from_array(np.array([0], np.int64), "sp_idx")
    sparse = helper.make_sparse_tensor(values, indices, [K])
    model.graph.sparse_initializer.append(sparse)
    model.graph.node[-1].output[0] = "y0"
    model.graph.node.append(helper.make_node("Add", ["y0", "sp"], ["y"], name="add_sparse"))
    return model


# ------------------------------------------------------------------------------ external data
def externalize(
    tensor: onnx.TensorProto, location: str, offset=None, length=None, **extra
) -> onnx.TensorProto:
    """Turn ``tensor`` into an external-data reference (its payload is dropped from the proto).

    ``offset``/``length`` are written verbatim as strings (so ``"-4"`` or ``"abc"`` work)."""
    entries = {"location": location}
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    entries.update({k: str(v) for k, v in extra.items()})
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    del tensor.external_data[:]
    for key, value in entries.items():
        e = tensor.external_data.add()
        e.key, e.value = key, value
    tensor.data_location = TensorProto.EXTERNAL
    return tensor


def external_classifier(
    location: str = "weights.bin", offset=None, length=None, **extra
) -> onnx.ModelProto:
    """The classifier with ``conv_w`` (432 bytes) stored as external data at ``location``."""
    model = classifier()
    conv_w = next(t for t in model.graph.initializer if t.name == "conv_w")
    externalize(conv_w, location, offset, length, **extra)
    return model


def conv_w_bytes(seed: int = 0) -> bytes:
    """The raw little-endian bytes of ``conv_w`` (what an external file must contain)."""
    return weights(seed)["conv_w"].astype("<f4").tobytes()


# ------------------------------------------------------------------------------ CLI checking
def cli_error(capsys, argv: list[str], code: int, *fragments: str) -> str:
    """Run ``xplain.cli.app.main(argv)`` and check the one-line error contract; returns the line.

    The return value must be ``code``; stderr must hold exactly one non-empty line, starting
    with ``xplain: error:``, with no traceback, containing every fragment (the file's path
    is passed as a fragment by callers)."""
    from xplain.cli.app import main

    capsys.readouterr()  # drop anything printed before
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    line = lines[0]
    assert line.startswith("xplain: error: "), line
    for fragment in fragments:
        assert str(fragment) in line, f"{fragment!r} not in {line!r}"
    assert rc == code, f"exit code {rc}, expected {code}: {line}"
    assert "\n" not in line and "\r" not in line
    return line


def external_constant_classifier(location: str, **kw) -> onnx.ModelProto:
    """The classifier with ``fc_b`` held by a ``Constant`` node whose tensor is external data."""
    model = classifier()
    fc_b = next(t for t in model.graph.initializer if t.name == "fc_b")
    value = onnx.TensorProto()
    value.CopyFrom(fc_b)
    value.name = ""
    model.graph.initializer.remove(fc_b)
    externalize(value, location, **kw)
    model.graph.node.insert(
        0, helper.make_node("Constant", [], ["fc_b"], name="const", value=value)
    )
    return model


def external_subgraph_classifier(location: str) -> onnx.ModelProto:
    """The classifier plus an ``If`` whose branches hold an external-data ``Constant``.

    The If's output is unused; only the loader's walk into subgraphs is being tested."""
    model = classifier()

    def branch(tag: str) -> onnx.GraphProto:
        t = numpy_helper.from_array(np.zeros(K, np.float32), "")
        externalize(t, location)
        const = helper.make_node("Constant", [], [f"b_{tag}"], value=t)
        return helper.make_graph([const], f"branch_{tag}", [], [tensor_info(f"b_{tag}", [K])])

    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(
        helper.make_node(
            "If",
            ["cond"],
            ["unused"],
            name="if",
            then_branch=branch("then"),
            else_branch=branch("else"),
        )
    )
    return model
