"""What the ``reduce`` parameter means, in one place for every method that offers it.

Gradient-style methods attribute each input channel; a map has one value per pixel. This module
imports no torch (plugins declare the parameter at import time)."""

from __future__ import annotations

from .plugin_api import Param

REDUCTIONS = ("sum", "mean", "max-abs")
_HELP = (
    "how the C input channels become one map: sum, mean, or max-abs (the signed value of the "
    "channel with the largest magnitude)"
)


def reduce_param(default: str = "sum", help: str = _HELP) -> Param:
    """The ``reduce`` parameter, with the choices :func:`reduce_channels` understands."""
    return Param("reduce", "str", default, help, choices=REDUCTIONS)


def reduce_channels(attr, how: str = "sum"):
    """B×C×H×W → B×H×W: the channel sum, mean, or the signed value of the largest magnitude."""
    if how == "sum":
        return attr.sum(dim=1)
    if how == "mean":
        return attr.mean(dim=1)
    if how == "max-abs":
        return attr.gather(1, attr.abs().argmax(dim=1, keepdim=True))[:, 0]
    raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}; got {how!r}")
