"""The registry of xplain's own ONNX op converters and the helpers they share.

A converter is registered for an ``(op, since_version)`` key with :func:`converter`;
:func:`xplain.onnx.converters.register_converters` puts every entry of :data:`CONVERTERS` into
onnx2torch's registry. The converters themselves live by idea in :mod:`.op_activations`,
:mod:`.op_axes_inputs`, :mod:`.op_pool_norm` and :mod:`.op_conv` (collected by
:mod:`.op_converters`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
)
from torch import nn

Converter = Callable[[OnnxNode, OnnxGraph], OperationConverterResult]

#: (op, since_version) -> converter; registered by xplain.converters.register_converters
CONVERTERS: dict[tuple[str, int], Converter] = {}


def converter(op: str, *versions: int) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for version in versions:
            CONVERTERS[(op, version)] = fn
        return fn

    return deco


def constant_input(graph: OnnxGraph, name: str) -> torch.Tensor | None:
    """The value of an initializer input, or None for a runtime value or an omitted input."""
    if name and name in graph.initializers:
        return graph.initializers[name].to_torch()
    return None


def present(node: OnnxNode, index: int) -> str:
    values = node.input_values
    return values[index] if len(values) > index else ""


def mapping(node: OnnxNode, inputs: Sequence[str]) -> OnnxMapping:
    return OnnxMapping(inputs=tuple(inputs), outputs=node.output_values)


def ints(value: torch.Tensor | Sequence[int] | None) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


class RuntimeOrStatic(nn.Module, OnnxToTorchModule):
    """Base for ops with an integer-list input that is usually a constant."""

    @staticmethod
    def _pick(static: list[int] | None, runtime: torch.Tensor | None) -> list[int] | None:
        return static if static is not None else ints(runtime)
