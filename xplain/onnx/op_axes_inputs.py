"""Ops whose axes, pads or split sizes became *inputs* in opset 18 (Reduce*-18, Split-18,
Pad-18+), and ScatterND-18's min/max reductions.

onnx2torch learnt these ops in their attribute form; here the integer list is read once at
conversion time when it is an initializer (:class:`~.op_registry.RuntimeOrStatic`), otherwise
at run time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
    RuntimeOrStatic,
    constant_input,
    converter,
    ints,
    mapping,
    present,
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


class OnnxReduce18(RuntimeOrStatic):
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
        axes_name = present(node, 1)
        axes = constant_input(graph, axes_name)
        module = OnnxReduce18(
            op,
            ints(axes),
            bool(attrs.get("keepdims", 1)),
            bool(attrs.get("noop_with_empty_axes", 0)),
        )
        inputs = [node.input_values[0]] + ([axes_name] if axes_name and axes is None else [])
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, inputs))

    return convert


for _op in _REDUCTIONS:
    converter(_op, 18)(_make_reduce18(_op))
for _op in ("ReduceMax", "ReduceMin"):
    converter(_op, 20)(_make_reduce18(_op))  # 20 only added bool inputs


# ----------------------------------------------------------------------------- Split-18
class OnnxSplit18(RuntimeOrStatic):
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


@converter("Split", 18)
def _split18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    split_name = present(node, 1)
    split = constant_input(graph, split_name)
    module = OnnxSplit18(
        int(node.attributes.get("axis", 0)),
        ints(split),
        int(node.attributes.get("num_outputs", len(node.output_values))),
    )
    inputs = [node.input_values[0]] + ([split_name] if split_name and split is None else [])
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, inputs))


# ----------------------------------------------------------------------------- Pad-18+
class OnnxPad18(RuntimeOrStatic):
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


@converter("Pad", 18, 19, 21, 23, 24)
def _pad18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    mode = node.attributes.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise NotImplementedError(f"Pad mode {mode!r}")
    pads_name, value_name, axes_name = present(node, 1), present(node, 2), present(node, 3)
    pads, value, axes = (
        constant_input(graph, pads_name),
        constant_input(graph, value_name),
        constant_input(graph, axes_name),
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
    module = OnnxPad18(mode, ints(pads), fill, ints(axes))
    return OperationConverterResult(
        torch_module=module, onnx_mapping=mapping(node, [node.input_values[0], *runtime])
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


@converter("ScatterND", 18)
def _scatter_nd18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    reduction = node.attributes.get("reduction", "none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    if reduction not in ("none", "add", "mul", "max", "min"):
        raise NotImplementedError(f"ScatterND reduction={reduction!r}")
    return OperationConverterResult(
        torch_module=OnnxScatterND18(reduction), onnx_mapping=onnx_mapping_from_node(node)
    )
