"""One colour scheme per method per call: diverging for signed methods, sequential otherwise.

Why a module of its own: deciding a map's colormap from that one map (does it have a negative
pixel?) made one method's rows change colours within a panel (TR-GBP's top-5 on chelsea) and
between images of one call.  Whether a method is signed depends on its parameters (``reduce``,
Grad-CAM's ``relu``), so it cannot be a fixed property of the method; it is decided from the
method's maps the first time the call sees them (all maps of the first batch) and then kept.
Should a later map of a method drawn sequentially have negative values, the method switches to
diverging from then on (a negative value is never clipped away) and ``Schemes.switched`` names
it, so the CLI can say so; the JSON record of each map states the scheme it was drawn with.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .render import is_signed

__all__ = ["Schemes"]


class Schemes:
    """The per-call memory of each method's scheme (``True`` = signed, diverging at zero)."""

    def __init__(self) -> None:
        self._signed: dict[str, bool] = {}
        self.switched: list[str] = []

    def signed(self, method: str, maps: Iterable[np.ndarray]) -> bool:
        """The scheme of ``method`` for ``maps`` (the method's maps of one batch)."""
        found = any(is_signed(m) for m in maps)
        known = self._signed.get(method)
        if known is None:
            self._signed[method] = found
        elif found and not known:
            self._signed[method] = True
            self.switched.append(method)
        return self._signed[method]

    def as_dict(self) -> dict[str, bool]:
        return dict(self._signed)
