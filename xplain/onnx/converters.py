"""Converter registrations that onnx2torch lacks, the pre-flight coverage check, and the one
entry point xplain converts through.

onnx2torch keys converters by ``(domain, op, since_version)``. Newer ONNX versions of many
ops only widened the allowed types (bfloat16, int4, …), so the existing converter is exact
for them; we register it under the new version instead of rejecting the model. Ops whose
meaning changed (Reduce*-18, Split-18, Pad-18, AveragePool-19, ScatterND-18), ops onnx2torch
never had (Gelu, Mish, GlobalMaxPool) and onnx2torch's LayerNormalization (wrong whenever shape
inference leaves a dim unknown) get xplain's own converters from :mod:`xplain.onnx.op_converters`.
"""

from __future__ import annotations

import contextvars
from collections import Counter

#: op -> (version with a converter, newer versions whose semantics are unchanged for float)
_ALIASES: dict[str, tuple[int, tuple[int, ...]]] = {
    "Reshape": (14, (19, 21, 23)),
    "Shape": (15, (19, 21, 23)),
    "Flatten": (13, (21, 23)),
    "Transpose": (13, (21, 23)),
    "Identity": (16, (19, 21, 23)),
    "Cast": (13, (19, 21, 23)),
    "Constant": (13, (19, 21, 23)),
    "Squeeze": (13, (23,)),
    "Unsqueeze": (13, (21, 23)),
    "Conv": (11, (22,)),
    "MaxPool": (12, (22,)),
    "GlobalAveragePool": (1, (22,)),
    "Dropout": (13, (22,)),
    "HardSwish": (14, (22,)),
    # type-only bumps (bfloat16 / float8 / int4 / string added)
    "Equal": (13, (19,)),
    "ConstantOfShape": (9, (20, 21, 23, 24, 25)),
    "GreaterOrEqual": (12, (16,)),
    "LessOrEqual": (12, (16,)),
    "IsInf": (10, (20,)),
    "IsNaN": (13, (20,)),
    "ConvTranspose": (11, (22,)),
    "InstanceNormalization": (6, (22,)),
    "HardSigmoid": (6, (22,)),
    "Elu": (6, (22,)),
    "Selu": (6, (22,)),
    "Softplus": (1, (22,)),
    "Softsign": (1, (22,)),
    "Round": (11, (22,)),
    **{op: (7, (22,)) for op in ("Sin", "Cos", "Tan", "Asin", "Acos", "Atan")},
}
#: the newest opset-24/25 bumps of the shape ops are type-only too
for _op, _versions in (
    ("Reshape", (24, 25)),
    ("Shape", (24, 25)),
    ("Flatten", (24, 25)),
    ("Transpose", (24, 25)),
    ("Identity", (24, 25)),
    ("Cast", (24, 25)),
    ("Constant", (24, 25)),
    ("Squeeze", (24, 25)),
    ("Unsqueeze", (24, 25)),
):
    _ALIASES[_op] = (_ALIASES[_op][0], _ALIASES[_op][1] + _versions)

_registered = False


def _register_global_max_pool(registry) -> None:
    """GlobalMaxPool, which onnx2torch lacks (Keras/MXNet/Paddle exports of global max pooling).

    The max over every spatial axis, keeping them as size 1 — the op's definition; without it
    such models were refused by the pre-flight check."""
    import torch
    from onnx2torch.utils.common import (
        OnnxToTorchModule,
        OperationConverterResult,
        onnx_mapping_from_node,
    )

    class OnnxGlobalMaxPool(torch.nn.Module, OnnxToTorchModule):
        def forward(self, input_tensor):
            return torch.amax(input_tensor, dim=tuple(range(2, input_tensor.dim())), keepdim=True)

    def convert(node, graph):  # noqa: ARG001 - the registry's signature
        return OperationConverterResult(
            torch_module=OnnxGlobalMaxPool(), onnx_mapping=onnx_mapping_from_node(node)
        )

    for version in (1, 22):
        if (
            registry.OperationDescription("", "GlobalMaxPool", version)
            not in registry._CONVERTER_REGISTRY
        ):
            registry.add_converter(operation_type="GlobalMaxPool", version=version)(convert)


def _register_resize_18(registry) -> None:
    """Resize-18/19 with the attributes they added left at their defaults is Resize-13."""
    base = registry._CONVERTER_REGISTRY.get(registry.OperationDescription("", "Resize", 13))
    if base is None:
        return

    def convert(node, graph):
        attrs = node.attributes
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        mode = attrs.get("coordinate_transformation_mode", "half_pixel")
        if (
            attrs.get("antialias", 0)
            or attrs.get("axes") is not None
            or policy not in ("stretch", b"stretch")
            or mode in ("half_pixel_symmetric", b"half_pixel_symmetric")
        ):
            raise NotImplementedError(
                "Resize with antialias, axes, keep_aspect_ratio_policy or half_pixel_symmetric"
            )
        return base(node, graph)

    for version in (18, 19):
        registry._CONVERTER_REGISTRY.setdefault(
            registry.OperationDescription("", "Resize", version), convert
        )


def _register_conv_runtime_weight(registry) -> None:
    """Conv: onnx2torch's converter for constant weights, a functional conv for computed ones."""
    from .op_converters import conv_with_runtime_weight

    for version in (1, 11):
        key = registry.OperationDescription("", "Conv", version)
        if key in registry._CONVERTER_REGISTRY:
            registry._CONVERTER_REGISTRY[key] = conv_with_runtime_weight(
                registry._CONVERTER_REGISTRY[key]
            )


def _register_max_pool_rank(registry) -> None:
    """MaxPool whose input shape inference could not type (e.g. after a convolution with weights
    computed in the graph, as timm's BiT weight standardisation exports): onnx2torch reads the
    spatial rank from the input's shape and fails ("spatial rank == -2"). ONNX requires
    ``kernel_shape`` to have one entry per spatial axis, so the rank is known from the node
    itself; give the converter a value info of that rank (dims unknown) and let it do the rest."""
    import onnx

    def wrap(base):
        def convert(node, graph):
            name = node.input_values[0]
            info = graph.value_info.get(name)
            if info is None or not info.type.tensor_type.shape.dim:
                rank = 2 + len(node.attributes["kernel_shape"])
                elem = (
                    info.type.tensor_type.elem_type if info is not None else onnx.TensorProto.FLOAT
                )
                graph._value_info[name] = onnx.helper.make_tensor_value_info(
                    name, elem or onnx.TensorProto.FLOAT, [None] * rank
                )
            return base(node, graph)

        return convert

    for version in (8, 10, 11, 12):
        key = registry.OperationDescription("", "MaxPool", version)
        if key in registry._CONVERTER_REGISTRY:
            registry._CONVERTER_REGISTRY[key] = wrap(registry._CONVERTER_REGISTRY[key])


def _register_own(registry) -> None:
    """xplain's converters (``op_converters.CONVERTERS``); they replace onnx2torch's for the same key."""
    from .op_converters import CONVERTERS

    for (op, version), convert in CONVERTERS.items():
        registry._CONVERTER_REGISTRY[registry.OperationDescription("", op, version)] = convert


def register_converters() -> None:
    """Idempotently add xplain's converters and the alias converters to onnx2torch's registry."""
    global _registered
    if _registered:
        return
    from onnx2torch.node_converters import registry

    _register_global_max_pool(registry)
    _register_own(registry)
    _register_resize_18(registry)
    _register_conv_runtime_weight(registry)
    _register_max_pool_rank(registry)

    for op, spec in _ALIASES.items():
        base, newer = spec
        source = registry._CONVERTER_REGISTRY.get(registry.OperationDescription("", op, base))
        if source is None:
            continue
        for version in newer:
            key = registry.OperationDescription("", op, version)
            if key not in registry._CONVERTER_REGISTRY:
                registry.add_converter(operation_type=op, version=version)(source)
    _registered = True


#: set while :func:`convert` runs: the id of the ModelProto whose shapes xplain already inferred
_INFERRED: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "xplain_inferred", default=None
)
_original_shape_inference = None


def _shape_inference(model_or_path, **kwargs):
    """onnx2torch's first step, skipped only for the model :func:`convert` is converting.

    xplain infers shapes itself on the weight-free graph (seconds cheaper on VGG-sized models);
    onnx2torch would serialise the full model again for the same answer. Any other caller of
    onnx2torch in the process gets the original behaviour."""
    if _INFERRED.get() is not None and _INFERRED.get() == id(model_or_path):
        return model_or_path
    assert _original_shape_inference is not None  # installed by convert() before it can be called
    return _original_shape_inference(model_or_path, **kwargs)


def convert(model):
    """``onnx2torch.convert`` of a model whose shapes are already inferred, with xplain's converters.

    onnx2torch has no option to skip its shape-inference step, so xplain installs (once, at first
    use) a wrapper around the module-level function that step calls; the wrapper defers to the
    original for every model but the one being converted here (a context variable, so threads
    and other callers are unaffected)."""
    global _original_shape_inference
    import onnx2torch
    import onnx2torch.converter as converter_module

    register_converters()
    if _original_shape_inference is None:
        _original_shape_inference = converter_module.safe_shape_inference
        converter_module.safe_shape_inference = _shape_inference
    token = _INFERRED.set(id(model))
    try:
        return onnx2torch.convert(model)
    finally:
        _INFERRED.reset(token)


def xplain_converted_ops(model) -> Counter:
    """Ops of the graph converted by xplain's own or alias converters (for the load note)."""
    import onnx

    from .op_converters import CONVERTERS

    register_converters()
    opsets = {imp.domain or "": imp.version for imp in model.opset_import}
    own = set(CONVERTERS) | {
        ("GlobalMaxPool", 1),
        ("GlobalMaxPool", 22),
        ("Resize", 18),
        ("Resize", 19),
    }
    aliased = {(op, v) for op, (_, newer) in _ALIASES.items() for v in newer}
    used: Counter = Counter()
    for node in model.graph.node:
        if (node.domain or "") != "" or "" not in opsets:
            continue
        try:
            since = onnx.defs.get_schema(
                node.op_type, max_inclusive_version=opsets[""], domain=""
            ).since_version
        except Exception:  # noqa: BLE001 - unknown op: the pre-flight reports it
            continue
        if (node.op_type, since) in own or (node.op_type, since) in aliased:
            used[f"{node.op_type}-{since}"] += 1
    return used


def unsupported_ops(model) -> Counter:
    """Every op of the graph that no converter handles, with its count (all at once)."""
    import onnx
    from onnx2torch.node_converters import registry

    register_converters()
    opsets = {imp.domain or "": imp.version for imp in model.opset_import}
    missing: Counter = Counter()
    for node in model.graph.node:
        domain = node.domain or ""
        label = node.op_type if domain == "" else f"{domain}.{node.op_type}"
        version = opsets.get(domain)
        if version is None:
            missing[label] += 1
            continue
        try:
            since = onnx.defs.get_schema(
                node.op_type, max_inclusive_version=version, domain=domain
            ).since_version
        except Exception:  # noqa: BLE001 - unknown op or domain
            missing[label] += 1
            continue
        if (
            registry.OperationDescription(domain, node.op_type, since)
            not in registry._CONVERTER_REGISTRY
        ):
            missing[f"{label}-{since}"] += 1
    return missing
