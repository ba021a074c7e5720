"""Rule composites registered by name: which backward rule each module of a graph gets.

A composite is a factory ``(**options) -> Chooser`` (see :func:`xplain.apply_rules`); methods
and plugins ask for one by name (``xplain.composite("lrp-zplus", eps=1e-6)``) instead of
importing the rule modules, and a plugin can add its own with :func:`register_composite`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UsageError
from .lrp import EPSILON, ZPLUS, lrp_rules
from .rules import DECONVNET, GUIDED, PLAIN, Chooser, rectifier_rules

_COMPOSITES: dict[str, Callable[..., Chooser]] = {}


def register_composite(name: str, factory: Callable[..., Chooser]) -> None:
    """Make ``factory(**options) -> Chooser`` available as ``composite(name, **options)``."""
    if name in _COMPOSITES:
        raise ValueError(f"composite {name!r} is already registered")
    _COMPOSITES[name] = factory


def composite(name: str, **options: Any) -> Chooser:
    """The chooser of the composite ``name`` with ``options`` (e.g. ``eps`` for LRP)."""
    if name not in _COMPOSITES:
        raise UsageError(
            f"unknown rule composite {name!r}", hint=f"registered: {', '.join(composites())}"
        )
    return _COMPOSITES[name](**options)


def composites() -> list[str]:
    """The registered composite names."""
    return sorted(_COMPOSITES)


register_composite(GUIDED, lambda: rectifier_rules(GUIDED))  # guided backprop, every rectifier
register_composite(DECONVNET, lambda: rectifier_rules(DECONVNET))
register_composite(PLAIN, lambda: rectifier_rules(PLAIN))  # the ordinary gradient, as a rule
register_composite(
    "lrp-epsilon", lambda eps=1e-6, skip=(): lrp_rules(EPSILON, eps, skip=tuple(skip))
)
register_composite("lrp-zplus", lambda eps=1e-6, skip=(): lrp_rules(ZPLUS, eps, skip=tuple(skip)))
