"""onnx2torch's two torchvision converters are imported only when a graph has their op
(start-up, issue 29): a fresh process that loads and explains a classifier never imports
torchvision, and a NonMaxSuppression / RoiAlign graph still converts with onnx2torch's own
converters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "sample_models" / "digits_cnn.onnx"

LOAD = f"""
import sys

import xplain
model = xplain.load_model({str(SAMPLE)!r})
x = model.example_input()
xplain.explain(model, x, method="saliency")
print("torchvision" in sys.modules, "torch._dynamo" in sys.modules)
"""

NMS = """
import sys
import onnx
from onnx import TensorProto, helper
import xplain.onnx  # installs the deferral
import onnx2torch
from onnx2torch.node_converters import registry
assert "torchvision" not in sys.modules
key = registry.OperationDescription("", "NonMaxSuppression", 11)
assert getattr(registry._CONVERTER_REGISTRY[key], "__xplain_deferred__", False)
node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "most", "iou"], ["selected"])
limits = [helper.make_tensor("most", TensorProto.INT64, [1], [10]),
          helper.make_tensor("iou", TensorProto.FLOAT, [1], [0.5])]
graph = helper.make_graph(
    [node], "nms",
    [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, 4]),
     helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 3])],
    [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
    initializer=limits,
)
proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
gm = onnx2torch.convert(proto)
import torch
boxes = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1.01], [2, 2, 3, 3]]], dtype=torch.float32)
scores = torch.tensor([[[0.9, 0.8, 0.7]]])
out = gm(boxes, scores)
kinds = {type(m).__name__ for m in gm.modules()}
real = registry._CONVERTER_REGISTRY[key]
print("torchvision" in sys.modules, "OnnxNonMaxSuppression" in kinds, out.shape[0],
      getattr(real, "__xplain_deferred__", False),
      onnx2torch.node_converters.nms.OnnxNonMaxSuppression.__module__)
"""


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split("\n")[-2]


def test_loading_and_explaining_never_import_torchvision():
    assert _run(LOAD) == "False False"


def test_nms_graph_converts_with_onnx2torchs_own_converter():
    # boxes 0 and 1 overlap (IoU 0.99 > 0.5): NMS keeps boxes 0 and 2; the module is
    # onnx2torch's class, the deferred converter replaced by the real one
    assert _run(NMS) == "True True 2 False onnx2torch.node_converters.nms"
