"""What a model offers and a method needs: the requirements a method may declare in
``Capabilities.requires``, and why a given model fails one.

``check_requirements`` refuses a method before any work with one line naming what the model
lacks (e.g. "guided-backprop needs rectifier activations; this model uses GELU (12)"); the
census of non-linearities that sentence shows is written here, from
:class:`~xplain.graph.nonlinear.Nonlinearities` and the model's attention tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .attention import Attention
from .nonlinear import RECTIFIERS

#: what a method may declare in ``Capabilities.requires``
REQUIREMENTS = {
    "rectifiers": "every non-linearity is a rectifier (gates such as squeeze-excitation allowed)",
    "lrp-rules": "every non-linearity has an LRP rule (no sigmoid/softplus activations, Group/InstanceNorm, LRN)",
    "attention": "global self-attention (a Softmax between Q·Kᵀ and ·V over all tokens)",
}

_DISPLAY = {
    "relu": "ReLU",
    "relu6": "ReLU6",
    "clip": "Clip",
    "hardtanh": "Hardtanh",
    "leaky_relu": "LeakyReLU",
    "prelu": "PReLU",
    "gelu": "GELU",
    "silu": "SiLU",
    "hardswish": "Hardswish",
    "sigmoid": "Sigmoid",
    "hardsigmoid": "HardSigmoid",
    "tanh": "Tanh",
    "elu": "ELU",
    "celu": "CELU",
    "selu": "SELU",
    "softplus": "Softplus",
    "erf": "Erf",
    "gate": "sigmoid gates",
    "layernorm": "LayerNormalization",
    "groupnorm": "GroupNormalization",
    "instancenorm": "InstanceNormalization",
    "lrn": "LRN",
    "softmax": "Softmax (attention)",
    "divide": "divisions by a signal",
    "product": "products of two signals",
}

#: kinds the LRP composite has no rule for (``requirement_problem("lrp-rules")``)
_NO_LRP_RULE = frozenset(
    {"sigmoid", "hardsigmoid", "softplus", "erf", "groupnorm", "instancenorm", "lrn"}
)


def _census(kinds: Mapping[str, list[str]]) -> str:
    return ", ".join(f"{_DISPLAY.get(k, k)} ({len(v)})" for k, v in kinds.items())


def requirement_problem(
    requirement: str, kinds: Mapping[str, list[str]], attention: Sequence[Attention]
) -> str | None:
    """Why a model with these non-linearities (kind -> nodes) and attention tensors does not
    meet ``requirement``, as the end of a sentence "METHOD needs …; this model …", or None."""
    if requirement == "rectifiers":
        bad = {k: v for k, v in kinds.items() if k not in RECTIFIERS and k != "gate"}
        if not bad:
            return None
        return "needs rectifier activations; this model uses " + _census(bad)
    if requirement == "lrp-rules":
        bad = {k: v for k, v in kinds.items() if k in _NO_LRP_RULE}
        if not bad:
            return None
        return "has no LRP rule for " + _census(bad)
    if requirement == "attention":
        if not attention:
            return "needs attention layers; this model has none (no Softmax between a Q·Kᵀ and a ·V product)"
        lost = [a for a in attention if a.windowed and a.stream_layout is None]
        if lost:
            return (
                f"needs attention it can place on the image grid; attention {lost[0].node!r} "
                f"({lost[0].tokens} tokens) follows no spatial feature layer"
            )
        return None
    raise ValueError(f"unknown requirement {requirement!r}")
