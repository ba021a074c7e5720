"""xplain: explain the decisions of ONNX image classifiers.

The public API. Importing ``xplain`` is cheap (no torch): the plugin declarations are
imported eagerly, everything that needs torch is loaded on first use.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from .errors import (
    ExitCode,
    InputDataError,
    ModelError,
    PluginError,
    UnsupportedOpsError,
    UsageError,
    XplainError,
)
from .plugins.plugin_api import (
    CONTRACT_VERSION,
    Attribution,
    Capabilities,
    ExplainFn,
    ExplainRequest,
    FitFn,
    Method,
    Metric,
    MetricContext,
    Param,
    ScoreFn,
    hookimpl,
    hookspec,
)

try:  # the version lives in pyproject.toml only
    __version__ = importlib.metadata.version("xplain")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare source tree
    __version__ = "0+unknown"

_LAZY = {
    "load_model": ("xplain.run.api", "load_model"),
    "explain": ("xplain.output.explanation", "explain"),
    "Explanation": ("xplain.output.explanation", "Explanation"),
    "RenderOptions": ("xplain.output.render", "RenderOptions"),
    "score": ("xplain.run.api", "score"),
    "load_image": ("xplain.data.images", "load_image"),
    "Geometry": ("xplain.data.images", "Geometry"),
    "check_requirements": ("xplain.run.api", "check_requirements"),
    "Layout": ("xplain.graph.layouts", "Layout"),
    "FeatureLayer": ("xplain.graph.layers", "FeatureLayer"),
    "Attention": ("xplain.graph.attention", "Attention"),
    "evaluate": ("xplain.run.evaluation", "evaluate"),
    "get_registry": ("xplain.plugins.registry", "get_registry"),
    "validate_params": ("xplain.plugins.registry", "validate_params"),
    "sample_generators": ("xplain.plugins.seeds", "sample_generators"),
    "Model": ("xplain.graph.model", "Model"),
    "InputSpec": ("xplain.onnx.report", "InputSpec"),
    "RECTIFIERS": ("xplain.graph.nonlinear", "RECTIFIERS"),
    "load_state": ("xplain.graph.fitted", "load_state"),
    "apply_rules": ("xplain.graph.rules", "apply_rules"),
    "rectifier_rules": ("xplain.graph.rules", "rectifier_rules"),
    "RectifierRule": ("xplain.graph.rules", "RectifierRule"),
    "batched_backward": ("xplain.graph.rules", "batched_backward"),
    "unbatched": ("xplain.graph.rules", "unbatched"),
    "deeplift_multipliers": ("xplain.graph.deeplift", "deeplift_multipliers"),
    "lrp_rules": ("xplain.graph.lrp", "lrp_rules"),
    "composite": ("xplain.graph.composites", "composite"),
    "composites": ("xplain.graph.composites", "composites"),
    "register_composite": ("xplain.graph.composites", "register_composite"),
    "zbox_relevance": ("xplain.graph.lrp", "zbox_relevance"),
    "first_weight_layer": ("xplain.graph.lrp", "first_weight_layer"),
    "lrp_layer_rules": ("xplain.graph.lrp_composites", "layer_rules"),
    "lrp_composites": ("xplain.graph.lrp_composites", "COMPOSITES"),
    "flat_relevance": ("xplain.graph.lrp_composites", "flat_relevance"),
    "merge_batchnorm": ("xplain.graph.lrp_composites", "merge_batchnorm"),
    "reduce_channels": ("xplain.plugins.maps", "reduce_channels"),
    "reduce_param": ("xplain.plugins.maps", "reduce_param"),
    "images_per_pass": ("xplain.plugins.passes", "images_per_pass"),
    "images_per_forward_pass": ("xplain.plugins.passes", "images_per_forward_pass"),
    "pass_params": ("xplain.plugins.passes", "pass_params"),
    "report_progress": ("xplain.plugins.progress", "report_progress"),
    "progress_to": ("xplain.plugins.progress", "progress_to"),
}

__all__ = [
    "CONTRACT_VERSION",
    "ExplainFn",
    "ExplainRequest",
    "FitFn",
    "MetricContext",
    "ScoreFn",
    "Attribution",
    "Capabilities",
    "ExitCode",
    "InputDataError",
    "Method",
    "Metric",
    "ModelError",
    "Param",
    "PluginError",
    "UnsupportedOpsError",
    "UsageError",
    "XplainError",
    "hookimpl",
    "hookspec",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xplain' has no attribute {name!r}")
