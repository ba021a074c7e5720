"""What is non-linear in a network: activation modules, and the gates, self-gated activations,
normalisations and products exporters decompose into elementwise ops.

Modified-backpropagation methods are only correct when they know every non-linearity: a rule
set that skips a ReLU6, or mistakes a squeeze-excitation gate for SiLU, silently computes
another method. This module classifies each flowing node of a
:class:`~xplain.graph.signal.SignalGraph` once; rules (:mod:`.rules`), LRP (:mod:`.lrp`) and
the method requirements (:mod:`.requirements`) read the result.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import torch
from torch import fx, nn

from .signal import SignalGraph

#: activation kinds that rectify (piecewise-linear with a zero/clamped region)
RECTIFIERS = frozenset({"relu", "relu6", "hardtanh", "clip", "leaky_relu", "prelu"})


@dataclasses.dataclass(frozen=True)
class Activation:
    name: str  #: fx node name
    kind: str  #: relu, relu6, hardtanh, clip, leaky_relu, prelu, sigmoid, hardswish, …
    module: nn.Module
    bounds: tuple[float | None, float | None] | None = None  #: for clip/hardtanh/relu6

    @property
    def rectifier(self) -> bool:
        return self.kind in RECTIFIERS


def activation_kind(module: nn.Module) -> tuple[str, tuple | None] | None:
    """``(kind, bounds)`` of an activation module (bounds for clamping ones), else None."""
    from onnx2torch.node_converters.activations import OnnxHardSigmoid, OnnxPReLU
    from onnx2torch.node_converters.clip import OnnxClip

    if isinstance(module, nn.ReLU):
        return "relu", (0.0, None)
    if isinstance(module, nn.ReLU6):
        return "relu6", (0.0, 6.0)
    if isinstance(module, nn.Hardtanh):
        return "hardtanh", (float(module.min_val), float(module.max_val))
    if isinstance(module, OnnxClip):
        lo = None if module.min_val is None else float(module.min_val)
        hi = None if module.max_val is None else float(module.max_val)
        return "clip", (lo, hi)
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", None
    if isinstance(module, (OnnxPReLU, nn.PReLU)):
        return "prelu", None
    for cls, kind in (
        (nn.Sigmoid, "sigmoid"),
        (nn.Hardswish, "hardswish"),
        (OnnxHardSigmoid, "hardsigmoid"),
        (nn.SiLU, "silu"),
        (nn.GELU, "gelu"),
        (nn.ELU, "elu"),
        (nn.CELU, "celu"),
        (nn.SELU, "selu"),
        (nn.Softplus, "softplus"),
        (nn.Mish, "mish"),
        (nn.Tanh, "tanh"),
    ):
        if isinstance(module, cls):
            return kind, None
    return None


def is_layer_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__ in (
        "OnnxLayerNorm",
        "OnnxLayerNormalization",
    )


def product_kind(module: nn.Module) -> str | None:
    """mul / div / matmul for modules multiplying their two inputs, else None."""
    name = type(module).__name__
    if name in ("OnnxMatMul", "OnnxEinsum"):
        return "matmul"
    function = getattr(module, "math_op_function", None)
    if name == "OnnxBinaryMathOperation" and function in (torch.mul, torch.div):
        return "mul" if function is torch.mul else "div"
    return None


class Nonlinearities:
    """The non-linear operations on the signal of one graph (see the module docstring)."""

    def __init__(self, signal: SignalGraph):
        self.signal = signal

    @cached_property
    def activations(self) -> list[Activation]:
        """Every activation module and its kind, in graph order."""
        found = []
        for node in self.signal.graph.graph.nodes:
            if node.op != "call_module":
                continue
            module = self.signal.submodule(node)
            kind = activation_kind(module)
            if kind is not None:
                found.append(Activation(node.name, kind[0], module, kind[1]))
        return found

    def kind_of(self, node: fx.Node) -> str | None:
        """The non-linearity kind of one node, before gate analysis (None: linear/routing)."""
        if node.op != "call_module":
            return None
        module = self.signal.submodule(node)
        kind = activation_kind(module)
        if kind is not None:
            return kind[0]
        name = type(module).__name__
        if name == "OnnxErf":
            return "erf"
        if name == "OnnxFunction" and getattr(module, "function", None) is torch.tanh:
            return "tanh"
        if isinstance(module, nn.Softmax) or "Softmax" in name:
            return "softmax"
        if is_layer_norm(module):
            return "layernorm"
        if isinstance(module, nn.GroupNorm):
            return "groupnorm"
        if isinstance(module, nn.modules.instancenorm._InstanceNorm) or "InstanceNorm" in name:
            return "instancenorm"
        if isinstance(module, nn.LocalResponseNorm) or name == "OnnxLRN":
            return "lrn"
        if product_kind(module) is not None and len(self.signal.signal_inputs(node)) == 2:
            return product_kind(module)
        return None

    @cached_property
    def by_node(self) -> dict[str, str]:
        """node name -> kind for every non-linear operation on the signal, gates resolved.

        A product ``x · g`` whose factor ``g`` comes (through elementwise ops) from a sigmoid,
        hard-sigmoid, erf or tanh is a *self-gated activation* when ``g``'s chain starts at
        ``x`` — SiLU (x·σ(x)), Hardswish (x·hardsigmoid(x)), GELU (x·½(1+erf(x/√2)), or its tanh
        form) as exporters decompose them — and a *gate* (squeeze-and-excitation) otherwise. A
        product with a softmax factor is attention; a division by a signal is a normalisation
        (a decomposed LayerNorm); other products of two signals are ``product``."""
        kinds: dict[str, str] = {}
        flowing = self.signal.flowing()
        for node in flowing:
            kind = self.kind_of(node)
            if kind is not None:
                kinds[node.name] = kind
        self_gated = {"sigmoid": "silu", "hardsigmoid": "hardswish", "erf": "gelu", "tanh": "gelu"}
        for node in flowing:
            kind = kinds.get(node.name)
            if kind not in ("mul", "div", "matmul"):
                continue
            a, b = self.signal.signal_inputs(node)[:2]
            if kind == "div":
                kinds[node.name] = "divide"
                continue
            resolved = "product"
            if kind == "matmul" and self.feeds_softmax(node):
                kinds[node.name] = "attention"  # Q·Kᵀ: the logits of an attention softmax
                continue
            for factor, other in ((a, b), (b, a)):
                chain = self.signal.chain_up(factor)
                source = next(
                    (n for n in chain if kinds.get(n.name) in (*self_gated, "softmax")), None
                )
                if source is None:
                    continue
                if kinds[source.name] == "softmax":
                    resolved = "attention"
                    break
                if self._gates_itself(source, other):
                    resolved = self_gated[kinds[source.name]]
                    kinds[source.name] = "consumed"
                else:
                    resolved = "gate"
                    kinds[source.name] = "consumed"
                break
            kinds[node.name] = resolved
        return {k: v for k, v in kinds.items() if v not in ("consumed", "attention")}

    def by_kind(self) -> dict[str, list[str]]:
        """:attr:`by_node` grouped: kind -> node names in graph order."""
        out: dict[str, list[str]] = {}
        for name, kind in self.by_node.items():
            out.setdefault(kind, []).append(name)
        return out

    def feeds_softmax(self, node: fx.Node, steps: int = 8) -> bool:
        """The node reaches a softmax through single-user elementwise steps (scale, mask)."""
        for _ in range(steps):
            users = list(node.users)
            if len(users) != 1:
                return False
            node = users[0]
            if self.kind_of(node) == "softmax":
                return True
            if node not in self.signal.flowing_set or len(self.signal.signal_inputs(node)) != 1:
                return False
        return False

    def _gates_itself(self, gate: fx.Node, other: fx.Node) -> bool:
        """The gate function reads ``other`` directly or through one elementwise op with a
        constant (GELU's x/√2): a self-gated activation, not a gate from another branch."""
        inputs = self.signal.signal_inputs(gate)
        if len(inputs) != 1:
            return False
        if inputs[0] is other:
            return True
        step = inputs[0]
        if (
            step.op != "call_module"
            or type(self.signal.submodule(step)).__name__ != "OnnxBinaryMathOperation"
        ):
            return False
        return self.signal.signal_inputs(step) == [other]

    def attention_products(self) -> list[str]:
        """Products of two signals that belong to attention: Q·Kᵀ (feeds a softmax) and A·V
        (one factor is a softmax output), in graph order."""
        out = []
        for node in self.signal.flowing():
            if self.kind_of(node) not in ("matmul", "mul"):
                continue
            if self.feeds_softmax(node) or any(
                self.kind_of(n) == "softmax"
                for f in self.signal.signal_inputs(node)
                for n in self.signal.chain_up(f)
            ):
                out.append(node.name)
        return out

    def product_gate(self, node: fx.Node) -> int | None:
        """For a product node: the argument index of the operand that is a gate or attention
        map (softmax, sigmoid-type, erf, tanh chain), else None; for a division by a signal: 1
        (the divisor)."""
        inputs = self.signal.signal_inputs(node)
        if len(inputs) != 2:
            return None
        kind = self.kind_of(node)
        if kind == "div":
            return 1 if node.args and len(node.args) > 1 and node.args[1] is inputs[1] else None
        gates = {"sigmoid", "hardsigmoid", "erf", "tanh", "softmax"}
        for factor in inputs:
            if any(self.kind_of(n) in gates for n in self.signal.chain_up(factor)):
                return next(i for i, a in enumerate(node.args) if a is factor)
        return None
