"""Which nodes of a converted graph carry the input's signal, and their shapes.

Every other piece of graph knowledge (layouts, feature and bias layers, non-linearities,
attention) is a question about the nodes the input's values flow through: a constant, a shape
computation or an indexing helper onnx2torch added is not part of the network's function. This
module answers that once per model, by fx shape propagation at batch 1, so the analyses built on
it stay small and can be tested on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import torch
from torch import fx, nn


class SignalGraph:
    """Shapes and signal flow of one ``fx.GraphModule`` (see the module docstring).

    ``example`` makes the batch-of-one input shape propagation runs on (on the graph's device).
    Everything but :meth:`flowing` is computed on first use and cached; :meth:`flowing` walks the
    graph each call, so bias layers found after a temporary insertion see the graph as it is."""

    def __init__(self, graph: fx.GraphModule, example: Callable[[], torch.Tensor]):
        self.graph = graph
        self._example = example

    def submodule(self, node: fx.Node) -> nn.Module:
        """The module a ``call_module`` node runs."""
        return self.graph.get_submodule(str(node.target))

    @cached_property
    def shapes(self) -> dict[str, tuple]:
        """Output ``(shape, dtype)`` of every tensor-valued node for a batch of one (ShapeProp)."""
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(self.graph).propagate(self._example())
        shapes = {}
        for node in self.graph.graph.nodes:
            meta = node.meta.get("tensor_meta")
            if meta is not None and hasattr(meta, "shape"):
                shapes[node.name] = (tuple(meta.shape), meta.dtype)
        return shapes

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name][0]

    def order(self) -> dict[fx.Node, int]:
        """Each node's position in graph order (fresh: the graph may hold a temporary insertion)."""
        return {n: i for i, n in enumerate(self.graph.graph.nodes)}

    def flowing(self) -> list[fx.Node]:
        """Nodes carrying float signal derived from the input (not constants, not shapes)."""
        reached: set[fx.Node] = set()
        out = []
        for node in self.graph.graph.nodes:
            if (
                node.op == "placeholder"
                or node.op in ("call_module", "call_function", "call_method")
                and any(a in reached for a in node.all_input_nodes)
            ):
                reached.add(node)
            else:
                continue
            shape_dtype = self.shapes.get(node.name)
            if shape_dtype is not None and shape_dtype[1].is_floating_point:
                out.append(node)
        return out

    @cached_property
    def flowing_set(self) -> set[fx.Node]:
        """Flowing nodes whose *values* depend on the input's values: a tensor's shape (Shape
        and what is computed from it, e.g. an attention scale √d) is not signal."""
        values: set[fx.Node] = set()
        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                values.add(node)
                continue
            if node.op not in ("call_module", "call_function", "call_method"):
                continue
            module = self.submodule(node) if node.op == "call_module" else None
            if type(module).__name__ in ("OnnxShape", "OnnxSize") or node.target in ("size", "dim"):
                continue
            if any(a in values for a in node.all_input_nodes):
                values.add(node)
        return values & set(self.flowing())

    def signal_inputs(self, node: fx.Node) -> list[fx.Node]:
        """The inputs of ``node`` whose values depend on the model input's values."""
        flowing = self.flowing_set
        return [a for a in node.all_input_nodes if a in flowing]

    def chain_up(self, node: fx.Node, steps: int = 8) -> list[fx.Node]:
        """``node`` and its producers while each has exactly one signal input (elementwise ops
        with constants, reshapes, transposes): where a gate or attention map comes from."""
        chain = [node]
        for _ in range(steps):
            inputs = self.signal_inputs(chain[-1])
            if len(inputs) != 1:
                break
            chain.append(inputs[0])
        return chain

    @cached_property
    def cuts(self) -> list[fx.Node]:
        """Flowing nodes that all information passes through (cut vertices), in graph order."""
        flowing = self.flowing()
        order = self.order()
        last_use = {n: max((order[u] for u in n.users), default=order[n]) for n in flowing}
        live: set[fx.Node] = set()
        cuts = []
        for node in flowing:
            live.add(node)
            live = {m for m in live if last_use[m] > order[node] or m is node}
            if live == {node} and node.op != "placeholder":
                cuts.append(node)
        return cuts

    def constant(self, arg: Any) -> torch.Tensor | None:
        """The tensor behind a get_attr/OnnxConstant argument, or None for a live signal."""
        if not isinstance(arg, fx.Node):
            return None
        if arg.op == "get_attr":
            value: Any = self.graph
            for part in str(arg.target).split("."):
                value = getattr(value, part)
            return value if isinstance(value, torch.Tensor) and value.is_floating_point() else None
        if arg.op == "call_module" and not arg.all_input_nodes:
            value = getattr(self.submodule(arg), "value", None)
            return value if isinstance(value, torch.Tensor) and value.is_floating_point() else None
        return None
