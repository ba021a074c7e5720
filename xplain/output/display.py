"""Showing untrusted names on a terminal: :func:`display_name` now lives in
:mod:`xplain.untrusted` with the other rules for untrusted text (the graph stage uses it, and
must not import the output stage); re-exported here for existing imports."""

from __future__ import annotations

from ..untrusted import display_name

__all__ = ["display_name"]
