"""Converters for the ONNX ops (and op versions) that today's exporters emit and onnx2torch lacks.

torch's default exporter (``dynamo=True``) writes opset 18+; transformer-era classifiers bring
ops onnx2torch never learnt (Gelu-20) or learnt only in an older form (Reduce*-18 and Pad-18
take their axes as an input, Split-18 a ``num_outputs`` attribute, AveragePool-19 dilations,
ScatterND-18 min/max reductions). Each converter here implements the op's definition in the ONNX
operator specification, is registered in onnx2torch's own registry by
:func:`xplain.converters.register_converters`, and is checked op by op against onnxruntime in
``tests/test_op_converters.py`` (and, per model, by the loader's verification).

The modules are ordinary ``nn.Module``s built from differentiable torch ops, so gradients flow
through them like through any onnx2torch module. Where an input (axes, pads, split sizes) is a
graph initializer it is read once at conversion time; otherwise it is read at run time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

Converter = Callable[[OnnxNode, OnnxGraph], OperationConverterResult]

#: (op, since_version) -> converter; registered by xplain.converters.register_converters
CONVERTERS: dict[tuple[str, int], Converter] = {}


def _converter(op: str, *versions: int) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for version in versions:
            CONVERTERS[(op, version)] = fn
        return fn

    return deco


def _constant(graph: OnnxGraph, name: str) -> torch.Tensor | None:
    """The value of an initializer input, or None for a runtime value or an omitted input."""
    if name and name in graph.initializers:
        return graph.initializers[name].to_torch()
    return None


def _present(node: OnnxNode, index: int) -> str:
    values = node.input_values
    return values[index] if len(values) > index else ""


def _mapping(node: OnnxNode, inputs: Sequence[str]) -> OnnxMapping:
    return OnnxMapping(inputs=tuple(inputs), outputs=node.output_values)


def _ints(value: torch.Tensor | Sequence[int] | None) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


class _RuntimeOrStatic(nn.Module, OnnxToTorchModule):
    """Base for ops with an integer-list input that is usually a constant."""

    @staticmethod
    def _pick(static: list[int] | None, runtime: torch.Tensor | None) -> list[int] | None:
        return static if static is not None else _ints(runtime)


# ----------------------------------------------------------------------------- Gelu-20
@_converter("Gelu", 20)
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


@_converter("Mish", 18, 22)
def _mish(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    """``Mish(x) = x·tanh(softplus(x))`` is ``nn.Mish``."""
    return OperationConverterResult(
        torch_module=nn.Mish(), onnx_mapping=onnx_mapping_from_node(node)
    )


# ----------------------------------------------------------------------------- Reduce*-18
def _reduce_sum_square(x, dims, keep):
    return torch.sum(x * x, dim=dims, keepdim=keep)


def _reduce_log_sum(x, dims, keep):
    return torch.log(torch.sum(x, dim=dims, keepdim=keep))


def _reduce_prod(x, dims, keep):
    out = x
    for dim in sorted(dims, reverse=True):  # torch.prod takes one dim at a time
        out = torch.prod(out, dim=dim, keepdim=keep)
    return out


_REDUCTIONS: dict[str, Callable] = {
    "ReduceMean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
    "ReduceSum": lambda x, d, k: torch.sum(x, dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: torch.amax(x, dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: torch.amin(x, dim=d, keepdim=k),
    "ReduceProd": _reduce_prod,
    "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt(_reduce_sum_square(x, d, k)),
    "ReduceSumSquare": _reduce_sum_square,
    "ReduceLogSum": _reduce_log_sum,
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
}


class OnnxReduce18(_RuntimeOrStatic):
    """Reduce*-18: the axes are an (optional) input; ``noop_with_empty_axes`` decides what no
    axes means (all axes, or the identity)."""

    def __init__(self, op: str, axes: list[int] | None, keepdims: bool, noop_with_empty_axes: bool):
        super().__init__()
        self.op, self.axes, self.keepdims, self.noop = op, axes, keepdims, noop_with_empty_axes

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        chosen = self._pick(self.axes, axes)
        if not chosen:
            if self.noop:
                return x
            chosen = list(range(x.dim()))
        dims = tuple(sorted({a % x.dim() for a in chosen})) if x.dim() else ()
        return _REDUCTIONS[self.op](x, dims, self.keepdims)


def _make_reduce18(op: str) -> Converter:
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        attrs = node.attributes
        axes_name = _present(node, 1)
        axes = _constant(graph, axes_name)
        module = OnnxReduce18(
            op,
            _ints(axes),
            bool(attrs.get("keepdims", 1)),
            bool(attrs.get("noop_with_empty_axes", 0)),
        )
        inputs = [node.input_values[0]] + ([axes_name] if axes_name and axes is None else [])
        return OperationConverterResult(torch_module=module, onnx_mapping=_mapping(node, inputs))

    return convert


for _op in _REDUCTIONS:
    _converter(_op, 18)(_make_reduce18(_op))
for _op in ("ReduceMax", "ReduceMin"):
    _converter(_op, 20)(_make_reduce18(_op))  # 20 only added bool inputs


# ----------------------------------------------------------------------------- Split-18
class OnnxSplit18(_RuntimeOrStatic):
    """Split-18: sizes from the ``split`` input, else ``num_outputs`` parts of size
    ``ceil(n / num_outputs)`` with a smaller last part (the spec's uneven rule)."""

    def __init__(self, axis: int, split: list[int] | None, num_outputs: int):
        super().__init__()
        self.axis, self.split, self.num_outputs = axis, split, num_outputs

    def forward(
        self, x: torch.Tensor, split: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        sizes = self._pick(self.split, split)
        if sizes is None:
            length = x.shape[self.axis]
            step = math.ceil(length / self.num_outputs)
            sizes = [max(0, min(step, length - i * step)) for i in range(self.num_outputs)]
        return tuple(torch.split(x, sizes, dim=self.axis))


@_converter("Split", 18)
def _split18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    split_name = _present(node, 1)
    split = _constant(graph, split_name)
    module = OnnxSplit18(
        int(node.attributes.get("axis", 0)),
        _ints(split),
        int(node.attributes.get("num_outputs", len(node.output_values))),
    )
    inputs = [node.input_values[0]] + ([split_name] if split_name and split is None else [])
    return OperationConverterResult(torch_module=module, onnx_mapping=_mapping(node, inputs))


# ----------------------------------------------------------------------------- Pad-18+
class OnnxPad18(_RuntimeOrStatic):
    """Pad-18/19/21: pads for the listed ``axes`` (all by default), modes constant, reflect,
    edge and wrap; negative pads crop.

    constant mode is ``F.pad`` (any rank); the other modes gather along each axis with an index
    computed from the definition (reflect mirrors without repeating the edge, edge repeats it,
    wrap is periodic), which works on every axis, unlike ``F.pad``'s reflect/replicate/circular."""

    def __init__(
        self, mode: str, pads: list[int] | None, value: float | None, axes: list[int] | None
    ):
        super().__init__()
        self.mode, self.pads, self.value, self.axes = mode, pads, value, axes

    def forward(
        self,
        x: torch.Tensor,
        pads: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        axes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        pad_list = self._pick(self.pads, pads)
        axis_list = self._pick(self.axes, axes)
        rank = x.dim()
        axis_list = list(range(rank)) if axis_list is None else [a % rank for a in axis_list]
        count = len(axis_list)
        if pad_list is None:
            raise ValueError("Pad without pads")
        begins, ends = pad_list[:count], pad_list[count:]
        if self.mode == "constant":
            fill = (
                self.value
                if self.value is not None
                else (float(value.reshape(-1)[0]) if value is not None else 0.0)
            )
            torch_pads = [0] * (2 * rank)
            for axis, b, e in zip(axis_list, begins, ends):
                torch_pads[2 * (rank - 1 - axis)] = b
                torch_pads[2 * (rank - 1 - axis) + 1] = e
            return F.pad(x, torch_pads, mode="constant", value=fill)
        out = x
        for axis, b, e in zip(axis_list, begins, ends):
            if b == 0 and e == 0:
                continue
            n = out.shape[axis]
            index = torch.arange(-b, n + e, device=x.device)
            if self.mode == "edge":
                index = index.clamp(0, n - 1)
            elif self.mode == "wrap":
                index = index.remainder(n)
            else:  # reflect
                period = 2 * (n - 1) if n > 1 else 1
                index = index.remainder(period)
                index = torch.where(index >= n, period - index, index)
            out = out.index_select(axis, index)
        return out


@_converter("Pad", 18, 19, 21, 23, 24)
def _pad18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    mode = node.attributes.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise NotImplementedError(f"Pad mode {mode!r}")
    pads_name, value_name, axes_name = _present(node, 1), _present(node, 2), _present(node, 3)
    pads, value, axes = (
        _constant(graph, pads_name),
        _constant(graph, value_name),
        _constant(graph, axes_name),
    )
    runtime = [
        pads_name if pads is None else "",
        value_name if value_name and value is None else "",
        axes_name if axes_name and axes is None else "",
    ]
    while runtime and runtime[-1] == "":
        runtime.pop()
    fill = (
        float(value.reshape(-1)[0])
        if value is not None and value.numel()
        else (0.0 if not value_name else None)
    )
    module = OnnxPad18(mode, _ints(pads), fill, _ints(axes))
    return OperationConverterResult(
        torch_module=module, onnx_mapping=_mapping(node, [node.input_values[0], *runtime])
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


@_converter("AveragePool", 19, 22)
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
        torch_module=module, onnx_mapping=_mapping(node, [node.input_values[0]])
    )


# ----------------------------------------------------------------------------- ScatterND-18
class OnnxScatterND18(nn.Module, OnnxToTorchModule):
    """ScatterND with reduction none/add/mul/max/min (negative indices count from the end).

    The first ``k = indices.shape[-1]`` axes of ``data`` are flattened so each index tuple is one
    row; ``none`` copies rows (``index_copy``), the reductions combine with the existing row."""

    def __init__(self, reduction: str):
        super().__init__()
        self.reduction = reduction

    def forward(
        self, data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor
    ) -> torch.Tensor:
        k = indices.shape[-1]
        lead = data.shape[:k]
        idx = indices.reshape(-1, k).long()
        sizes = torch.tensor(lead, device=idx.device, dtype=torch.long)
        idx = torch.where(idx < 0, idx + sizes, idx)
        strides = torch.ones(k, dtype=torch.long, device=idx.device)
        for i in range(k - 2, -1, -1):
            strides[i] = strides[i + 1] * lead[i + 1]
        rows = (idx * strides).sum(dim=1)
        flat = data.reshape(-1, *data.shape[k:])
        values = updates.reshape(-1, *data.shape[k:]).to(data.dtype)
        if self.reduction == "none":
            out = flat.index_copy(0, rows, values)
        elif self.reduction == "add":
            out = flat.index_add(0, rows, values)
        else:
            expanded = rows.reshape(-1, *([1] * (flat.dim() - 1))).expand_as(values)
            reduce = {"mul": "prod", "max": "amax", "min": "amin"}[self.reduction]
            out = flat.scatter_reduce(0, expanded, values, reduce=reduce, include_self=True)
        return out.reshape(data.shape)


@_converter("ScatterND", 18)
def _scatter_nd18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    reduction = node.attributes.get("reduction", "none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    if reduction not in ("none", "add", "mul", "max", "min"):
        raise NotImplementedError(f"ScatterND reduction={reduction!r}")
    return OperationConverterResult(
        torch_module=OnnxScatterND18(reduction), onnx_mapping=onnx_mapping_from_node(node)
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


@_converter("LayerNormalization", 17)
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
    x_name, scale_name, bias_name = node.input_values[0], _present(node, 1), _present(node, 2)
    scale, bias = _constant(graph, scale_name), _constant(graph, bias_name)
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
        return OperationConverterResult(torch_module=module, onnx_mapping=_mapping(node, [x_name]))
    return OperationConverterResult(
        torch_module=OnnxLayerNormalization(axis, epsilon),
        onnx_mapping=_mapping(node, [n for n in node.input_values if n]),
    )


# ----------------------------------------------------------------------------- GlobalAveragePool
@_converter("GlobalAveragePool", 1, 22)
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


@_converter("Clip", 11, 12, 13)
def _clip(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """onnx2torch's Clip, plus an omitted bound written as ``""`` in the middle — the classic
    exporter's ``x.clamp(max=c)`` is ``Clip(x, "", c)``, which onnx2torch read as a runtime min
    and refused — and runtime bounds. Constant bounds still give ``nn.ReLU``/``nn.ReLU6``, so
    rectifier detection sees the same modules as before."""
    from onnx2torch.node_converters.clip import OnnxClip

    min_name, max_name = _present(node, 1), _present(node, 2)
    low, high = _constant(graph, min_name), _constant(graph, max_name)
    if (min_name and low is None) or (max_name and high is None):
        runtime = [n for n in (min_name, max_name) if n]
        return OperationConverterResult(
            torch_module=OnnxClipDynamic(bool(min_name), bool(max_name)),
            onnx_mapping=_mapping(node, [node.input_values[0], *runtime]),
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
        torch_module=module, onnx_mapping=_mapping(node, [node.input_values[0]])
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
        weight_name, bias_name = _present(node, 1), _present(node, 2)
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
