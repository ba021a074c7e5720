"""zennit's LRP layer rules and composites on the converted graph, with zennit's numbers.

zennit (Anders et al., "Software for dataset-wide XAI", 2021) is what most users compare LRP
maps with. Its rules differ from :mod:`xplain.graph.lrp`'s in three places, each reproduced here:

* **bias** — zennit's z⁺ (``ZPlus``) puts the positive part of the bias into the denominator
  (``W⁺x⁺ + b⁺ + W⁻x⁻``), so a layer absorbs relevance; the deep-Taylor z⁺ of
  ``lrp-zplus``'s default has no bias term (``W⁺x``) and conserves relevance layer by layer.
  Gamma and αβ put ``b + γb⁺`` / ``b⁺`` and ``b + γb⁻`` / ``b⁻`` into their positive and negative
  denominators (:class:`ZennitLayerRule`);
* **inputs of both signs** — zennit's rules split each input into x⁺ and x⁻ and pair each with
  the weights of the matching sign (generalised z⁺, γ and αβ), so they are defined for the
  preprocessed image as well as for ReLU outputs;
* **BatchNorm** — zennit's ``SequentialMergeBatchNorm`` canonizer folds a BatchNorm into the
  conv/linear layer before it, and the layer's rule then sees the folded weights and bias
  (:func:`merge_batchnorm`). Both ONNX exporters fold BatchNorm into Conv already in eval mode,
  so on most converted graphs this changes nothing; it matters where a BatchNorm survives.

The residual add needs no canonizer here: zennit's ``ResNetCanonizer`` turns the add into a
``Sum`` module with the ``Norm`` rule (relevance split in proportion to the summands), which is
the ε-rule on an add that :mod:`xplain.graph.lrp` applies to every add already.

Relevance is carried as in :mod:`xplain.graph.lrp`: the backward of a layer receives ``c`` with
``R = z · c`` at its output and returns ``c_in`` with ``R_in = x · c_in``. zennit's rules have the
form ``R_in = x⁺ · A⁺ᵀs + x⁻ · A⁻ᵀs``, so ``c_in = A⁺ᵀs`` where x > 0 and ``A⁻ᵀs`` where x < 0:
no division by the input. The first-layer rules (zᴮ, flat) have no factor x and are applied
by the method on the first layer's tapped relevance (:func:`flat_relevance`,
:func:`~xplain.graph.lrp.zbox_relevance`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import cast

import torch
from torch import nn

from .kinds import (
    BATCHNORM,
    batchnorm_affine,
    direct_layer,
    forward_with,
    input_gradient,
    prefix_modules,
    unwrap,
    weight_layer,
)
from .lrp import EPSILON, EpsilonRule, lrp_rules
from .model import Model
from .rules import Chooser

#: conv-layer rules of zennit, by xplain's name
ZPLUS = "zplus"  # zennit.rules.ZPlus: α=1, β=0 with the bias b⁺
GAMMA = "gamma"  # zennit.rules.Gamma (generalised to inputs of both signs)
ALPHA_BETA = "alpha2beta1"  # zennit.rules.AlphaBeta(alpha=2, beta=1)
LAYER_RULES = (EPSILON, ZPLUS, GAMMA, ALPHA_BETA)

#: zennit's built-in layer-map composites: (conv rule, first-layer rule or "")
COMPOSITES: dict[str, tuple[str, str]] = {
    "epsilon-plus": (ZPLUS, ""),
    "epsilon-plus-flat": (ZPLUS, "flat"),
    "epsilon-gamma-box": (GAMMA, "zbox"),
    "epsilon-alpha2-beta1": (ALPHA_BETA, ""),
    "epsilon-alpha2-beta1-flat": (ALPHA_BETA, "flat"),
}


def stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    """zennit's stabiliser: ``z + ε · sign z`` with sign 0 = +1."""
    return z + torch.where(z >= 0, eps, -eps)


class _LinearMap:
    """The layer's linear part with another weight (no bias) and its transpose: aten calls for
    a :func:`~xplain.graph.kinds.direct_layer`, a modified copy under autograd otherwise."""

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.direct = direct_layer(layer)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.direct:
            return forward_with(self.layer, x, weight)
        return _with_weight(self.layer, weight)(x)

    def transpose(self, s: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.direct:
            return input_gradient(self.layer, s, x, weight)
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(_with_weight(self.layer, weight)(xd), xd, s)
        return g


def _with_weight(layer: nn.Module, weight: torch.Tensor) -> nn.Module:
    clone = copy.deepcopy(layer)
    clone._forward_hooks.clear()  # a tap's hooks are not the copy's
    clone._forward_pre_hooks.clear()
    clone.weight = nn.Parameter(weight, requires_grad=False)
    clone.register_parameter("bias", None)
    return clone


def _bias_view(layer: nn.Module, like: torch.Tensor) -> torch.Tensor | None:
    bias = getattr(layer, "bias", None)
    if bias is None:
        return None
    shape = (1, -1) + (1,) * (like.dim() - 2) if not isinstance(layer, nn.Linear) else (-1,)
    return bias.detach().reshape(shape)


def _plus(t: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    return t if extra is None else t + extra


class _ZennitFn(torch.autograd.Function):
    """Forward: the layer. Backward: ``c_in`` of :class:`ZennitLayerRule`'s rule."""

    @staticmethod
    def forward(ctx, x, rule):
        z = rule.layer(x)
        ctx.save_for_backward(x, z)
        ctx.rule = rule
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, c):
        x, z = ctx.saved_tensors
        return ctx.rule.input_c(x, z, c), None


class ZennitLayerRule(nn.Module):
    """A conv/linear layer with one of zennit's two-sign rules (z⁺, γ, αβ).

    With ``A`` / ``B`` the weights paired with positive / negative inputs and ``a`` / ``b``
    their biases — z⁺ and αβ: ``A = W⁺, B = W⁻, a = b⁺, b = b⁻``; γ: ``A = W + γW⁺,
    B = W + γW⁻, a = b + γb⁺, b = b + γb⁻`` — and ``R = z · c`` the relevance at the output:

    * positive part: ``s⁺ = α R / stab(A x⁺ + a + B x⁻)`` (γ: only where z > 0, α = 1);
    * negative part: ``s⁻ = −β R / stab(B x⁺ + b + A x⁻)`` (γ: only where z < 0, with + sign
      and weight 1; z⁺: none);
    * ``R_in = x⁺ · (Aᵀs⁺ + Bᵀs⁻) + x⁻ · (Bᵀs⁺ + Aᵀs⁻)``.

    These are zennit 0.5's ``ZPlus``, ``Gamma`` and ``AlphaBeta`` hooks term by term (their
    ``zero_params`` default: the bias of the terms on x⁻ is dropped)."""

    def __init__(
        self,
        original: nn.Module,
        kind: str,
        stabilizer: float = 1e-6,
        gamma: float = 0.25,
        alpha: float = 2.0,
        beta: float = 1.0,
    ):
        super().__init__()
        if kind not in (ZPLUS, GAMMA, ALPHA_BETA):
            raise ValueError(f"unknown zennit layer rule {kind!r}")
        self.original = original
        self.layer = unwrap(original)
        self.prefix = prefix_modules(original)
        self.kind, self.stabilizer, self.gamma = kind, stabilizer, gamma
        self.alpha, self.beta = {ZPLUS: (1.0, 0.0), GAMMA: (1.0, 1.0)}.get(kind, (alpha, beta))
        self.linear = _LinearMap(self.layer)

    def forward(self, x):
        for part in self.prefix:  # pads: their own autograd backward
            x = part(x)
        return _ZennitFn.apply(x, self)

    def _weights(self):
        w = cast(torch.Tensor, self.layer.weight).detach()
        pos, neg = w.clamp(min=0), w.clamp(max=0)
        if self.kind == GAMMA:
            return w + self.gamma * pos, w + self.gamma * neg
        return pos, neg

    def _biases(self, like: torch.Tensor):
        b = _bias_view(self.layer, like)
        if b is None:
            return None, None
        pos, neg = b.clamp(min=0), b.clamp(max=0)
        if self.kind == GAMMA:
            return b + self.gamma * pos, b + self.gamma * neg
        return pos, neg

    def input_c(self, x: torch.Tensor, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        relevance = c * z
        w_a, w_b = self._weights()
        b_a, b_b = self._biases(z)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        ap, bp = self.linear(xp, w_a), self.linear(xp, w_b)
        an, bn = self.linear(xn, w_a), self.linear(xn, w_b)
        gamma = self.kind == GAMMA
        s_pos = relevance * self.alpha / stabilise(_plus(ap, b_a) + bn, self.stabilizer)
        if gamma:
            s_pos = s_pos * (z > 0)
        parts = [(s_pos, w_a, w_b)]
        if gamma or self.beta:
            s_neg = relevance / stabilise(_plus(bp, b_b) + an, self.stabilizer)
            s_neg = s_neg * (z < 0) if gamma else s_neg * -self.beta
            parts.append((s_neg, w_b, w_a))
        positive = x > 0
        out = torch.zeros_like(x)
        for s, on_pos, on_neg in parts:
            out += torch.where(
                positive,
                self.linear.transpose(s, x, on_pos),
                self.linear.transpose(s, x, on_neg),
            )
        return out


def layer_rules(
    conv: str = EPSILON,
    linear: str = EPSILON,
    epsilon: float = 1e-6,
    stabilizer: float = 1e-6,
    gamma: float = 0.25,
    skip: tuple[str, ...] = (),
) -> Chooser:
    """A chooser: convolutions get the rule ``conv``, other conv/linear layers ``linear``
    (one of :data:`LAYER_RULES`; ε with ``epsilon``, the others with ``stabilizer``), and every
    other module what ``lrp-epsilon`` gives it (:func:`~xplain.graph.lrp.lrp_rules`) with
    ``stabilizer`` as its ε — zennit's ``Norm`` on adds and average pooling, ``Pass`` on
    activations. zennit's layer-map composites are ``layer_rules(conv=…, linear="epsilon")``."""
    for rule in (conv, linear):
        if rule not in LAYER_RULES:
            raise ValueError(f"unknown layer rule {rule!r}: one of {LAYER_RULES}")
    rest = lrp_rules(EPSILON, stabilizer, skip=skip)

    def choose(model: Model, name: str, module: nn.Module):
        layer = weight_layer(module)
        if layer is None or name in skip:
            return rest(model, name, module)
        is_conv = isinstance(layer, nn.modules.conv._ConvNd)
        rule = conv if is_conv else linear
        if rule == EPSILON:
            return EpsilonRule(module, epsilon)
        return ZennitLayerRule(module, rule, stabilizer=stabilizer, gamma=gamma)

    return choose


def flat_relevance(
    module: nn.Module, x: torch.Tensor, relevance_out: torch.Tensor, stabilizer: float = 1e-6
) -> torch.Tensor:
    """zennit's flat rule for the first layer (Lapuschkin et al. 2019): every input of a
    receptive field gets an equal share, ``R_i = Σ_j R_j / stab(#inputs of j)`` — the layer with
    all weights 1 and no bias applied to an all-ones input. Pads in ``module`` stay zeros, so a
    border output spreads its relevance over its real inputs only. Returns R for ``x``."""
    layer = unwrap(module)
    ones_w = torch.ones_like(cast(torch.Tensor, layer.weight).detach())
    linear = _LinearMap(layer)  # never the module's own forward: a tap may sit on it
    with torch.enable_grad():
        ones = torch.ones_like(x).requires_grad_(True)
        padded = ones
        for part in prefix_modules(module):
            padded = part(padded)
        out = linear(padded, ones_w)
        s = relevance_out / stabilise(out.detach(), stabilizer)
        (g,) = torch.autograd.grad(padded, ones, linear.transpose(s, padded, ones_w))
        r = g
    return r


def _foldable(layer: nn.Module | None) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed


def batchnorm_merges(model: Model) -> dict[str, nn.Module]:
    """zennit's ``SequentialMergeBatchNorm`` as module replacements: every BatchNorm whose input
    is a conv/linear layer used by nothing else becomes an identity, and that layer a copy with
    the BatchNorm folded in (``W·scale``, ``b·scale + shift``). The model's output is unchanged
    (to float rounding); the layer's output is then the BatchNorm's."""
    out: dict[str, nn.Module] = {}
    for node in model.graph.graph.nodes:
        if node.op != "call_module":
            continue
        bn = model.graph.get_submodule(str(node.target))
        if not isinstance(bn, BATCHNORM) or not node.args:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        original = model.graph.get_submodule(str(src.target))
        if not _foldable(weight_layer(original)):
            continue
        scale, shift = batchnorm_affine(bn)
        folded = copy.deepcopy(original)
        layer = unwrap(folded)
        weight = cast(torch.Tensor, layer.weight).detach()
        shape = (-1,) + (1,) * (weight.dim() - 1)
        own = cast("torch.Tensor | None", layer.bias)
        bias = own.detach() if own is not None else torch.zeros_like(shift)
        layer.weight = nn.Parameter(weight * scale.reshape(shape), requires_grad=False)
        layer.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
        out[src.name] = folded
        out[node.name] = nn.Identity()
    return out


@contextlib.contextmanager
def merge_batchnorm(model: Model, enabled: bool = True) -> Iterator[list[str]]:
    """Fold BatchNorms into their conv/linear layers for the duration (see
    :func:`batchnorm_merges`); yields the merged BatchNorm nodes. Rules applied inside see the
    folded layers; the graph is restored on exit."""
    merges = batchnorm_merges(model) if enabled else {}
    bns = [n for n, m in merges.items() if isinstance(m, nn.Identity)]
    with model.swap_modules(merges):
        yield bns
