"""Attention discovery: each Softmax over the key axis between a Q·Kᵀ and a ·V product.

Attention rollout, attention-aware LRP and the "attention" method requirement need the
attention-probability tensors and where their tokens sit on the image grid. Exported graphs do
not mark attention; it is recognised here from the graph's shape — a square softmax fed by a
product of two signals and feeding another — and placed on the grid of the feature layer that
feeds the block (windowed attention, as in Swin, attends within windows of that grid).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .layers import FeatureLayer
from .layouts import TOKENS, Layout, Layouts
from .nonlinear import Nonlinearities


@dataclasses.dataclass(frozen=True)
class Attention:
    """One attention-probability tensor (a Softmax over the key axis)."""

    node: str  #: the Softmax's fx node name
    tokens: int  #: N, the number of keys (= queries)
    maps: int  #: attention maps per image at batch 1 (heads; windows × heads when windowed)
    layout: Layout | None  #: the token layout (prefix, grid); None for windowed attention
    windowed: bool
    #: the feature layer (a cut vertex) that feeds the block: its tokens are the block's tokens;
    #: windowed attention (Swin) attends within windows of this layer's grid
    stream: str | None = None
    stream_layout: Layout | None = None


def find_attention(
    nonlinear: Nonlinearities, layouts: Layouts, cuts: Sequence[FeatureLayer]
) -> list[Attention]:
    """The attention tensors of a graph in graph order; ``cuts`` are its spatial cut layers
    (:func:`~xplain.graph.layers.cut_layers`), the streams attention blocks read."""
    signal = nonlinear.signal
    kind_of = nonlinear.kind_of
    found = []
    order = signal.order()
    position = {n.name: i for n, i in order.items()}
    layers = [f for f in cuts if f.layout is not None]
    for node in signal.flowing():
        if kind_of(node) != "softmax":
            continue
        shape = signal.shape(node.name)
        if len(shape) < 3 or shape[-1] != shape[-2]:
            continue
        inputs = signal.signal_inputs(node)
        up = signal.chain_up(inputs[0]) if inputs else []
        if not any(kind_of(n) == "matmul" for n in up):
            continue
        users, down = list(node.users), None
        for _ in range(8):
            if len(users) != 1:
                break
            user = users[0]
            if kind_of(user) == "matmul":
                down = user
                break
            users = list(user.users)
        if down is None:
            continue
        tokens = shape[-1]
        lead = 1
        for d in shape[:-2]:
            lead *= d
        before = [f for f in layers if position[f.name] < order[node]]
        stream = before[-1].layout if before else None
        stream_name = before[-1].name if before else None
        layout: Layout | None
        if stream is not None and stream.kind == TOKENS:
            windowed = tokens != stream.prefix + stream.grid[0] * stream.grid[1]
            layout = stream
        elif stream is not None:
            windowed = tokens != stream.grid[0] * stream.grid[1]
            layout = Layout(TOKENS, stream.channels, stream.grid, 0)
        else:
            layout = layouts.token_layout(tokens, 0)
            windowed = layout is None
        found.append(
            Attention(
                node.name,
                tokens,
                lead,
                None if windowed else layout,
                windowed,
                stream_name,
                stream,
            )
        )
    return found
