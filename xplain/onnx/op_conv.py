"""Conv whose weight is computed in the graph (a weight-standardised conv, a dynamic kernel):
onnx2torch only converts constant weights; the functional form here takes the weight as an
input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from .op_registry import (
    Converter,
    present,
)


# ----------------------------------------------------------------------------- Conv with computed weights
class OnnxConvRuntimeWeight(nn.Module, OnnxToTorchModule):
    """Conv whose weight (and bias) are computed in the graph — weight standardisation (timm's
    StdConv2d in ResNetV2/BiT, NFNets) exports the standardised kernel as a subgraph, and
    onnx2torch's converter only reads initializers."""

    def __init__(self, strides: list[int], pads: list[int], dilations: list[int], groups: int):
        super().__init__()
        self.strides, self.pads, self.dilations, self.groups = strides, pads, dilations, groups

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        n = weight.dim() - 2
        begins, ends = self.pads[:n], self.pads[n:]
        if begins != ends:
            torch_pads = [p for i in reversed(range(n)) for p in (begins[i], ends[i])]
            x, padding = F.pad(x, torch_pads), [0] * n
        else:
            padding = begins
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
        return conv(x, weight, bias, self.strides, padding, self.dilations, self.groups)


def conv_with_runtime_weight(base: Converter) -> Converter:
    """onnx2torch's Conv converter for constant weights, :class:`OnnxConvRuntimeWeight` otherwise."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        weight_name, bias_name = present(node, 1), present(node, 2)
        if weight_name in graph.initializers and (not bias_name or bias_name in graph.initializers):
            return base(node, graph)
        attrs = node.attributes
        auto_pad = attrs.get("auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad not in ("NOTSET", "VALID"):
            raise NotImplementedError(f"Conv with a computed weight and auto_pad={auto_pad}")
        info = graph.value_info.get(weight_name)
        rank = (
            len(info.type.tensor_type.shape.dim)
            if info is not None and info.type.tensor_type.HasField("shape")
            else len(attrs.get("kernel_shape", [])) + 2
        )
        n = rank - 2
        if n not in (1, 2, 3):
            raise NotImplementedError("Conv with a computed weight of unknown rank")
        pads = list(attrs.get("pads", [0] * (2 * n))) if auto_pad == "NOTSET" else [0] * (2 * n)
        module = OnnxConvRuntimeWeight(
            list(attrs.get("strides", [1] * n)),
            pads,
            list(attrs.get("dilations", [1] * n)),
            int(attrs.get("group", 1)),
        )
        return OperationConverterResult(
            torch_module=module, onnx_mapping=onnx_mapping_from_node(node)
        )

    return convert
