"""A model cut in two at one layer, so a method that optimises there runs only the second half.

IBA and InputIBA optimise a bottleneck at a feature layer for many steps; running the prefix
(input → layer) once and only the suffix per step is what keeps them fast. The cut copies the
fx graph into two new ``GraphModule``s that share the model's modules, so the model itself is
never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

if TYPE_CHECKING:
    from .model import Model


class GraphSplit:
    """A model cut after fx node ``layer``: ``prefix(x) -> [R, *rest]`` and
    ``suffix(R, rest) -> logits`` (made by :meth:`Model.split_at`).

    ``rest`` are the other prefix values the suffix reads (usually none; e.g. a dynamic
    Reshape's shape). Both halves are fresh ``GraphModule``s that share the model's submodules;
    on a graph fixed at batch 1 they run row by row."""

    def __init__(self, model: Model, layer: str):
        self.model = model
        graph = model.graph.graph
        target = model.node(layer)
        nodes = list(graph.nodes)
        cut = nodes.index(target)
        before, after = nodes[: cut + 1], nodes[cut + 1 :]
        later = set(after)
        boundary = [target] + [
            n
            for n in before
            if n is not target and n.op != "get_attr" and any(u in later for u in n.users)
        ]
        self.layer = target.name
        self.fixed_batch = model.spec.fixed_batch
        #: the layer's layout (tokens, channels-last or B×C×H×W; None when not spatial): the
        #: bottleneck acts on the tensor as it is, smoothing and the map use its spatial view
        self.feature = model.feature_layer(self.layer)

        pre = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in before:
            env[node] = pre.node_copy(node, lambda n: env[n])
        pre.output(tuple(env[n] for n in boundary))
        self._prefix = self._module(pre)

        post = fx.Graph()
        env = {n: post.placeholder(f"cut_{i}") for i, n in enumerate(boundary)}
        for node in after:
            for arg in node.all_input_nodes:  # constants the suffix reads are copied over
                if arg not in env and arg.op == "get_attr":
                    env[arg] = post.node_copy(arg, lambda n: env[n])
            env[node] = post.node_copy(node, lambda n: env[n])
        self._suffix = self._module(post)
        self.extra = len(boundary) - 1

    def _module(self, graph: fx.Graph) -> fx.GraphModule:
        module = fx.GraphModule(self.model.graph, graph)
        module.graph.eliminate_dead_code()
        module.recompile()
        return module

    def prefix(self, x: torch.Tensor) -> list[Any]:
        """``[R, *rest]`` for a batch (row by row on a graph fixed at batch 1)."""
        if not self.fixed_batch or x.shape[0] == 1:
            return list(self._prefix(x))
        rows = [self._prefix(xi) for xi in x.split(1)]
        return [
            torch.cat([r[i] for r in rows]) if isinstance(rows[0][i], torch.Tensor) else rows[0][i]
            for i in range(len(rows[0]))
        ]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output R for a batch."""
        return self.prefix(x)[0]

    def suffix(self, z: torch.Tensor, rest: Sequence[Any] = ()) -> torch.Tensor:
        """Logits from the layer's (possibly modified) output ``z``."""
        if not self.fixed_batch or z.shape[0] == 1:
            return self._suffix(z, *rest)
        n = z.shape[0]

        def row(i: int) -> list[Any]:
            return [
                v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
                for v in rest
            ]

        return torch.cat([self._suffix(z[i : i + 1], *row(i)) for i in range(n)])
