"""One generic backward rule, from which the LRP rules are small classes (as in zennit).

Relevance is carried as a "gradient" ``c`` (``R = a * c``). A :class:`GenericRule` keeps its
module's forward and changes the backward in two ways:

* ``gradient_mapper(g, z, z_mod)`` maps the incoming ``c`` (``g``) using the forward output ``z``
  and the modified output ``z_mod``; the result is sent back through the modified forward;
* ``param_modifier`` (applied once, to a copy of the module) and ``input_modifier`` define that
  modified forward ``z_mod = modified(input_modifier(x))``.

Without modifiers the backward is the module's own autograd with ``c`` replaced by the mapped
value (no second forward): the ε-rule. With a parameter modifier the modified forward is re-run
in the backward and differentiated: the z⁺-rule (positive weights) on layers its faster aten
route (:class:`xplain.graph.lrp.ZPlusRule`) does not cover.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class _MapOutputGrad(torch.autograd.Function):
    """Identity forward; backward replaces ``g`` by ``rule.gradient_mapper(g, z, z)``."""

    @staticmethod
    def forward(ctx, z, rule):
        ctx.save_for_backward(z)
        ctx.rule = rule
        return z.view_as(z)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return ctx.rule.gradient_mapper(g, z, z), None


class _ModifiedBackward(torch.autograd.Function):
    """Forward through the original module; backward through the modified one."""

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
            z_mod = rule.modified(rule.input_modifier(xd))
            (c,) = torch.autograd.grad(z_mod, xd, rule.gradient_mapper(g, z, z_mod))
        return c, None


class GenericRule(nn.Module):
    """A module with its forward unchanged and the backward described in the module docstring.

    Subclasses override :meth:`gradient_mapper` (and :meth:`input_modifier`) and pass a
    ``param_modifier`` (``module -> modified copy``); a rule with a modifier takes one input."""

    def __init__(
        self, original: nn.Module, param_modifier: Callable[[nn.Module], nn.Module] | None = None
    ):
        super().__init__()
        self.original = original
        self.modified = param_modifier(original) if param_modifier is not None else None

    def gradient_mapper(
        self, g: torch.Tensor, z: torch.Tensor, z_mod: torch.Tensor
    ) -> torch.Tensor:
        return g

    def input_modifier(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, *args):
        if self.modified is None:
            return _MapOutputGrad.apply(self.original(*args), self)
        return _ModifiedBackward.apply(*args, self)
