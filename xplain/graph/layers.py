"""The layers methods read: feature maps (Grad-CAM, IBA, MIP-IN's head) and bias sources
(FullGrad, bias-aware LRP rules).

Feature layers are the cut vertices of the signal graph that have a spatial layout — all
information passes through them — plus, for class-token models, the tokens entering the last
block's attention. Bias layers are every place a constant is added to the signal, with
BatchNorm folded into the conv before it. Both are found here from a
:class:`~xplain.graph.signal.SignalGraph` and its :class:`~xplain.graph.layouts.Layouts`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from torch import fx, nn

from .kinds import BATCHNORM, weight_layer
from .kinds import batchnorm_affine as _bn_affine
from .layouts import TOKENS, Layout, Layouts
from .nonlinear import is_layer_norm
from .signal import SignalGraph

if TYPE_CHECKING:
    from .attention import Attention


@dataclasses.dataclass(frozen=True)
class BiasLayer:
    """A place where a constant is added to the signal.

    ``node`` is where the (effective) bias has been added — after a BatchNorm that follows a
    conv, so tapping the gradient there and multiplying by ``bias`` gives the layer's
    FullGrad bias term. ``layer`` names the weight layer (conv/linear), if any."""

    node: str
    layer: str
    kind: str  #: conv, linear, gemm, batchnorm, add
    bias: torch.Tensor  #: broadcastable to the output at ``node`` (per channel for conv/BN)
    module: nn.Module | None  #: the conv/linear module (None for BN-only or constant adds)
    shape: tuple[int, ...]  #: output shape at ``node`` for a batch of one


@dataclasses.dataclass(frozen=True)
class FeatureLayer:
    """A feature map methods can read as a spatial grid.

    Usually a cut vertex (all information flows through it); for token models the default
    layer is the last block's first LayerNorm output (``cut`` False), as pytorch-grad-cam
    uses for ViTs, since after the last block only the class token reaches the logits."""

    name: str
    shape: tuple[int, ...]  #: the tensor's per-sample shape (C×H×W for nchw, N×C for tokens)
    layout: Layout | None = None
    cut: bool = True

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """C×h×w after :meth:`to_spatial`."""
        if self.layout is None:
            return tuple(self.shape)  # type: ignore[return-value]
        return (self.layout.channels, *self.layout.grid)

    def to_spatial(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.layout is None else self.layout.to_spatial(t)

    def from_spatial(self, s: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        return s if self.layout is None else self.layout.from_spatial(s, like)


def _per_channel(bias: torch.Tensor, kind: str, shape: tuple) -> torch.Tensor:
    """Reshape a per-channel bias so it broadcasts against the layer output (1×C×1×1…)."""
    if kind == "linear" or len(shape) <= 2:
        return bias
    return bias.reshape(1, -1, *([1] * (len(shape) - 2)))


def find_bias_layers(signal: SignalGraph) -> list[BiasLayer]:
    """Every bias source (conv/linear with BatchNorm folded in, lone BN, Gemm C, constant adds),
    read from the modules' current weights."""
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    from onnx2torch.node_converters.gemm import OnnxGemm

    flowing = set(signal.flowing())
    found: list[BiasLayer] = []
    consumed_bn: set[str] = set()
    for node in list(signal.graph.graph.nodes):
        if node.op != "call_module" or node not in flowing:
            continue
        module = signal.submodule(node)
        weight = weight_layer(module)
        if weight is not None:
            kind = "linear" if isinstance(weight, nn.Linear) else "conv"
            bias = weight.bias.detach() if isinstance(weight.bias, torch.Tensor) else None
            out_node = node
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module":
                bn = signal.submodule(users[0])
                if isinstance(bn, BATCHNORM):
                    scale, shift = _bn_affine(bn)
                    base = bias if bias is not None else torch.zeros_like(shift)
                    bias = base * scale + shift
                    out_node = users[0]
                    consumed_bn.add(users[0].name)
            if bias is None:
                continue
            shape = signal.shape(out_node.name)
            found.append(
                BiasLayer(
                    out_node.name, node.name, kind, _per_channel(bias, kind, shape), weight, shape
                )
            )
        elif isinstance(module, BATCHNORM) and node.name not in consumed_bn:
            scale, shift = _bn_affine(module)
            shape = signal.shape(node.name)
            bias = _per_channel(shift, "conv", shape)
            found.append(BiasLayer(node.name, node.name, "batchnorm", bias, None, shape))
        elif isinstance(module, OnnxGemm) and len(node.args) > 2:
            c = signal.constant(node.args[2])
            if c is not None:
                bias = (c * module.beta).detach()
                found.append(
                    BiasLayer(node.name, node.name, "gemm", bias, module, signal.shape(node.name))
                )
        elif isinstance(module, OnnxBinaryMathOperation) and module.math_op_function in (
            torch.add,
            torch.sub,
        ):
            a, b = node.args[:2]
            ca, cb = signal.constant(a), signal.constant(b)
            if (ca is None) == (cb is None):
                continue  # residual add (two signals) or constant arithmetic
            const = cb if cb is not None else ca
            assert const is not None  # exactly one side is a constant
            if module.math_op_function is torch.sub and cb is not None:
                const = -const
            found.append(
                BiasLayer(
                    node.name, node.name, "add", const.detach(), None, signal.shape(node.name)
                )
            )
    return found


def cut_layers(signal: SignalGraph, layouts: Layouts) -> list[FeatureLayer]:
    """The cut vertices that have a spatial layout, input to output."""
    return [
        FeatureLayer(n.name, tuple(signal.shape(n.name)[1:]), layouts.by_node[n.name])
        for n in signal.cuts
        if n.name in layouts.by_node
    ]


class FeatureLayers:
    """The feature layers of one graph and the default among them.

    ``attention`` (the model's attention tensors) places the default of class-token models; it
    is computed from :func:`cut_layers`, so the two do not depend on each other."""

    def __init__(
        self,
        signal: SignalGraph,
        layouts: Layouts,
        attention: Sequence[Attention],
        height: int,
        width: int,
    ):
        self.signal, self.layouts, self.attention = signal, layouts, attention
        self.height, self.width = height, width

    @cached_property
    def _found(self) -> tuple[list[FeatureLayer], str | None]:
        layers = cut_layers(self.signal, self.layouts)
        extra = self._token_default(layers)
        if extra is not None and all(f.name != extra.name for f in layers):
            order = {n.name: i for i, n in enumerate(self.signal.graph.graph.nodes)}
            layers = sorted([*layers, extra], key=lambda f: order[f.name])
        default = extra.name if extra is not None else (layers[-1].name if layers else None)
        return layers, default

    @property
    def all(self) -> list[FeatureLayer]:
        return self._found[0]

    @property
    def default(self) -> FeatureLayer | None:
        """The Grad-CAM/IBA default (see :meth:`xplain.Model.default_feature_layer`)."""
        layers, name = self._found
        return next((f for f in layers if f.name == name), None)

    def _token_default(self, layers: list[FeatureLayer]) -> FeatureLayer | None:
        """For token models read through prefix tokens (ViT/DeiT): the first LayerNorm of the
        last block that has attention, i.e. the tokens entering that block's attention.

        After the last block only the class token reaches the logits, so a map there has no
        gradient on the patch tokens; pytorch-grad-cam uses ``blocks[-1].norm1`` for this."""
        tokens = [f for f in layers if f.layout is not None and f.layout.kind == TOKENS]
        last = layers[-1].layout if layers else None
        if not tokens or last is None or last.kind != TOKENS or not last.prefix:
            return None
        nodes = {n.name: n for n in self.signal.graph.graph.nodes}
        order = self.signal.order()
        softmax = [order[nodes[a.node]] for a in self.attention]
        for start, end in reversed(list(zip(tokens, tokens[1:]))):
            lo, hi = order[nodes[start.name]], order[nodes[end.name]]
            if not any(lo < s < hi for s in softmax):
                continue
            for user in sorted(nodes[start.name].users, key=order.__getitem__):
                if user.op == "call_module" and is_layer_norm(self.signal.submodule(user)):
                    layout = self.layouts.by_node.get(user.name)
                    if layout is not None:
                        shape = tuple(self.signal.shape(user.name)[1:])
                        return FeatureLayer(user.name, shape, layout, cut=False)
            return start
        return None

    def named(self, node: fx.Node) -> FeatureLayer | None:
        """``node`` as a feature layer (cut vertex or not); None without a spatial layout."""
        for f in self.all:
            if f.name == node.name:
                return f
        layout = self.layouts.by_node.get(node.name)
        if layout is None:
            return None
        shape = tuple(self.signal.shape(node.name)[1:])
        return FeatureLayer(node.name, shape, layout, cut=node in self.signal.cuts)

    def bottleneck(self, fraction: float) -> FeatureLayer | None:
        """The last feature layer on the coarsest grid still ≥ ``fraction`` of the input
        (see :meth:`xplain.Model.bottleneck_layer` for why)."""
        height, width = self.height, self.width
        grids = [(f, f.spatial_shape[1:]) for f in self.all]  # token layouts: their grid
        fine = [
            (f, g)
            for f, g in grids
            if len(g) == 2
            and height
            and width
            and g[0] >= height * fraction
            and g[1] >= width * fraction
        ]
        if not fine:
            return self.default
        area = min(g[0] * g[1] for _, g in fine)  # e.g. 28×28, not a padded 29×29 before a stride
        return [f for f, g in fine if g[0] * g[1] == area][-1]
