"""Activations exporters emit that onnx2torch lacks or converts too narrowly: Gelu-20, Mish-18,
and Clip-11+ with bounds computed at run time.

Each is the ONNX definition written with torch's own activation where one matches exactly, so
rectifier rules and the non-linearity census (:mod:`xplain.graph.nonlinear`) recognise them.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from .op_registry import (
    constant_input,
    converter,
    mapping,
    present,
)


# ----------------------------------------------------------------------------- Gelu-20
@converter("Gelu", 20)
def _gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    """``Gelu(approximate='none'|'tanh')`` is exactly ``nn.GELU(approximate=...)``."""
    approximate = node.attributes.get("approximate", "none")
    if isinstance(approximate, bytes):
        approximate = approximate.decode()
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu approximate={approximate!r}")
    return OperationConverterResult(
        torch_module=nn.GELU(approximate=approximate), onnx_mapping=onnx_mapping_from_node(node)
    )


@converter("Mish", 18, 22)
def _mish(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    """``Mish(x) = x·tanh(softplus(x))`` is ``nn.Mish``."""
    return OperationConverterResult(
        torch_module=nn.Mish(), onnx_mapping=onnx_mapping_from_node(node)
    )


# ----------------------------------------------------------------------------- Clip-11+
class OnnxClipDynamic(nn.Module, OnnxToTorchModule):
    """Clip whose bounds are runtime values (``torch.clamp`` with tensor bounds)."""

    def __init__(self, has_min: bool, has_max: bool):
        super().__init__()
        self.has_min, self.has_max = has_min, has_max

    def forward(self, x: torch.Tensor, *bounds: torch.Tensor) -> torch.Tensor:
        bounds_iter = iter(bounds)
        low = next(bounds_iter).to(x.dtype) if self.has_min else None
        high = next(bounds_iter).to(x.dtype) if self.has_max else None
        return torch.clamp(x, min=low, max=high)


@converter("Clip", 11, 12, 13)
def _clip(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """onnx2torch's Clip, plus an omitted bound written as ``""`` in the middle — the classic
    exporter's ``x.clamp(max=c)`` is ``Clip(x, "", c)``, which onnx2torch read as a runtime min
    and refused — and runtime bounds. Constant bounds still give ``nn.ReLU``/``nn.ReLU6``, so
    rectifier detection sees the same modules as before."""
    from onnx2torch.node_converters.clip import OnnxClip

    min_name, max_name = present(node, 1), present(node, 2)
    low, high = constant_input(graph, min_name), constant_input(graph, max_name)
    if (min_name and low is None) or (max_name and high is None):
        runtime = [n for n in (min_name, max_name) if n]
        return OperationConverterResult(
            torch_module=OnnxClipDynamic(bool(min_name), bool(max_name)),
            onnx_mapping=mapping(node, [node.input_values[0], *runtime]),
        )
    low_v = None if low is None else float(low)
    high_v = None if high is None else float(high)
    if low_v == 0 and high_v is None:
        module: nn.Module = nn.ReLU()
    elif low_v == 0 and high_v == 6:
        module = nn.ReLU6()
    elif low_v is None and high_v is None:
        module = nn.Identity()
    else:
        module = OnnxClip(min_val=low_v, max_val=high_v)
    return OperationConverterResult(
        torch_module=module, onnx_mapping=mapping(node, [node.input_values[0]])
    )
