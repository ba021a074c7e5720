"""Layer names: the safe fx ids the loader gave every node, and the ONNX names behind them.

Node names are replaced by safe identifiers before conversion (they reach generated Python
code), but users know the exporter's names (``/blocks/blocks.3/Add``). Every ``--layer``
option and every method parameter naming a layer goes through :meth:`NodeNames.node`, so both
spellings are accepted everywhere and an unknown or ambiguous one is one clear line.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

from torch import fx

from ..untrusted import display_name


class NodeNames:
    """Name lookup for one graph; ``original_names`` maps safe ids to the ONNX names."""

    def __init__(self, graph: fx.GraphModule, original_names: Mapping[str, str]):
        self.graph = graph
        self.original_names = original_names

    def node(self, name: str) -> fx.Node:
        """The fx node called ``name`` — its safe id, or the original ONNX node name behind it."""
        for node in self.graph.graph.nodes:
            if node.name == name:
                return node
        from ..errors import UsageError

        matches = self._by_onnx_name.get(name, []) if name else []
        if len(matches) == 1:
            return self.node(matches[0])
        shown = display_name(name)
        if len(matches) > 1:
            raise UsageError(
                f"layer name {shown} names {len(matches)} ONNX nodes",
                hint="use one of their ids: " + ", ".join(matches[:8]),
            )
        raise UsageError(
            f"no layer named {shown}", hint="see `xplain inspect MODEL` for layer names"
        )

    def onnx_name(self, name: str) -> str | None:
        """The original ONNX node name behind fx node ``name`` (None if it has none)."""
        node = next((n for n in self.graph.graph.nodes if n.name == name), None)
        if node is None:
            return None
        key = node.target if node.op == "call_module" else node.name
        original = self.original_names.get(key) if isinstance(key, str) else None
        return original or None

    @cached_property
    def _by_onnx_name(self) -> dict[str, list[str]]:
        targets = {n.target: n.name for n in self.graph.graph.nodes if n.op == "call_module"}
        found: dict[str, list[str]] = {}
        for safe, original in self.original_names.items():
            if original and safe in targets:
                found.setdefault(original, []).append(targets[safe])
        return found
