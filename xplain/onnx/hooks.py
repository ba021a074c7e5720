"""The built-in ONNX loader as a ``load_model`` hook implementation.

Registered by every :class:`~xplain.plugins.registry.Registry` under the name ``xplain-onnx``.
``trylast`` lets a plugin claim other formats (or override ONNX loading) by answering first;
pluggy stops at the first non-None answer, so this one only runs when no plugin answered.
Kept apart from :mod:`.loader` so registering it imports neither torch nor onnx.
"""

from __future__ import annotations

from typing import Any

from ..plugins.plugin_api import hookimpl


@hookimpl(trylast=True)
def load_model(path: str, options: dict) -> Any:
    """Load ``path`` as ONNX with the core's hardened loader."""
    from .loader import load_onnx

    return load_onnx(
        path,
        device=options.get("device", "cpu"),
        verify=options.get("verify", True),
        max_pixels=options.get("max_input_pixels"),
    )
