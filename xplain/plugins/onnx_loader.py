"""The built-in ONNX loader as a ``load_model`` hook implementation.

Registered by every :class:`~xplain.plugins.registry.Registry` under the name ``xplain-onnx``.
``trylast`` lets a plugin claim other formats (or override ONNX loading) by answering first;
pluggy stops at the first non-None answer, so this one only runs when no plugin answered.
Kept apart from :mod:`xplain.onnx.loader` so registering it imports neither torch nor onnx, and
in the plugin layer (which sits above the ONNX stage) so the ONNX stage never imports the plugin
host: the hook marker comes from :mod:`.plugin_api`, the loader is imported on first call, and
the hook hands it :class:`~xplain.graph.model.Model` to build (onnx never imports graph).
"""

from __future__ import annotations

from typing import Any

from .plugin_api import hookimpl


@hookimpl(trylast=True)
def load_model(path: str, options: dict) -> Any:
    """Load ``path`` as ONNX with the core's hardened loader."""
    from ..graph.model import Model
    from ..onnx.loader import load_onnx

    return load_onnx(
        path,
        device=options.get("device", "cpu"),
        verify=options.get("verify", True),
        max_pixels=options.get("max_input_pixels"),
        build=Model,
    )
