"""Layer-wise relevance propagation as graph rules (Bach et al. 2015; Montavon et al. 2017).

Relevance is carried as a "gradient" ``c`` with ``R = a * c`` for every activation ``a``, so
one backward pass of the target logit under these rules gives ``R_input = x * c_x``:

* linear operations — conv, linear, Gemm, MatMul, BatchNorm (its own elementwise affine rule),
  average and global pooling, adds (residual or constant): the ε-rule. The incoming ``c`` is
  scaled by ``z / (z + ε·sign z)`` before the ordinary backward, which splits the relevance of a
  residual add in proportion to its inputs;
* rectifiers (every kind the loader reports): relevance passes unchanged, ``R_z = R_a``;
* max-pooling, flatten, reshape, concat: the ordinary backward (winner-take-all, routing);
* transformers and smooth activations, the conservative rules of Ali et al. (ICML 2022):
  attention probabilities are held constant (``A·V`` is linear in ``V``; no relevance flows
  into the softmax), LayerNorm's normalising scale 1/σ is held constant (the layer is then
  linear in its input), and elementwise activations that are not rectifiers (GELU, SiLU,
  Hardswish, ELU, tanh …) use the identity rule ``R_z = R_a``. Exporters decompose SiLU,
  Hardswish and GELU into ``x · gate(x)``; holding the gate constant is the same identity rule.
  Gates from another branch (squeeze-and-excitation) are held constant too, divisions by a
  signal (a decomposed normalisation) hold the divisor constant, and any other product of two
  signals splits relevance evenly between its factors (AttnLRP's uniform rule);
* with ``zplus``: conv/linear layers use the z⁺-rule ``R_a = a * W⁺ᵀ(R_z / W⁺a)`` instead
  (deep Taylor for non-negative inputs), and the first layer the zᴮ-rule with the input's bounds
  (see :func:`zbox_relevance`).

Relevance absorbed by biases is not passed on; on bias-free ReLU networks the input relevance
sums to the target logit (conservation) as ε → 0.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .generic import GenericRule
from .kinds import BATCHNORM, is_weight_layer, unwrap
from .model import Model
from .rules import Chooser, _activation_of

EPSILON = "epsilon"
ZPLUS = "zplus"


def _stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with 0 where den == 0 (no relevance arrives there: ε = 0 is allowed).

    One division and one in-place clean-up of its ±inf / NaN (x/0, 0/0), not six kernels: this
    runs at every conv of lrp-zplus's backward."""
    return torch.div(num, den).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def _epsilon_scaled(g: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """``g · z / (z + ε sign z)`` (0 where the denominator is 0), as ``g · |z| / (|z| + ε)``:
    the same numbers in four in-place kernels and two new tensors, where the literal formula
    took eleven kernels (profiled: half of lrp-epsilon's time on EfficientNet-Lite0)."""
    if eps == 0:  # z / z: 1 where z != 0, and 0 where no relevance arrives
        return torch.where(z != 0, g, 0.0)
    ratio = z.abs()
    return ratio.div_(ratio + eps).mul_(g)


class _EpsilonScale(torch.autograd.Function):
    """Identity forward; backward multiplies by z / (z + ε sign z) (the ε-rule's mapper, for the
    rules that build their own forward: gates, products, LayerNorm)."""

    @staticmethod
    def forward(ctx, z, eps):
        ctx.save_for_backward(z)
        ctx.eps = eps
        return z.view_as(z)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return _epsilon_scaled(g, z, ctx.eps), None


class EpsilonRule(GenericRule):
    """A linear operation whose backward applies the ε-rule: ``c`` scaled by z / (z + ε sign z)
    before the operation's own backward (any number of inputs, e.g. a residual add)."""

    def __init__(self, original: nn.Module, eps: float):
        super().__init__(original)
        self.eps = eps

    def gradient_mapper(self, g, z, z_mod):
        return _epsilon_scaled(g, z, self.eps)


class _PassFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, rule, *rest):
        a = rule.original(z, *rest)
        ctx.save_for_backward(z, a)
        return a

    @staticmethod
    def backward(ctx, g):
        z, a = ctx.saved_tensors
        # a / z, 0 where z == 0 (0/0 or lo/0 of a clip: no relevance arrives), in three kernels
        ratio = torch.div(a, z).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        return (ratio.mul_(g), None, *([None] * (len(ctx.needs_input_grad) - 2)))


class PassRule(nn.Module):
    """A rectifier through which relevance passes unchanged (R_z = R_a)."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original = original

    def forward(self, z, *rest):
        return _PassFn.apply(z, self, *rest)


def _with_weight(module: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A copy of a conv/linear (or Sequential(pad, conv)) with another weight and no bias."""
    clone = copy.deepcopy(module)
    layer = unwrap(clone)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    layer.register_parameter("bias", None)
    return clone


def _weight(module: nn.Module) -> torch.Tensor:
    weight = unwrap(module).weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _positive_weights(module: nn.Module) -> nn.Module:
    return _with_weight(module, _weight(module).detach().clamp(min=0))


class ZPlusRule(GenericRule):
    """A conv/linear layer with the z⁺-rule backward (inputs assumed non-negative):
    ``c_in = W⁺ᵀ (c · z / (W⁺x + ε))``."""

    def __init__(self, original: nn.Module, eps: float):
        super().__init__(original, param_modifier=_positive_weights)
        self.eps = eps

    def gradient_mapper(self, g, z, z_mod):
        return _divide(g * z, z_mod + self.eps)


class GateRule(nn.Module):
    """A product ``a ⊙ g`` (or ``A·V``, ``x / σ``) whose factor at argument ``gate`` is held
    constant in the backward pass, then the ε-rule: relevance flows only into the other factor."""

    def __init__(self, original: nn.Module, gate: int, eps: float):
        super().__init__()
        self.original, self.gate, self.eps = original, gate, eps

    def forward(self, *args):
        held = [
            a.detach() if i == self.gate and isinstance(a, torch.Tensor) else a
            for i, a in enumerate(args)
        ]
        return _EpsilonScale.apply(self.original(*held), self.eps)


class UniformProductRule(nn.Module):
    """A product of two signals that splits relevance evenly between its factors (AttnLRP):
    the same value, computed as ½(f(a, b̄) + f(ā, b)) with bars held constant."""

    def __init__(self, original: nn.Module, eps: float):
        super().__init__()
        self.original, self.eps = original, eps

    def forward(self, a, b, *rest):
        out = 0.5 * (self.original(a, b.detach(), *rest) + self.original(a.detach(), b, *rest))
        return _EpsilonScale.apply(out, self.eps)


class LayerNormRule(nn.Module):
    """LayerNorm with its normalising scale 1/σ held constant in the backward pass (Ali et al.
    2022), then the ε-rule; the forward value is the original layer's."""

    def __init__(self, original: nn.Module, eps: float):
        super().__init__()
        self.original, self.eps = original, eps

    def forward(self, x, *rest):
        out = self.original(x, *rest)
        weight: Any
        bias: Any
        ln_eps: Any
        if isinstance(self.original, nn.LayerNorm):
            dims = tuple(range(x.dim() - len(self.original.normalized_shape), x.dim()))
            weight, bias, ln_eps = self.original.weight, self.original.bias, self.original.eps
        else:  # onnx2torch's OnnxLayerNorm(axis, epsilon)(x, scale, bias)
            axis = self.original.axis % x.dim()
            dims = tuple(range(axis, x.dim()))
            weight = rest[0] if rest else None
            bias = rest[1] if len(rest) > 1 else None
            ln_eps = self.original.epsilon
        centred = x - x.mean(dim=dims, keepdim=True)
        scale = torch.rsqrt(centred.detach().pow(2).mean(dim=dims, keepdim=True) + ln_eps)
        linear = centred * scale
        if weight is not None:
            linear = linear * weight
        if bias is not None:
            linear = linear + bias
        out = out.detach() + (linear - linear.detach())  # original value, linearised gradient
        return _EpsilonScale.apply(out, self.eps)


_SMOOTH = frozenset({"gelu", "silu", "hardswish", "elu", "selu", "celu", "tanh", "mish"})


_is_weight_layer = is_weight_layer  # xplain.graph.kinds: one definition of weight layers


def _is_linear_op(module: nn.Module) -> bool:
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    from onnx2torch.node_converters.gemm import OnnxGemm
    from onnx2torch.node_converters.global_average_pool import (
        OnnxGlobalAveragePool,
        OnnxGlobalAveragePoolWithKnownInputShape,
    )
    from onnx2torch.node_converters.matmul import OnnxMatMul
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes, OnnxReduceSumStaticAxes

    if is_weight_layer(module):
        return True
    if isinstance(
        module,
        (
            BATCHNORM,
            nn.AvgPool1d,
            nn.AvgPool2d,
            nn.AvgPool3d,
            nn.AdaptiveAvgPool2d,
            OnnxGemm,
            OnnxMatMul,
            OnnxGlobalAveragePool,
            OnnxGlobalAveragePoolWithKnownInputShape,
            OnnxReduceSumStaticAxes,
        ),
    ):
        return True
    if isinstance(module, OnnxReduceStaticAxes):
        return module.operation_type in ("ReduceMean", "ReduceSum")
    if isinstance(module, OnnxBinaryMathOperation):
        return module.math_op_function in (torch.add, torch.sub)
    return False


def first_weight_layer(model: Model) -> str | None:
    """The first conv/linear node the input reaches (the zᴮ-rule's layer)."""
    for node in model.graph.graph.nodes:
        if node.op == "call_module" and is_weight_layer(model.graph.get_submodule(node.target)):
            return node.name
    return None


def lrp_rules(mode: str = EPSILON, eps: float = 1e-6, skip: tuple[str, ...] = ()) -> Chooser:
    """A chooser applying the LRP composite ``mode`` (epsilon or zplus) to a converted graph."""

    kinds: dict[str, str] = {}
    attention_products: set[str] = set()

    def choose(model: Model, name: str, module: nn.Module):
        if not kinds:  # first call: the graph's non-linearities and attention products, once
            kinds.update({n: k for k, names in model.nonlinearities().items() for n in names})
            kinds.setdefault("", "")
            attention_products.update(model.attention_products())
        if name in skip:
            return None
        act = _activation_of(model, name)
        if act is not None:
            return PassRule(module) if act.rectifier or act.kind in _SMOOTH else None
        kind = kinds.get(name)
        if kind in _SMOOTH:  # e.g. tanh as an OnnxFunction: the identity rule
            return PassRule(module)
        if kind == "layernorm":
            return LayerNormRule(module, eps)
        if (
            kind in ("gelu", "silu", "hardswish", "gate", "divide", "product")
            or name in attention_products
        ):
            gate = model.product_gate(name)
            return UniformProductRule(module, eps) if gate is None else GateRule(module, gate, eps)
        if mode == ZPLUS and _is_weight_layer(module):
            return ZPlusRule(module, eps)
        if _is_linear_op(module):
            return EpsilonRule(module, eps)
        return None

    return choose


def zbox_relevance(
    module: nn.Module,
    x: torch.Tensor,
    relevance_out: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    eps: float = 1e-9,
) -> torch.Tensor:
    """The zᴮ-rule for the first layer (Montavon et al. 2017), inputs bounded in [low, high].

    R_i = Σ_j (x_i w_ij − l_i w⁺_ij − h_i w⁻_ij) / (Σ_i same) · R_j; returns R for ``x``."""
    w = _weight(module).detach()
    plain, pos, neg = (
        module,
        _with_weight(module, w.clamp(min=0)),
        _with_weight(module, w.clamp(max=0)),
    )
    with torch.enable_grad():
        xs = [t.detach().clone().requires_grad_(True) for t in (x, low, high)]
        outs = [plain_no_bias(plain, xs[0]), pos(xs[1]), neg(xs[2])]
        z = outs[0] - outs[1] - outs[2]
        s = _divide(relevance_out, _stabilise(z, eps))
        grads = torch.autograd.grad(outs, xs, [s, s, s])
    return xs[0].detach() * grads[0] - low * grads[1] - high * grads[2]


def plain_no_bias(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _with_weight(module, _weight(module).detach())(x)
