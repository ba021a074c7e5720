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
from typing import Any, cast

import torch
from torch import nn

from .generic import GenericRule
from .kinds import (
    BATCHNORM,
    direct_layer,
    forward_with,
    input_gradient,
    is_weight_layer,
    prefix_modules,
    unwrap,
)
from .model import Model
from .rules import Chooser, _activation_of

EPSILON = "epsilon"
ZPLUS = "zplus"


def _stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + ε sign z, with sign 0 = +1."""
    return torch.where(z >= 0, eps, -eps).add_(z)


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


class _EpsilonFromRelevance(_EpsilonScale):
    """Identity forward (the parent's); backward divides the incoming relevance R by ``|z| + ε``
    (the ε-rule's ``c = R / (z + ε sign z)`` where only z > 0 carries relevance; 0 where the
    denominator is)."""

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        den = z.abs()
        if ctx.eps:
            return torch.div(g, den.add_(ctx.eps), out=den), None
        return torch.div(g, den, out=den).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0), None


class EpsilonRule(GenericRule):
    """A linear operation whose backward applies the ε-rule: ``c`` scaled by z / (z + ε sign z)
    before the operation's own backward (any number of inputs, e.g. a residual add).
    ``relevance_in``: the operation feeds a :class:`RelevancePassRule` only, which hands back
    ``R = c · z`` (zero where z ≤ 0), so the scaled ``c`` is ``R / (|z| + ε)``."""

    def __init__(self, original: nn.Module, eps: float, relevance_in: bool = False):
        super().__init__(original)
        self.eps = eps
        self.relevance_in = relevance_in

    def gradient_mapper(self, g, z, z_mod):
        return _epsilon_scaled(g, z, self.eps)

    def forward(self, *args):
        if self.relevance_in:
            return _EpsilonFromRelevance.apply(self.original(*args), self.eps)
        return super().forward(*args)


class _PassFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, rule, *rest):
        a = rule.original(z, *rest)
        ctx.save_for_backward(z, a)
        ctx.relu = rule.relu
        return a

    @staticmethod
    def backward(ctx, g):
        z, a = ctx.saved_tensors
        if ctx.relu:  # a / z is 1 where z > 0 and 0 elsewhere: aten's one-kernel ReLU backward
            grad = torch.ops.aten.threshold_backward(g, z, 0.0)
        else:  # a / z, 0 where z == 0 (0/0 or lo/0 of a clip: no relevance arrives)
            grad = torch.div(a, z).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).mul_(g)
        return (grad, None, *([None] * (len(ctx.needs_input_grad) - 2)))


class PassRule(nn.Module):
    """A rectifier through which relevance passes unchanged (R_z = R_a)."""

    def __init__(self, original: nn.Module, kind: str = ""):
        super().__init__()
        self.original = original
        self.relu = kind == "relu"

    def forward(self, z, *rest):
        return _PassFn.apply(z, self, *rest)


class _RelevanceOutFn(torch.autograd.Function):
    """Forward: the rectifier. Backward: the relevance ``R_a = a · c_a`` instead of ``c_z``."""

    @staticmethod
    def forward(ctx, z, original):
        a = original(z)
        ctx.save_for_backward(a)
        return a

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * a, None


class RelevancePassRule(nn.Module):
    """A rectifier ``a = clamp(z, 0, hi)`` whose only input is the output of a layer with a
    ``relevance_in`` rule (:class:`ZPlusRule`, :class:`EpsilonRule`), the node's only user.

    R_z = R_a (the rectifier rule), so the backward hands that layer the relevance
    ``R = a · c_a`` itself and the layer divides by its own denominator: ``c_z = c_a · a / z``
    followed by the layer's ``· z / den`` is ``R / den``, one multiply and one division where
    the unpaired rules take seven kernels (``a / z``, its 0/0 clean-up and product, then the
    layer's own four). Where z = 0, a = 0: no relevance either way. The gradient seen at the
    layer's output is then R_z, not c_z."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original = original

    def forward(self, z):
        return _RelevanceOutFn.apply(z, self.original)


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


def _zplus_scale(g: torch.Tensor, z: torch.Tensor, z_pos: torch.Tensor) -> torch.Tensor:
    """``g · z / z_pos`` (``z_pos = z⁺ + ε``), 0 where the denominator is 0, written into
    ``z_pos`` (a temporary the caller owns): three kernels and no new tensor."""
    return torch.div(z, z_pos, out=z_pos).mul_(g).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


class _ZPlusFn(torch.autograd.Function):
    """Forward: the original layer (``z = Wx + b``). Backward: ``c_x = W⁺ᵀ (c · z / (W⁺x + ε))``
    as one convolution with W⁺ and the input half of its backward kernel; with
    ``rule.relevance_in`` the incoming gradient is the relevance ``R = c · z`` itself."""

    @staticmethod
    def forward(ctx, x, rule):
        z = rule.layer(x)
        if rule.relevance_in:  # R arrives instead of c: z is not needed
            ctx.save_for_backward(x)
        else:
            ctx.save_for_backward(x, z)
        ctx.rule = rule
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, *z = ctx.saved_tensors
        rule = ctx.rule
        w_pos = _weight(rule.layer).detach().clamp(min=0)
        z_pos = forward_with(rule.layer, x, w_pos)
        if rule.eps:
            z_pos.add_(rule.eps)
        if rule.relevance_in:
            s = torch.div(g, z_pos, out=z_pos).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        else:
            s = _zplus_scale(g, z[0], z_pos)
        return input_gradient(rule.layer, s, x, w_pos), None


class ZPlusRule(GenericRule):
    """A conv/linear layer with the z⁺-rule backward (inputs assumed non-negative):
    ``c_in = W⁺ᵀ (c · z / (W⁺x + ε))``.

    The layer's pads (``Sequential(pad, conv)``) run as ordinary autograd ops; the layer itself
    runs once in the forward, and the backward makes W⁺ (one clamp of the weight, kept only for
    that backward) and calls the two aten kernels a convolution's forward and input gradient are
    made of. Profiled on EfficientNet-Lite0, the former route (a deep copy of every layer with
    W⁺, re-running it, pads included, under autograd in the backward) cost 2.4× a gradient.
    Layers :func:`~xplain.graph.kinds.direct_layer` cannot express keep that route
    (:class:`GenericRule`).
    ``relevance_in``: the layer feeds a :class:`RelevancePassRule` only, which hands back
    ``R = c · z`` (then ``c_in = W⁺ᵀ (R / (W⁺x + ε))``)."""

    def __init__(self, original: nn.Module, eps: float, relevance_in: bool = False):
        layer = unwrap(original)
        direct = direct_layer(layer)
        super().__init__(original, param_modifier=None if direct else _positive_weights)
        self.eps = eps
        self.layer = layer
        self.prefix = prefix_modules(original)
        self.relevance_in = relevance_in and direct

    def gradient_mapper(self, g, z, z_mod):
        return _divide(g * z, z_mod + self.eps)

    def forward(self, *args):
        if self.modified is not None:
            return super().forward(*args)
        (x,) = args
        for part in self.prefix:  # pads: their own autograd backward
            x = part(x)
        return _ZPlusFn.apply(x, self)


def _positive_weights(module: nn.Module) -> nn.Module:
    return _with_weight(module, _weight(module).detach().clamp(min=0))


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
    """A chooser applying the LRP composite ``mode`` (epsilon or zplus) to a converted graph.

    A layer whose output only feeds a rectifier ``clamp(z, 0, hi)`` (ReLU, ReLU6, Clip) is
    paired with it (:class:`RelevancePassRule`): the same relevance, fewer kernels; the gradient
    seen at such a layer's output (a tap) is then the relevance R_z rather than c_z."""

    kinds: dict[str, str] = {}
    attention_products: set[str] = set()
    paired: set[str] = set()  # rectifiers whose producer got a relevance_in rule

    def choose(model: Model, name: str, module: nn.Module):
        if not kinds:  # first call: the graph's non-linearities and attention products, once
            kinds.update({n: k for k, names in model.nonlinearities().items() for n in names})
            kinds.setdefault("", "")
            attention_products.update(model.attention_products())
        if name in skip:
            return None
        act = _activation_of(model, name)
        if act is not None:
            if name in paired:
                return RelevancePassRule(module)
            return PassRule(module, act.kind) if act.rectifier or act.kind in _SMOOTH else None
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
        rule: ZPlusRule | EpsilonRule
        if mode == ZPLUS and _is_weight_layer(module):
            rule = ZPlusRule(module, eps, relevance_in=True)
        elif _is_linear_op(module):
            rule = EpsilonRule(module, eps, relevance_in=True)
        else:
            return None
        rectifier = _sole_rectifier(model, name)
        if rectifier is None or rectifier in skip or not rule.relevance_in:
            rule.relevance_in = False
        else:
            paired.add(rectifier)
        return rule

    return choose


def _sole_rectifier(model: Model, name: str) -> str | None:
    """The rectifier node that is the only user of node ``name``, takes it as its only input and
    is ``clamp(·, 0, hi)`` (ReLU, ReLU6, Clip/Hardtanh with lower bound 0), or None."""
    node = model.node(name)
    if len(node.users) != 1:
        return None
    (user,) = node.users
    if user.op != "call_module" or user.args != (node,) or user.kwargs:
        return None
    act = _activation_of(model, user.name)
    if act is None or act.kind not in ("relu", "relu6", "clip", "hardtanh"):
        return None
    if act.bounds is None or act.bounds[0] != 0.0:
        return None
    return user.name


def zbox_relevance(
    module: nn.Module,
    x: torch.Tensor,
    relevance_out: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    eps: float = 1e-9,
) -> torch.Tensor:
    """The zᴮ-rule for the first layer (Montavon et al. 2017), inputs bounded in [low, high].

    R_i = Σ_j (x_i w_ij − l_i w⁺_ij − h_i w⁻_ij) / (Σ_i same) · R_j; returns R for ``x``.

    As W = W⁺ + W⁻, ``z = Wx − W⁺l − W⁻h = W⁺(x − l) + W⁻(x − h)``: one layer call over the two
    differences stacked along the input channels (weight ``[W⁺, W⁻]``), whose one backward gives
    the three input gradients. Profiled on EfficientNet-Lite0, three deep copies of the stem
    and three forwards and backwards cost a quarter of a gradient. Grouped layers and those
    :func:`~xplain.graph.kinds.direct_layer` rejects keep the three separate layers."""
    layer = unwrap(module)
    dims = _stack_dims(layer)
    if dims is None:
        return _zbox_separate(module, x, relevance_out, low, high, eps)
    input_dim, weight_dim = dims
    prefix = prefix_modules(module)
    w = _weight(layer).detach()
    stacked_w = torch.cat([w.clamp(min=0), w.clamp(max=0)], dim=weight_dim)
    with torch.enable_grad():
        xs = [t.detach().requires_grad_(True) for t in (x, low, high)]
        # pads with any constant value cancel in the differences
        padded = [_through(prefix, t) for t in xs]
        stacked = torch.cat([padded[0] - padded[1], padded[0] - padded[2]], dim=input_dim)
        z = forward_with(layer, stacked, stacked_w)
        s = _divide(relevance_out, _stabilise(z.detach(), eps))
        gx, gl, gh = torch.autograd.grad(z, xs, s)
    return x.detach() * gx + low * gl + high * gh


def _stack_dims(layer: nn.Module) -> tuple[int, int] | None:
    """(input dim, weight dim) along which inputs and weights of ``layer`` can be stacked so
    that one call sums the layers' outputs; None where they cannot (grouped convs)."""
    if not direct_layer(layer):
        return None
    if isinstance(layer, nn.Linear):
        return -1, 1
    conv = cast(nn.modules.conv._ConvNd, layer)
    if conv.groups != 1:
        return None
    return 1, 0 if conv.transposed else 1


def _through(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for m in modules:
        x = m(x)
    return x


def _zbox_separate(
    module: nn.Module,
    x: torch.Tensor,
    relevance_out: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """:func:`zbox_relevance` with three modified copies of ``module`` (any weight layer)."""
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
