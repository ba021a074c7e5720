"""xplain: explain the decisions of ONNX image classifiers.

The public API. Importing ``xplain`` is cheap (no torch): the plugin declarations are
imported eagerly, everything that needs torch is loaded on first use.
"""

from __future__ import annotations

from .errors import (ExitCode, InputDataError, ModelError, PluginError, UnsupportedOpsError,
                     UsageError, XplainError)
from .plugins.plugin_api import Attribution, Capabilities, Method, Metric, Param, hookimpl, hookspec

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("xplain.run.api", "load_model"),
    "explain": ("xplain.run.api", "explain"),
    "evaluate": ("xplain.run.evaluation", "evaluate"),
    "get_registry": ("xplain.plugins.registry", "get_registry"),
    "validate_params": ("xplain.plugins.registry", "validate_params"),
    "sample_generators": ("xplain.run.api", "sample_generators"),
    "Model": ("xplain.graph.model", "Model"),
    "InputSpec": ("xplain.graph.model", "InputSpec"),
    "RECTIFIERS": ("xplain.graph.model", "RECTIFIERS"),
    "load_state": ("xplain.run.state", "load_state"),
    "apply_rules": ("xplain.graph.rules", "apply_rules"),
    "rectifier_rules": ("xplain.graph.rules", "rectifier_rules"),
    "RectifierRule": ("xplain.graph.rules", "RectifierRule"),
    "lrp_rules": ("xplain.graph.lrp", "lrp_rules"),
    "zbox_relevance": ("xplain.graph.lrp", "zbox_relevance"),
    "first_weight_layer": ("xplain.graph.lrp", "first_weight_layer"),
    "reduce_channels": ("xplain.plugins.maps", "reduce_channels"),
    "reduce_param": ("xplain.plugins.maps", "reduce_param"),
}

__all__ = [
    "Attribution", "Capabilities", "ExitCode", "InputDataError", "Method", "Metric", "ModelError",
    "Param", "PluginError", "UnsupportedOpsError", "UsageError", "XplainError", "hookimpl", "hookspec",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xplain' has no attribute {name!r}")
