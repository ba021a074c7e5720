"""Layer names users know: the exporter's ONNX node names shown beside xplain's safe ids, and
accepted wherever a layer is named (``-p layer=``).

The model's node names are what a user sees in Netron or in torch's exporter output; one of
them carries a terminal escape sequence, a newline and rich markup (file content is untrusted:
it must be shown escaped, never emitted raw or interpreted).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import xplain
from xplain.cli.app import main
from xplain.output.display import display_name

CONV1, RELU1 = "/features/features.0/Conv", "/features/features.1/Relu"
CONV2 = "/features/features.2/Conv"
EVIL = "\x1b[31mred\x1b[0m\nsecond line [bold]markup[/bold]"
RELU2 = "relu two"


@pytest.fixture(scope="module")
def named_model_path(tmp_path_factory):
    """conv → relu → conv(EVIL) → relu → global pool → flatten → gemm; 3×8×8 in, 4 classes."""
    gen = np.random.default_rng(0)
    inits = {
        "w1": gen.standard_normal((4, 3, 3, 3)) * 0.3,
        "b1": gen.standard_normal(4) * 0.1,
        "w2": gen.standard_normal((6, 4, 3, 3)) * 0.3,
        "b2": gen.standard_normal(6) * 0.1,
        "wf": gen.standard_normal((4, 6)) * 0.3,
        "bf": gen.standard_normal(4) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name=CONV1, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name=RELU1),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name=EVIL, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name=RELU2),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["g"], ["f"], name="/Flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="/classifier/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "named",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("names") / "named.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def named_model(named_model_path):
    return xplain.load_model(named_model_path)


def _safe_id(model, original):
    ids = [n.name for n in model.graph.graph.nodes if model.onnx_name(n.name) == original]
    assert len(ids) == 1, ids
    return ids[0]


def test_onnx_names_map_to_safe_ids(named_model):
    conv1 = _safe_id(named_model, CONV1)
    assert conv1 != CONV1 and conv1.isidentifier()  # still sanitised
    assert named_model.node(CONV1) is named_model.node(conv1)
    assert isinstance(named_model.module(CONV1), torch.nn.Conv2d)
    assert named_model.module(EVIL) is named_model.module(_safe_id(named_model, EVIL))


def test_unknown_names_are_usage_errors_shown_escaped(named_model):
    with pytest.raises(xplain.UsageError) as info:
        named_model.node("nope\x1b[2J")
    assert "\x1b" not in str(info.value) and "\\x1b" in str(info.value)


@pytest.mark.parametrize("method", ["grad-cam", "iba"])
def test_layer_param_accepts_either_name(named_model, method):
    """The same map whether the layer is given by its safe id or by the exporter's name."""
    x = named_model.example_input(2, seed=3)
    for original in (RELU1, EVIL):
        by_id = xplain.explain(
            named_model, x, method=method, params={"layer": _safe_id(named_model, original)}
        )
        by_name = xplain.explain(named_model, x, method=method, params={"layer": original})
        torch.testing.assert_close(by_name.maps, by_id.maps, rtol=0, atol=0)
    first = xplain.explain(named_model, x, method="grad-cam", params={"layer": RELU1}).maps
    second = xplain.explain(named_model, x, method="grad-cam", params={"layer": EVIL}).maps
    assert not torch.allclose(first, second)  # the name really selected a different layer


def test_inspect_json_shows_original_names(named_model_path, capsys):
    assert main(["inspect", str(named_model_path), "--json"]) == 0
    raw = capsys.readouterr().out
    assert "\x1b" not in raw  # JSON escapes control characters
    data = json.loads(raw)
    by_layer = {f["onnx_name"]: f["layer"] for f in data["feature_layers"]}
    assert by_layer == {
        CONV1: "n00000_conv",
        RELU1: "n00001_relu",
        EVIL: "n00002_conv",
        RELU2: "n00003_relu",
    }
    names = {a["onnx_name"] for a in data["activations"]}
    assert names == {RELU1, RELU2}
    bias = {b["onnx_name"] for b in data["bias_layers"]}
    assert {CONV1, EVIL} <= bias
    for entry in data["activations"] + data["feature_layers"]:
        model_id = entry["layer"]
        assert model_id.isidentifier()


def test_inspect_table_escapes_names(named_model_path, capsys):
    assert main(["inspect", str(named_model_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "second line" not in out.split("\n")[0]
    # the feature-layer table shows the exporter's names, control characters escaped
    assert RELU1 in out or display_name(EVIL)[1:30] in out
    assert "\\x1b[31mred" in out.replace("\\\\", "\\")
    assert "[bold]markup[/bold]" in out  # markup shown literally, not interpreted


def test_display_name_escapes_and_cuts():
    assert display_name("a\x1b[0m\n\u202eb") == "'a\\x1b[0m\\x0a\\u202eb'"
    assert display_name("Stage 中文") == "'Stage 中文'"
    assert len(display_name("x" * 500)) <= 82
