"""All graph knowledge of one model, each analysis built once on first use.

The analyses depend on each other in one direction — signal flow and shapes, then layouts and
non-linearities, then attention (placed on the spatial cut layers), then feature layers (whose
class-token default sits before the last attention) — and this class is where that order is
written down, so :class:`~xplain.graph.model.Model` only forwards to it and each analysis stays
testable alone with a :class:`~xplain.graph.signal.SignalGraph` of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import torch
from torch import fx

from .attention import Attention, find_attention
from .layers import FeatureLayers, cut_layers
from .layouts import Layouts
from .nonlinear import Nonlinearities
from .signal import SignalGraph


class GraphKnowledge:
    """The cached analyses of ``graph`` for a ``height``×``width`` input; ``example`` makes
    the batch-of-one input shape propagation runs on."""

    def __init__(
        self,
        graph: fx.GraphModule,
        height: int,
        width: int,
        example: Callable[[], torch.Tensor],
    ):
        self.height, self.width = height, width
        self.signal = SignalGraph(graph, example)

    @cached_property
    def layouts(self) -> Layouts:
        return Layouts(self.signal, self.height, self.width)

    @cached_property
    def nonlinear(self) -> Nonlinearities:
        return Nonlinearities(self.signal)

    @cached_property
    def attention(self) -> list[Attention]:
        cuts = cut_layers(self.signal, self.layouts)
        return find_attention(self.nonlinear, self.layouts, cuts)

    @cached_property
    def features(self) -> FeatureLayers:
        return FeatureLayers(self.signal, self.layouts, self.attention, self.height, self.width)
