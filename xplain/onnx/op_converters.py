"""Converters for the ONNX ops (and op versions) that today's exporters emit and onnx2torch lacks.

torch's default exporter (``dynamo=True``) writes opset 18+; transformer-era classifiers bring
ops onnx2torch never learnt (Gelu-20) or learnt only in an older form (Reduce*-18 and Pad-18
take their axes as an input, Split-18 a ``num_outputs`` attribute, AveragePool-19 dilations,
ScatterND-18 min/max reductions). Each converter here implements the op's definition in the ONNX
operator specification, is registered in onnx2torch's own registry by
:func:`xplain.converters.register_converters`, and is checked op by op against onnxruntime in
``tests/test_op_converters.py`` (and, per model, by the loader's verification).

This module collects them: :mod:`.op_registry` holds :data:`CONVERTERS` and the shared helpers,
and the converters live by idea in :mod:`.op_activations` (Gelu, Mish, Clip),
:mod:`.op_axes_inputs` (Reduce*/Split/Pad-18, ScatterND-18), :mod:`.op_pool_norm`
(AveragePool-19, GlobalAveragePool, LayerNormalization) and :mod:`.op_conv` (computed weights);
importing this module registers all of them.

The modules are ordinary ``nn.Module``s built from differentiable torch ops, so gradients flow
through them like through any onnx2torch module. Where an input (axes, pads, split sizes) is a
graph initializer it is read once at conversion time; otherwise it is read at run time.
"""

from __future__ import annotations

from . import op_activations, op_axes_inputs, op_pool_norm  # noqa: F401 - they register converters
from .op_activations import OnnxClipDynamic
from .op_axes_inputs import OnnxPad18, OnnxReduce18, OnnxScatterND18, OnnxSplit18
from .op_conv import OnnxConvRuntimeWeight, conv_with_runtime_weight
from .op_pool_norm import OnnxAveragePool, OnnxLayerNormalization
from .op_registry import CONVERTERS, Converter

__all__ = [
    "CONVERTERS",
    "Converter",
    "OnnxAveragePool",
    "OnnxClipDynamic",
    "OnnxConvRuntimeWeight",
    "OnnxLayerNormalization",
    "OnnxPad18",
    "OnnxReduce18",
    "OnnxScatterND18",
    "OnnxSplit18",
    "conv_with_runtime_weight",
]
