"""Modified back-propagation as graph rules.

Guided backprop, Deconvnet, TR-GBP, LRP and MIP-IN's gating all change how the gradient flows
through some modules while leaving the forward pass alone. A *rule* chooses, per module of
the converted graph, a replacement with the same forward and a custom backward
(``torch.autograd.Function``); :func:`apply_rules` swaps them in through
``Model.swap_modules``, which restores the graph on exit — also after an exception.

Every rectifier kind the loader reports gets the rectifier rules: ReLU, ReLU6, Clip,
Hardtanh, LeakyReLU and PReLU. (Captum's guided backprop hooks only ``nn.ReLU`` and silently
returns the plain gradient through a ReLU6; these rules do not.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import nn

from .model import Activation, Model

GUIDED = "guided"
DECONVNET = "deconvnet"
PLAIN = "plain"
MODES = (GUIDED, DECONVNET, PLAIN)

Chooser = Callable[[Model, str, nn.Module], "nn.Module | None"]


@contextlib.contextmanager
def apply_rules(model: Model, choose: Chooser) -> Iterator[dict[str, nn.Module]]:
    """Swap in ``choose(model, node_name, module)`` for every module it returns one for.

    Yields the replacements by node name; the original modules are back on exit."""
    replacements = {}
    for node in model.graph.graph.nodes:
        if node.op != "call_module":
            continue
        new = choose(model, node.name, model.graph.get_submodule(node.target))
        if new is not None:
            replacements[node.name] = new
    with model.swap_modules(replacements):
        yield replacements


def _pass_region(act: Activation, x: torch.Tensor, slope: torch.Tensor | None) -> torch.Tensor:
    """The rectifier's local derivative at ``x`` (1 where it passes the signal)."""
    if act.kind in ("relu", "relu6", "clip", "hardtanh"):
        lo, hi = act.bounds if act.bounds is not None else (0.0, None)
        mask = torch.ones_like(x, dtype=torch.bool)
        if lo is not None:
            mask &= x > lo
        if hi is not None:
            mask &= x < hi
        return mask.to(x.dtype)
    if act.kind == "leaky_relu":
        return torch.where(
            x > 0, torch.ones_like(x), torch.full_like(x, cast(float, act.module.negative_slope))
        )
    if act.kind == "prelu":
        return torch.where(x > 0, torch.ones_like(x), _broadcast_slope(slope, x))
    raise ValueError(f"no rectifier rule for activation kind {act.kind!r}")


def _negative_slope(
    act: Activation, g: torch.Tensor, slope: torch.Tensor | None
) -> torch.Tensor | float:
    if act.kind == "leaky_relu":
        return cast(float, act.module.negative_slope)
    if act.kind == "prelu":
        return _broadcast_slope(slope, g)
    return 0.0


def _broadcast_slope(slope: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if slope is None:
        return torch.full_like(like, 0.25)
    if slope.numel() == 1:
        return slope.reshape(()).expand_as(like)
    shape = [1] * like.dim()
    shape[1] = slope.numel()
    return slope.reshape(shape).expand_as(like)


def _clamp_rule(
    g: torch.Tensor, act: Activation, x: torch.Tensor, guided: bool
) -> torch.Tensor | None:
    """The plain (``g`` where lo < x < hi, else 0) or guided (the same of relu(g)) backward of a
    clamp-type rectifier, or None for other kinds.

    Profiled on EfficientNet-Lite0 (33 ReLU6): building the mask from two comparisons, a cast and
    a multiply cost a quarter of guided backprop's time, more than the backward of the
    convolutions in between. Outside vmap this is aten's own fused ReLU/Hardtanh backward (one
    kernel, one new tensor) and an in-place clamp. Under vmap (TR-GBP's backward batched over
    classes: ``is_grads_batched``) those kernels and in-place ops have no batching rule and fall
    back to a loop over the classes and a concatenation, so there the mask comes from the
    unbatched forward input and only clamp and multiply touch the batched gradient."""
    if act.kind not in ("relu", "relu6", "clip", "hardtanh"):
        return None
    lo, hi = act.bounds if act.bounds is not None else (0.0, None)
    if _is_batched(g):
        signal = g.clamp(min=0) if guided else g
        return signal * _pass_region(act, x, None)
    if hi is None:
        grad = g.clone() if lo is None else torch.ops.aten.threshold_backward(g, x, lo)
    else:
        grad = torch.ops.aten.hardtanh_backward(g, x, float("-inf") if lo is None else lo, hi)
    return grad.clamp_(min=0) if guided else grad  # Springenberg et al.: the mask times relu(g)


def _is_batched(t: torch.Tensor) -> bool:
    """Whether ``t`` is batched by vmap (``is_grads_batched`` uses the legacy batching)."""
    functorch = getattr(torch._C, "_functorch", None)
    return any(
        check is not None and check(t)
        for check in (
            getattr(functorch, "is_legacy_batchedtensor", None),
            getattr(functorch, "is_batchedtensor", None),
        )
    )


class _RectifierFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rule, *rest):
        ctx.rule = rule
        ctx.save_for_backward(x, *[r for r in rest if isinstance(r, torch.Tensor)])
        return rule.original(x, *rest)

    @staticmethod
    def backward(ctx, g):
        x, *rest = ctx.saved_tensors
        rule = ctx.rule
        slope = rest[0] if rest else None
        act = rule.activation
        grad = None
        if rule.mode in (GUIDED, PLAIN):
            grad = _clamp_rule(g, act, x, rule.mode == GUIDED)
        if grad is not None:
            pass  # clamp-type rectifier, done above
        elif rule.mode == GUIDED:  # LeakyReLU / PReLU
            grad = g.clamp(min=0) * _pass_region(act, x, slope)
        elif (
            rule.mode == DECONVNET
        ):  # Zeiler & Fergus: rectify the backward signal, ignore the forward
            neg = _negative_slope(act, g, slope)
            grad = (
                g.clamp(min=0)
                if isinstance(neg, float) and neg == 0.0
                else torch.where(g > 0, g, g * neg)
            )
        else:
            grad = g * _pass_region(act, x, slope)
        return (grad, None, *([None] * (len(ctx.needs_input_grad) - 2)))


class RectifierRule(nn.Module):
    """A rectifier with an unchanged forward and a guided / deconvnet / plain backward."""

    def __init__(self, original: nn.Module, activation: Activation, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.original = original
        self.activation = activation
        self.mode = mode

    def forward(self, x, *rest):
        return _RectifierFn.apply(x, self, *rest)


def rectifier_rules(mode: str) -> Chooser:
    """A chooser giving every rectifier the ``mode`` backward (guided, deconvnet or plain)."""

    def choose(model: Model, name: str, module: nn.Module):
        act = _activation_of(model, name)
        if act is None or not act.rectifier:
            return None
        return RectifierRule(module, act, mode)

    return choose


def _activation_of(model: Model, name: str) -> Activation | None:
    for act in model._activations:  # the cached list (activations() copies it)
        if act.name == name:
            return act
    return None
