"""xplain: explain the decisions of ONNX image classifiers.

The public API. Importing ``xplain`` is cheap (no torch): the plugin declarations are
imported eagerly, everything that needs torch is loaded on first use.
"""

from __future__ import annotations

from .errors import (ExitCode, InputDataError, ModelError, PluginError, UnsupportedOpsError,
                     UsageError, XplainError)
from .plugin_api import Attribution, Capabilities, Method, Metric, Param, hookimpl, hookspec

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("xplain.api", "load_model"),
    "explain": ("xplain.api", "explain"),
    "evaluate": ("xplain.evaluation", "evaluate"),
    "get_registry": ("xplain.registry", "get_registry"),
    "validate_params": ("xplain.registry", "validate_params"),
    "sample_generators": ("xplain.api", "sample_generators"),
    "Model": ("xplain.model", "Model"),
    "InputSpec": ("xplain.model", "InputSpec"),
    "RECTIFIERS": ("xplain.model", "RECTIFIERS"),
    "load_state": ("xplain.state", "load_state"),
    "apply_rules": ("xplain.rules", "apply_rules"),
    "rectifier_rules": ("xplain.rules", "rectifier_rules"),
    "RectifierRule": ("xplain.rules", "RectifierRule"),
    "lrp_rules": ("xplain.lrp", "lrp_rules"),
    "zbox_relevance": ("xplain.lrp", "zbox_relevance"),
    "first_weight_layer": ("xplain.lrp", "first_weight_layer"),
    "reduce_channels": ("xplain.maps", "reduce_channels"),
    "reduce_param": ("xplain.maps", "reduce_param"),
    "images_per_pass": ("xplain.passes", "images_per_pass"),
    "pass_params": ("xplain.passes", "pass_params"),
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
