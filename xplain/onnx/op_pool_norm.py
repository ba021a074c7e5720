"""Pooling and normalisation converters: AveragePool-19 (dilations), GlobalAveragePool of any
rank, and LayerNormalization when inference left its normalised shape unknown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    constant_input,
    converter,
    mapping,
    present,
)


# ----------------------------------------------------------------------------- AveragePool-19
class OnnxAveragePool(nn.Module, OnnxToTorchModule):
    """AveragePool with any (also asymmetric) pads, ``ceil_mode`` and ``count_include_pad``.

    The window sums come from a zero-padded input pooled without padding (times the window
    size); the divisor is the same pooling over a mask of the positions that count — inside the
    input, plus the explicit pads when ``count_include_pad=1``. Windows the ceil rule adds past
    the padded input never count those extra positions. A window that would start beyond the
    input and its begin padding is dropped, as in onnxruntime and torch."""

    def __init__(
        self,
        kernel: list[int],
        strides: list[int],
        pads: list[int],
        ceil_mode: bool,
        count_include_pad: bool,
    ):
        super().__init__()
        self.kernel, self.strides, self.pads = kernel, strides, pads
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def _extra(self, sizes: Sequence[int]) -> list[int]:
        """Extra end padding so every ceil-mode window fits."""
        n = len(self.kernel)
        extra = []
        for i, size in enumerate(sizes):
            b, e, k, s = self.pads[i], self.pads[i + n], self.kernel[i], self.strides[i]
            span = size + b + e - k
            out = (-(-span // s) if self.ceil_mode else span // s) + 1
            if self.ceil_mode and (out - 1) * s >= size + b:
                out -= 1
            extra.append(max(0, (out - 1) * s + k - (size + b + e)))
        return extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.kernel)
        sizes = x.shape[2:]
        extra = self._extra(sizes)
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        torch_pads, mask_pads, ceil_pads = [], [], []
        for i in reversed(range(n)):
            b, e = self.pads[i], self.pads[i + n]
            torch_pads += [b, e + extra[i]]
            mask_pads += [b, e] if self.count_include_pad else [0, 0]
            ceil_pads += [0, extra[i]] if self.count_include_pad else [b, e + extra[i]]
        area = float(math.prod(self.kernel))
        sums = pool(F.pad(x, torch_pads), self.kernel, self.strides) * area
        if not any(torch_pads):
            return sums / area
        ones = torch.ones((1, 1, *sizes), dtype=x.dtype, device=x.device)
        mask = F.pad(
            F.pad(ones, mask_pads, value=1.0 if self.count_include_pad else 0.0), ceil_pads
        )
        counts = pool(mask, self.kernel, self.strides) * area
        return sums / counts.clamp_min(1.0)


@converter("AveragePool", 19, 22)
def _average_pool19(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    attrs = node.attributes
    kernel = list(attrs["kernel_shape"])
    n = len(kernel)
    if n not in (1, 2, 3):
        raise NotImplementedError(f"AveragePool over {n} spatial axes")
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise NotImplementedError(
            f"AveragePool auto_pad={auto_pad}"
        )  # the loader makes SAME_* explicit
    if any(d != 1 for d in attrs.get("dilations", [1] * n)):
        raise NotImplementedError("AveragePool with dilations")
    pads = list(attrs.get("pads", [0] * (2 * n))) if auto_pad == "NOTSET" else [0] * (2 * n)
    module = OnnxAveragePool(
        kernel,
        list(attrs.get("strides", [1] * n)),
        pads,
        bool(attrs.get("ceil_mode", 0)),
        bool(attrs.get("count_include_pad", 0)),
    )
    return OperationConverterResult(
        torch_module=module, onnx_mapping=mapping(node, [node.input_values[0]])
    )


# ----------------------------------------------------------------------------- LayerNormalization
class OnnxLayerNormalization(nn.Module, OnnxToTorchModule):
    """LayerNormalization over the axes from ``axis`` to the end, with a scale (and bias) that
    only has to broadcast against them.

    Used when ``nn.LayerNorm`` cannot express the node: runtime scale/bias, or a scale whose
    shape is not the normalised shape."""

    def __init__(self, axis: int, epsilon: float):
        super().__init__()
        self.axis, self.epsilon = axis, epsilon

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        dims = tuple(range(self.axis % x.dim(), x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
        out = (x - mean) * torch.rsqrt(var + self.epsilon) * scale
        return out + bias if bias is not None else out


def _input_rank(graph: OnnxGraph, name: str) -> int | None:
    info = graph.value_info.get(name)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)


@converter("LayerNormalization", 17)
def _layer_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """onnx2torch's own converter takes ``normalized_shape`` from the inferred input shape, which
    is wrong whenever inference left a dim unknown (e.g. Swin's windows, classic exporter:
    "LayerNorm weight shape [384] vs normalized_shape"). The normalised rank is known from
    ``axis`` (negative) or the input rank; the scale's own shape then gives ``nn.LayerNorm``."""
    attrs = node.attributes
    axis = int(attrs.get("axis", -1))
    epsilon = float(attrs.get("epsilon", 1e-5))
    if len(node.output_values) > 1:  # the loader drops them when nothing reads them
        raise NotImplementedError("LayerNormalization with its Mean/InvStdDev outputs in use")
    x_name, scale_name, bias_name = node.input_values[0], present(node, 1), present(node, 2)
    scale, bias = constant_input(graph, scale_name), constant_input(graph, bias_name)
    rank = _input_rank(graph, x_name)
    normalized = -axis if axis < 0 else (rank - axis if rank is not None else None)
    if (
        scale is not None
        and (bias is not None or not bias_name)
        and normalized is not None
        and scale.dim() == normalized
        and (bias is None or bias.shape == scale.shape)
    ):
        module = nn.LayerNorm(
            tuple(scale.shape), eps=epsilon, elementwise_affine=True, bias=bias is not None
        )
        with torch.no_grad():
            module.weight.copy_(scale)
            if bias is not None:
                module.bias.copy_(bias)
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, [x_name]))
    return OperationConverterResult(
        torch_module=OnnxLayerNormalization(axis, epsilon),
        onnx_mapping=mapping(node, [n for n in node.input_values if n]),
    )


# ----------------------------------------------------------------------------- GlobalAveragePool
@converter("GlobalAveragePool", 1, 22)
def _global_average_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """onnx2torch's converter reads the input's rank from the inferred shape and, when shape
    inference left the input untyped, takes the empty dim list for rank 0: the mean then runs
    over *no* listed axis, which torch reads as every axis, and a B×C×H×W map becomes 1×1×1×1.
    timm's BiT ResNetV2 exported by the classic exporter hit this (its weight standardisation is a
    training-mode BatchNormalization that shape inference stops at, so nothing after it is typed;
    the head's 1×1 conv then failed on "expected input[1, 1, 1, 1] to have 2048 channels"). With
    a typed input of rank >= 3 the fixed-axes module is kept; otherwise the axes are taken from
    the tensor at run time (every axis after the channel one, the op's definition)."""
    from onnx2torch.node_converters.global_average_pool import (
        OnnxGlobalAveragePool,
        OnnxGlobalAveragePoolWithKnownInputShape,
    )

    rank = _input_rank(graph, node.input_values[0])
    module: nn.Module
    if rank is not None and rank >= 3:
        module = OnnxGlobalAveragePoolWithKnownInputShape([0] * rank)
    else:
        module = OnnxGlobalAveragePool()
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
