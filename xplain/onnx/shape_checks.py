"""Shapes that depend on values: checked when a converted node is about to allocate.

Static bounds (ONNX shape inference at load, :func:`xplain.onnx.loader._check_tensor_sizes`) see
only shapes that are constants. A graph can compute a shape from its input's *values*
(``ConstantOfShape(Cast(Abs(ReduceMax(x)) * 1e5))``), from a large initializer or a sliced
shape; on random verification inputs it stays small and on a real photo it asks for 80,000²
floats. :func:`install_shape_checks` puts a forward pre-hook on every converted module whose
output size comes from its inputs' values (ConstantOfShape, Expand, Range, Tile): before it
allocates, the output's bytes are computed from the actual arguments and refused (a
:class:`ModelError`, exit 3, naming the model file and the node) above
``max(256 MiB, 16 × the current input batch)``, the bound verification applies statically.
The process-wide bound (many tensors each under this one) is :mod:`xplain.run.memory`.
"""

from __future__ import annotations

import math

from ..errors import ModelError
from ..untrusted import printable

#: per-node bound, as in verification (xplain.onnx.loader)
MIN_NODE_BYTES = 256 * 2**20
NODE_FACTOR = 16


class _Budget:
    """What the hooks of one graph share: the model file and the bytes of the current input."""

    def __init__(self, path: str, input_bytes: int):
        self.path = path
        self.input_bytes = input_bytes

    def limit(self) -> int:
        return max(MIN_NODE_BYTES, NODE_FACTOR * self.input_bytes)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _numel(shape) -> int:
    return math.prod(int(d) for d in shape) if len(shape) else 1


def _as_shape(value) -> list[int]:
    import torch

    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def _broadcast(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + a, [1] * (n - len(b)) + b
    return [max(x, y) if min(x, y) in (0, 1) else x for x, y in zip(a, b)]


def _scalar(value) -> float:
    import torch

    return float(value.reshape(-1)[0]) if isinstance(value, torch.Tensor) else float(value)


def _output_bytes(kind: str, module, args) -> tuple[int, list[int]]:
    """(bytes, shape) the module is about to allocate, from its actual arguments."""
    import torch

    if kind == "ConstantOfShape":
        shape = _as_shape(args[0])
        item = module.value.element_size()
    elif kind == "Expand":
        shape = _broadcast(list(args[0].shape), _as_shape(args[1]))
        item = args[0].element_size()
    elif kind == "Tile":
        repeats = _as_shape(args[1])
        base = list(args[0].shape)
        base = [1] * (len(repeats) - len(base)) + base
        repeats = [1] * (len(base) - len(repeats)) + repeats
        shape = [b * r for b, r in zip(base, repeats)]
        item = args[0].element_size()
    else:  # Range
        start, limit, delta = (_scalar(a) for a in args[:3])
        count = (
            0
            if delta == 0 or not math.isfinite((limit - start) / delta)
            else (max(0, math.ceil((limit - start) / delta)))
        )
        shape = [count]
        item = (
            8
            if all(
                isinstance(a, int) or (isinstance(a, torch.Tensor) and not a.is_floating_point())
                for a in args[:3]
            )
            else 4
        )
    if any(d < 0 for d in shape):
        return 0, shape  # torch refuses negative sizes itself
    return _numel(shape) * item, shape


def _checker(kind: str, name: str, budget: _Budget):
    def check(module, args):
        try:
            need, shape = _output_bytes(kind, module, args)
        except (TypeError, ValueError, IndexError, OverflowError, RuntimeError):
            return None  # the module's own forward reports malformed arguments
        if need > budget.limit():
            raise ModelError(
                f"{kind} node {printable(repr(name))} would allocate {need / 2**20:.0f} MiB "
                f"(shape {printable(shape[:8])}) for an input of {_size(budget.input_bytes)}, "
                f"more than {budget.limit() / 2**20:.0f} MiB: a shape computed from the "
                "input's values; refused",
                path=budget.path,
            )
        return None

    return check


def install_shape_checks(gm, path, input_bytes: int, names: dict | None = None) -> int:
    """Hook every value-shaped module of ``gm``; returns how many. ``input_bytes``: one sample's
    input (the root hook then tracks the actual batch); ``names``: sanitised -> original names."""
    from onnx2torch.node_converters.constant_of_shape import OnnxConstantOfShape
    from onnx2torch.node_converters.expand import OnnxExpand
    from onnx2torch.node_converters.range import OnnxRange
    from onnx2torch.node_converters.tile import OnnxTile

    kinds = {
        OnnxConstantOfShape: "ConstantOfShape",
        OnnxExpand: "Expand",
        OnnxRange: "Range",
        OnnxTile: "Tile",
    }
    budget = _Budget(str(path), input_bytes)
    count = 0
    for name, module in gm.named_modules():
        kind = kinds.get(type(module))
        if kind is None:
            continue
        shown = (names or {}).get(name) or name
        module.register_forward_pre_hook(_checker(kind, shown, budget))
        count += 1
    if count:
        import torch

        def track(module, args):
            if args and isinstance(args[0], torch.Tensor):
                budget.input_bytes = int(args[0].numel()) * int(args[0].element_size())

        gm.register_forward_pre_hook(track)
    return count
