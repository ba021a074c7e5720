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

from .kinds import direct_layer, input_gradient, prefix_modules, unwrap
from .model import Model
from .nonlinear import Activation

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
    convolutions in between. This is aten's own fused ReLU/Hardtanh backward (one kernel, one
    new tensor) and an in-place clamp. Under TR-GBP's backward batched over classes
    (``is_grads_batched``) those kernels have no batching rule (a loop over the classes and a
    concatenation), so they run once on the K×… tensor beneath (:func:`unbatched`), ``x``
    broadcast over K; where that tensor cannot be reached the mask comes from the unbatched
    forward input and only clamp and multiply touch the batched gradient."""
    if act.kind not in ("relu", "relu6", "clip", "hardtanh"):
        return None
    lo, hi = act.bounds if act.bounds is not None else (0.0, None)
    physical = unbatched(g)
    if physical is None and _is_batched(g):
        signal = g.clamp(min=0) if guided else g
        return signal * _pass_region(act, x, None)
    gp = g if physical is None else physical[0]
    if hi is None:
        grad = gp.clone() if lo is None else torch.ops.aten.threshold_backward(gp, x, lo)
    else:
        grad = torch.ops.aten.hardtanh_backward(gp, x, float("-inf") if lo is None else lo, hi)
    grad = grad.clamp_(min=0) if guided else grad  # Springenberg et al.: the mask times relu(g)
    return grad if physical is None else rebatched(grad, physical[1])


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


def unbatched(t: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """``(physical, level)`` for a gradient batched by ``torch.autograd.grad(...,
    is_grads_batched=True)``: the K×… tensor beneath it (K output gradients first) and the vmap
    level to :func:`rebatched` a result at; None for an ordinary tensor, a nested batch, or a
    torch without these (private) hooks — callers then compute on ``t`` as it is.

    ``is_grads_batched`` runs the backward under torch's legacy vmap, which has no batching
    rule for convolution, pad or ReLU backward kernels and runs them once per output gradient
    plus a concatenation (a quarter of TR-GBP's time on EfficientNet-Lite0). Rules that can
    fold K into the batch dimension do the work once on the physical tensor."""
    functorch = getattr(torch._C, "_functorch", None)
    is_legacy = getattr(functorch, "is_legacy_batchedtensor", None)
    remove = getattr(torch, "_remove_batch_dim", None)
    enter = getattr(torch._C, "_vmapmode_increment_nesting", None)
    leave = getattr(torch._C, "_vmapmode_decrement_nesting", None)
    if None in (is_legacy, remove, enter, leave, getattr(torch, "_add_batch_dim", None)):
        return None
    assert is_legacy is not None and remove is not None and enter is not None and leave is not None
    if not is_legacy(t):
        return None
    level = enter() - 1  # the level the batch was added at: the innermost one now
    leave()
    physical = remove(t, level, 0, 0)  # a view, K first (batch size is read off t)
    if is_legacy(physical) or physical.dim() != t.dim() + 1:
        return None
    return physical, level


def rebatched(physical: torch.Tensor, level: int) -> torch.Tensor:
    """The inverse of :func:`unbatched`: ``physical`` (K×…) as a batched tensor at ``level``."""
    return torch._add_batch_dim(physical, 0, level)


class _FoldedConvFn(torch.autograd.Function):
    """Forward: the conv module. Backward: its input gradient as one ``convolution_backward``
    call, over K·N images when the gradient is batched over K output gradients."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        ctx.shape = x.shape
        return layer(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        if not ctx.needs_input_grad[0]:
            return None, None
        layer, shape = ctx.layer, ctx.shape
        weight = cast(torch.Tensor, unwrap(layer).weight).detach()
        physical = unbatched(g)
        if physical is None:
            grad = input_gradient(layer, g, g.new_empty(1).expand(shape), weight)
            return grad, None
        gp, level = physical
        k = gp.shape[0]
        folded = gp.reshape(k * shape[0], *gp.shape[2:])
        grad = input_gradient(
            layer, folded, gp.new_empty(1).expand(k * shape[0], *shape[1:]), weight
        )
        return rebatched(grad.view(k, *shape), level), None


class FoldedConv(nn.Module):
    """A convolution whose backward folds a batch of output gradients into the images (see
    :func:`unbatched`); the same numbers as autograd's own convolution backward."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original = original

    def forward(self, x):
        return _FoldedConvFn.apply(x, self.original)


class _FoldedPadFn(torch.autograd.Function):
    """Forward: a constant pad (onnx2torch's static or dynamic Pad). Backward: the crop, as a
    view (also of the K×… tensor beneath a batched gradient)."""

    @staticmethod
    def forward(ctx, x, pad, begins, *rest):
        ctx.begins, ctx.shape = begins, x.shape
        return pad(x, *rest)

    @staticmethod
    def backward(ctx, g):
        physical = unbatched(g)
        gp, skip = (g, 0) if physical is None else (physical[0], 1)
        for dim, (begin, size) in enumerate(zip(ctx.begins, ctx.shape)):
            if gp.shape[skip + dim] != size:
                gp = gp.narrow(skip + dim, begin, size)
        grad = gp if physical is None else rebatched(gp, physical[1])
        return (grad, None, None, *([None] * (len(ctx.needs_input_grad) - 3)))


class FoldedPad(nn.Module):
    """A constant pad whose backward is a crop that also works on batched gradients; pads
    that crop (negative) keep autograd's own backward."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original = original

    def forward(self, x, *rest):
        begins = _pad_begins(self.original, x.dim(), rest)
        if begins is None:
            return self.original(x, *rest)
        return _FoldedPadFn.apply(x, self.original, begins, *rest)


def _pad_begins(pad: nn.Module, dims: int, rest: tuple) -> list[int] | None:
    """How many values a constant pad puts before each dimension (None if it crops anywhere):
    from a static pad's ``pads`` (torch order: last dimension first, (before, after) pairs) or
    a dynamic pad's ``pads`` input (ONNX order: all begins, then all ends)."""
    if type(pad).__name__ == "OnnxPadStatic":
        flat = [int(p) for p in cast(list, pad.pads)]
        befores = [0] * dims
        for i in range(len(flat) // 2):
            befores[dims - 1 - i] = flat[2 * i]
        return befores if min(flat, default=0) >= 0 else None
    if rest and isinstance(rest[0], torch.Tensor) and rest[0].numel() == 2 * dims:
        onnx = [int(p) for p in rest[0].tolist()]
        return onnx[:dims] if min(onnx) >= 0 else None
    return None


def _foldable_pad(module: nn.Module) -> bool:
    return (
        type(module).__name__ in ("OnnxPadStatic", "OnnxPadDynamic")
        and getattr(module, "mode", None) == "constant"
    )


def _foldable_conv(module: nn.Module) -> bool:
    layer = unwrap(module)
    return (
        isinstance(layer, nn.modules.conv._ConvNd)
        and direct_layer(layer)
        and all(_foldable_pad(m) for m in prefix_modules(module))
    )


def batched_backward(choose: Chooser) -> Chooser:
    """``choose``, plus convolutions and constant pads it leaves alone made cheap to
    differentiate with ``is_grads_batched`` (TR-GBP's one backward over K classes): their
    backward runs once over the K·N images (:func:`unbatched`) instead of once per class plus
    a concatenation. The same numbers as without; without a batched gradient, the same work."""

    def both(model: Model, name: str, module: nn.Module):
        chosen = choose(model, name, module)
        if chosen is not None:
            return chosen
        if _foldable_pad(module):
            return FoldedPad(module)
        if _foldable_conv(module):
            if isinstance(module, nn.Sequential):
                return nn.Sequential(
                    *[FoldedPad(m) for m in prefix_modules(module)], FoldedConv(unwrap(module))
                )
            return FoldedConv(module)
        return None

    return both


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
    for act in model._known.nonlinear.activations:  # the cached list (activations() copies it)
        if act.name == name:
            return act
    return None
