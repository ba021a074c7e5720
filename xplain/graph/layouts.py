"""How a feature tensor maps onto the image grid: B×C×h×w, channels-last, or tokens.

Methods that read a feature map spatially (Grad-CAM, IBA, MIP-IN's head, attention rollout)
must not assume B×C×H×W from a shape: Swin and ConvNeXt blocks are channels-last, ViTs carry
prefix tokens before their patch grid. :class:`Layout` converts each to B×C×h×w and back;
:class:`Layouts` finds the layout of every node once, from the shapes of a
:class:`~xplain.graph.signal.SignalGraph` and the grids its rank-4 tensors have.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import torch
from torch import fx, nn

from .signal import SignalGraph

NCHW, NHWC, TOKENS = "nchw", "nhwc", "tokens"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the channels and the spatial grid sit in one feature tensor.

    ``nchw``: B×C×h×w (convolutional maps). ``nhwc``: B×h×w×C (Swin, ConvNeXt's channels-last
    blocks). ``tokens``: B×N×C with ``prefix`` leading non-spatial tokens (class, distillation,
    register tokens) followed by h·w patch tokens in raster order (ViT, DeiT, BEiT …).
    :meth:`to_spatial` gives every layout as B×C×h×w; :meth:`from_spatial` is its inverse,
    taking the prefix tokens from ``like`` (for methods that replace the map, e.g. a
    bottleneck). Found once from the graph by shape propagation (:meth:`Model.layout`)."""

    kind: str  #: nchw | nhwc | tokens
    channels: int
    grid: tuple[int, int]  #: h, w
    prefix: int = 0  #: tokens only: leading tokens that are not grid cells

    def to_spatial(self, t: torch.Tensor) -> torch.Tensor:
        """B×C×h×w view of a tensor in this layout (prefix tokens dropped)."""
        if self.kind == NHWC:
            return t.permute(0, 3, 1, 2)
        if self.kind == TOKENS:
            h, w = self.grid
            return t[:, self.prefix :].transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)
        return t

    def from_spatial(self, s: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """The inverse of :meth:`to_spatial`; prefix tokens come from ``like`` (same layout,
        broadcastable batch), zeros without it."""
        if self.kind == NHWC:
            return s.permute(0, 2, 3, 1)
        if self.kind == TOKENS:
            grid = s.flatten(2).transpose(1, 2)
            if not self.prefix:
                return grid
            if like is None:
                head = grid.new_zeros(grid.shape[0], self.prefix, grid.shape[2])
            else:
                head = like[:, : self.prefix].expand(grid.shape[0], -1, -1)
            return torch.cat([head.to(grid), grid], dim=1)
        return s

    def describe(self) -> str:
        """Human-readable, e.g. ``tokens B×(1+7×7)×C`` (shown by ``xplain inspect``)."""
        h, w = self.grid
        if self.kind == TOKENS:
            tokens = f"({self.prefix}+{h}×{w})" if self.prefix else f"{h}×{w}"
            return f"tokens B×{tokens}×{self.channels}"
        if self.kind == NHWC:
            return f"channels-last B×{h}×{w}×{self.channels}"
        return f"B×{self.channels}×{h}×{w}"


class Layouts:
    """The layout of every flowing node of a graph whose input is ``height``×``width``."""

    def __init__(self, signal: SignalGraph, height: int, width: int):
        self.signal = signal
        self.height, self.width = height, width

    def is_grid(self, h: int, w: int) -> bool:
        """h×w is the input grid downsampled by one integer factor (floor or ceil)."""
        if h < 1 or w < 1 or h * w < 2:
            return False
        big_h, big_w = self.height, self.width
        for s in {max(1, big_h // h), max(1, -(-big_h // h))}:
            if h in (big_h // s, -(-big_h // s)) and w in (big_w // s, -(-big_w // s)):
                return True
        return False

    def _channels_last_evidence(self, node: fx.Node) -> int:
        """+1 per neighbour that works on the last axis (LayerNorm, Linear), −1 per one that
        works on axis 1 (conv, BatchNorm, pooling): breaks ties for square maps with C = H."""
        score = 0
        for other in [node, *node.users, *node.all_input_nodes]:
            if other.op != "call_module":
                continue
            module = self.signal.submodule(other)
            name = type(module).__name__
            if isinstance(module, (nn.LayerNorm, nn.Linear)) or "LayerNorm" in name:
                score += 1
            elif (
                isinstance(
                    module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.MaxPool2d, nn.AvgPool2d)
                )
                or "Pool" in name
            ):
                score -= 1
        return score

    @cached_property
    def grids(self) -> set[tuple[int, int]]:
        """Every spatial grid a rank-4 tensor of the graph has (what token counts are read against)."""
        grids = set()
        for node in self.signal.flowing():
            shape = self.signal.shape(node.name)
            if len(shape) == 4 and shape[0] == 1:
                for h, w in ((shape[2], shape[3]), (shape[1], shape[2])):
                    if self.is_grid(h, w):
                        grids.add((h, w))
        return grids

    def token_layout(self, tokens: int, channels: int, max_prefix: int = 16) -> Layout | None:
        """B×N×C read as ``prefix`` tokens + a grid the graph has: the grid with the fewest
        leftover tokens (N − h·w, at most ``max_prefix`` and fewer than the grid cells)."""
        best = None
        for h, w in self.grids:
            extra = tokens - h * w
            if 0 <= extra <= max_prefix and extra < h * w and (best is None or extra < best[0]):
                best = (extra, (h, w))
        return None if best is None else Layout(TOKENS, channels, best[1], best[0])

    def _flattened_channels_first(self, node: fx.Node, known: dict[str, Layout]) -> bool:
        """B×C×(h·w): a B×C×h×w map with its grid flattened (before the transpose to tokens);
        told apart from tokens B×N×C when C = N by where it comes from."""
        source = node.all_input_nodes[0] if node.all_input_nodes else None
        layout = known.get(source.name) if source is not None else None
        shape = self.signal.shape(node.name)
        return (
            layout is not None
            and layout.kind == NCHW
            and layout.channels == shape[1]
            and layout.grid[0] * layout.grid[1] == shape[2]
        )

    @cached_property
    def by_node(self) -> dict[str, Layout]:
        """node name -> layout, for every flowing node that is a spatial feature tensor."""
        out = {}
        for node in self.signal.flowing():
            shape = self.signal.shape(node.name)
            if not shape or shape[0] != 1:
                continue
            if len(shape) == 4:
                first, last = self.is_grid(shape[2], shape[3]), self.is_grid(shape[1], shape[2])
                if last and (not first or self._channels_last_evidence(node) > 0):
                    out[node.name] = Layout(NHWC, shape[3], (shape[1], shape[2]))
                elif first or (
                    min(shape[2], shape[3]) > 1 and self._channels_last_evidence(node) <= 0
                ):
                    # as before layouts: a rank-4 map with h, w > 1 is B×C×H×W (odd sizes such as
                    # Inception's 147×147 are not a clean downsampling); a 1×W "grid" that is not
                    # one is a pooled channels-last tensor (ConvNeXt's head: B×1×1×C)
                    out[node.name] = Layout(NCHW, shape[1], (shape[2], shape[3]))
            elif len(shape) == 3:
                layout = self.token_layout(shape[1], shape[2])
                if layout is not None and not self._flattened_channels_first(node, out):
                    out[node.name] = layout
        return out
