"""DeepLIFT's rescale rule as graph rules (Shrikumar et al. 2017).

DeepLIFT propagates *multipliers* m = Δout/Δin instead of gradients through every non-linearity,
where Δ is the difference between the input's and the reference's (baseline's) forward values.
Linear layers keep their gradient, so the "gradient" of the logit with respect to the input
under the replaced backward is the multiplier of each input unit, and ``(x − x') · m`` sums to
``f(x) − f(x')`` on networks of linear layers, rectifiers and max-pooling (summation-to-delta).

How the pairs are formed: Captum runs input and baseline as one batch of 2B and splits every
non-linearity's tensors in half. Here the baseline runs first (no autograd), every replaced
module records its input and output per call, and the input's forward then pairs call k with
the k-th record. That gives the same Δ, costs the same two forwards, keeps no autograd state for
the baseline, and also works on graphs fixed at batch 1 (``Model.__call__`` then calls the graph
once per sample, in the same order for both forwards).

Rules (each has the module's own forward; only the backward changes):

* every elementwise activation the loader names (:attr:`Model.activations`: ReLU, ReLU6, Clip,
  Hardtanh, LeakyReLU, PReLU, and sigmoid/tanh-type gates): ``g · Δout/Δin``, and the plain
  gradient where ``|Δin| < eps`` (Captum's ``nonlinear`` with ``eps = 1e-10``);
* max-pooling (``maxpool="rescale"``; the default ``"gradient"`` keeps the plain gradient, as
  the authors' kundajelab/deeplift does by default): Captum's rule — the change of each pooled output, split at
  ``max(out, out')`` into the part from the input's maximum and the part from the reference's,
  is routed back to the position of each maximum and divided by Δin (plain gradient where
  ``|Δin| < eps``). Deviation, on purpose: the routing *accumulates* where overlapping windows
  share a maximum (a ResNet's 3×3/2 pool), where Captum's ``max_unpool`` keeps only one window's
  share and so breaks summation-to-delta; and the fallback uses each sample's own gradient
  (Captum 0.9 broadcasts the first sample's, captum issue #1276). With non-overlapping windows
  and a batch of one the two agree in the rule itself — but in Captum the rule is lost
  whenever a hooked non-linearity feeds the pool (conv → ReLU → max-pool, every ResNet and VGG):
  both register tensor hooks on the same tensor, the ReLU's records the pool's gradient before
  the pool's hook rewrites it, and the ReLU's multiplier is then built on the plain max-pool
  gradient (Captum's own convergence delta is then far from 0). ``maxpool="gradient"`` is
  that plain-gradient variant, which is what Captum returns on such networks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .kinds import unwrap
from .model import Model
from .nonlinear import Activation
from .rules import _clamp_rule, apply_rules

#: Captum's threshold below which a unit counts as unchanged (plain gradient there)
EPS = 1e-10

_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
#: how max-pooling is treated: DeepLIFT's rule, or its plain gradient
MAXPOOL_RULES = ("rescale", "gradient")


class _Pairing:
    """Shared by the rules of one run: whether the reference forward is being recorded."""

    def __init__(self) -> None:
        self.recording = False


def _vjp(module: nn.Module, x: torch.Tensor, rest: tuple, v: torch.Tensor) -> torch.Tensor:
    """``vᵀ · ∂module(x)/∂x``: the module's own backward at ``x`` (one small re-evaluation)."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(module(xx, *rest), xx, v)
    return grad


class _RescaleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rule, x_ref, out_ref, *rest):
        out = rule.original(x, *rest)
        ctx.rule, ctx.rest = rule, rest
        ctx.save_for_backward(x, out, x_ref, out_ref)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, out, x_ref, out_ref = ctx.saved_tensors
        rule = ctx.rule
        delta_in = x - x_ref
        if rule.pool:
            # route g·(max(out, out') − out') to the input's maxima and g·(out − max) to the
            # reference's (the two shares of Δout), accumulating over overlapping windows
            top = torch.maximum(out, out_ref)
            routed = _vjp(rule.original, x, ctx.rest, g * (top - out_ref)) + _vjp(
                rule.original, x_ref, ctx.rest, g * (out - top)
            )
            grad = routed.div_(delta_in)
        else:
            grad = (out - out_ref).mul_(g).div_(delta_in)  # Captum's order: g·Δout / Δin
        small = delta_in.abs_() < rule.eps
        # the plain gradient where the unit did not change: aten's fused rectifier backward for
        # clamp-type rectifiers (profiled: on Lite0 most ReLU6 have such units), else autograd
        plain = None if rule.activation is None else _clamp_rule(g, rule.activation, x, False)
        if plain is None:
            if not bool(small.any()):
                return (grad, None, None, None, *([None] * len(ctx.rest)))
            plain = _vjp(rule.original, x, ctx.rest, g)
        return (torch.where(small, plain, grad), None, None, None, *([None] * len(ctx.rest)))


class RescaleRule(nn.Module):
    """A non-linearity with its own forward and DeepLIFT's multiplier as its backward."""

    def __init__(
        self,
        original: nn.Module,
        pairing: _Pairing,
        pool: bool,
        eps: float = EPS,
        activation: Activation | None = None,
    ):
        super().__init__()
        self.original = original
        self.activation = activation
        self.pairing = pairing
        self.pool = pool
        self.eps = eps
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.calls = 0

    def forward(self, x, *rest):
        if self.pairing.recording:
            out = self.original(x, *rest)
            self.records.append((x.detach(), out.detach()))
            return out
        if self.calls >= len(self.records):
            raise RuntimeError("deeplift: the input's forward has more calls than the reference's")
        x_ref, out_ref = self.records[self.calls]
        self.calls += 1
        return _RescaleFn.apply(x, self, x_ref, out_ref, *rest)


def _is_maxpool(module: nn.Module) -> bool:
    return isinstance(unwrap(module), _MAXPOOL)


@contextlib.contextmanager
def rescale_rules(
    model: Model, eps: float = EPS, maxpool: str = "gradient"
) -> Iterator[tuple[_Pairing, dict]]:
    """DeepLIFT's rules on every activation and (``maxpool="rescale"``) every max-pool of
    ``model``, restored on exit; ``maxpool="gradient"`` leaves max-pools their plain gradient.

    Yields ``(pairing, replacements)``: set ``pairing.recording`` while running the reference."""
    if maxpool not in MAXPOOL_RULES:
        raise ValueError(f"maxpool must be one of {MAXPOOL_RULES}")
    pairing = _Pairing()
    activations = {a.name: a for a in model.activations()}

    def choose(model: Model, name: str, module: nn.Module):
        if name in activations:
            return RescaleRule(module, pairing, pool=False, eps=eps, activation=activations[name])
        if maxpool == "rescale" and _is_maxpool(module):
            return RescaleRule(module, pairing, pool=True, eps=eps)
        return None

    with apply_rules(model, choose) as swapped:
        yield pairing, swapped


def deeplift_multipliers(
    model: Model,
    x: torch.Tensor,
    reference: torch.Tensor,
    targets: torch.Tensor,
    eps: float = EPS,
    maxpool: str = "gradient",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """DeepLIFT's multipliers ∂ᴰᴸ logit[target] / ∂x of ``x`` against ``reference`` (both
    B×C×H×W, paired row by row), f(x) − f(x') of the target logit (B), and how many modules got
    a rule. The attribution is (x − x')·m; on rectifier/max-pool networks it sums to the delta."""
    t = targets[:, None]
    with rescale_rules(model, eps, maxpool) as (pairing, swapped):
        pairing.recording = True
        with torch.no_grad():
            ref_logit = model(reference.detach()).gather(1, t)
        pairing.recording = False
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            logit = model(xg).gather(1, t)
            (grad,) = torch.autograd.grad(logit.sum(), xg)
    return grad, (logit.detach() - ref_logit)[:, 0], len(swapped)
