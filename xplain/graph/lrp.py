"""Layer-wise relevance propagation as graph rules (Bach et al. 2015; Montavon et al. 2017).

Relevance is carried as a "gradient" ``c`` with ``R = a * c`` for every activation ``a``, so
one backward pass of the target logit under these rules gives ``R_input = x * c_x``:

* linear operations — conv, linear, Gemm, MatMul, BatchNorm (its own elementwise affine rule),
  average and global pooling, adds (residual or constant): the ε-rule. The incoming ``c`` is
  scaled by ``z / (z + ε·sign z)`` before the ordinary backward, which splits the relevance of a
  residual add in proportion to its inputs;
* rectifiers (every kind the loader reports): relevance passes unchanged, ``R_z = R_a``;
* max-pooling, flatten, reshape, concat: the ordinary backward (winner-take-all, routing);
* with ``zplus``: conv/linear layers use the z⁺-rule ``R_a = a * W⁺ᵀ(R_z / W⁺a)`` instead
  (deep Taylor for non-negative inputs), and the first layer the zᴮ-rule with the input's bounds
  (see :func:`zbox_relevance`).

Relevance absorbed by biases is not passed on; on bias-free ReLU networks the input relevance
sums to the target logit (conservation) as ε → 0.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .model import Model
from .rules import Chooser, _activation_of

EPSILON = "epsilon"
ZPLUS = "zplus"


def _stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with 0 where den == 0 (no relevance arrives there: ε = 0 is allowed)."""
    safe = torch.where(den != 0, den, torch.ones_like(den))
    return torch.where(den != 0, num / safe, torch.zeros_like(num))


class _EpsilonScale(torch.autograd.Function):
    """Identity forward; backward multiplies by z / (z + ε sign z)."""

    @staticmethod
    def forward(ctx, z, eps):
        ctx.save_for_backward(z)
        ctx.eps = eps
        return z.view_as(z)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return _divide(g * z, _stabilise(z, ctx.eps)), None


class EpsilonRule(nn.Module):
    """A linear operation whose backward applies the ε-rule."""

    def __init__(self, original: nn.Module, eps: float):
        super().__init__()
        self.original, self.eps = original, eps

    def forward(self, *args):
        return _EpsilonScale.apply(self.original(*args), self.eps)


class _PassFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, rule, *rest):
        a = rule.original(z, *rest)
        ctx.save_for_backward(z, a)
        return a

    @staticmethod
    def backward(ctx, g):
        z, a = ctx.saved_tensors
        ratio = torch.where(z != 0, a / torch.where(z != 0, z, torch.ones_like(z)), torch.zeros_like(z))
        return (g * ratio, None, *([None] * (len(ctx.needs_input_grad) - 2)))


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
    layer = clone[-1] if isinstance(clone, nn.Sequential) else clone
    layer.weight = nn.Parameter(weight, requires_grad=False)
    layer.bias = None
    return clone


def _weight(module: nn.Module) -> torch.Tensor:
    return (module[-1] if isinstance(module, nn.Sequential) else module).weight


class _ZPlusFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rule):
        z = rule.original(x)
        ctx.save_for_backward(x, z)
        ctx.rule = rule
        return z

    @staticmethod
    def backward(ctx, g):
        x, z = ctx.saved_tensors
        rule = ctx.rule
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            zp = rule.positive(xd)
            s = _divide(g * z, zp + rule.eps)
            (c,) = torch.autograd.grad(zp, xd, s)
        return c, None


class ZPlusRule(nn.Module):
    """A conv/linear layer with the z⁺-rule backward (inputs assumed non-negative)."""

    def __init__(self, original: nn.Module, eps: float):
        super().__init__()
        self.original, self.eps = original, eps
        self.positive = _with_weight(original, _weight(original).detach().clamp(min=0))

    def forward(self, x):
        return _ZPlusFn.apply(x, self)


def _is_weight_layer(module: nn.Module) -> bool:
    layer = module[-1] if isinstance(module, nn.Sequential) and len(module) else module
    return isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))


def _is_linear_op(module: nn.Module) -> bool:
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    from onnx2torch.node_converters.gemm import OnnxGemm
    from onnx2torch.node_converters.global_average_pool import (OnnxGlobalAveragePool,
                                                                 OnnxGlobalAveragePoolWithKnownInputShape)
    from onnx2torch.node_converters.matmul import OnnxMatMul
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes, OnnxReduceSumStaticAxes

    if _is_weight_layer(module):
        return True
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                           nn.AdaptiveAvgPool2d, OnnxGemm, OnnxMatMul, OnnxGlobalAveragePool,
                           OnnxGlobalAveragePoolWithKnownInputShape, OnnxReduceSumStaticAxes)):
        return True
    if isinstance(module, OnnxReduceStaticAxes):
        return module.operation_type in ("ReduceMean", "ReduceSum")
    if isinstance(module, OnnxBinaryMathOperation):
        return module.math_op_function in (torch.add, torch.sub)
    return False


def first_weight_layer(model: Model) -> str | None:
    """The first conv/linear node the input reaches (the zᴮ-rule's layer)."""
    for node in model.graph.graph.nodes:
        if node.op == "call_module" and _is_weight_layer(model.graph.get_submodule(node.target)):
            return node.name
    return None


def lrp_rules(mode: str = EPSILON, eps: float = 1e-6, skip: tuple[str, ...] = ()) -> Chooser:
    """A chooser applying the LRP composite ``mode`` (epsilon or zplus) to a converted graph."""

    def choose(model: Model, name: str, module: nn.Module):
        if name in skip:
            return None
        act = _activation_of(model, name)
        if act is not None:
            return PassRule(module) if act.rectifier else None
        if mode == ZPLUS and _is_weight_layer(module):
            return ZPlusRule(module, eps)
        if _is_linear_op(module):
            return EpsilonRule(module, eps)
        return None

    return choose


def zbox_relevance(module: nn.Module, x: torch.Tensor, relevance_out: torch.Tensor, low: torch.Tensor,
                   high: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """The zᴮ-rule for the first layer (Montavon et al. 2017), inputs bounded in [low, high].

    R_i = Σ_j (x_i w_ij − l_i w⁺_ij − h_i w⁻_ij) / (Σ_i same) · R_j; returns R for ``x``."""
    w = _weight(module).detach()
    plain, pos, neg = module, _with_weight(module, w.clamp(min=0)), _with_weight(module, w.clamp(max=0))
    with torch.enable_grad():
        xs = [t.detach().clone().requires_grad_(True) for t in (x, low, high)]
        outs = [plain_no_bias(plain, xs[0]), pos(xs[1]), neg(xs[2])]
        z = outs[0] - outs[1] - outs[2]
        s = _divide(relevance_out, _stabilise(z, eps))
        grads = torch.autograd.grad(outs, xs, [s, s, s])
    return xs[0].detach() * grads[0] - low * grads[1] - high * grads[2]


def plain_no_bias(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _with_weight(module, _weight(module).detach())(x)
