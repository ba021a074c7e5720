"""Converter registrations that onnx2torch lacks, and the pre-flight coverage check.

onnx2torch keys converters by ``(domain, op, since_version)``. Newer ONNX versions of many
ops only widened the allowed types (bfloat16, int4, …), so the existing converter is exact
for them; we register it under the new version instead of rejecting the model.
"""

from __future__ import annotations

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
}
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
        return OperationConverterResult(torch_module=OnnxGlobalMaxPool(), onnx_mapping=onnx_mapping_from_node(node))

    for version in (1, 22):
        if registry.OperationDescription("", "GlobalMaxPool", version) not in registry._CONVERTER_REGISTRY:
            registry.add_converter(operation_type="GlobalMaxPool", version=version)(convert)


def register_aliases() -> None:
    """Idempotently add the alias converters (and the few missing ones) to onnx2torch's registry."""
    global _registered
    if _registered:
        return
    from onnx2torch.node_converters import registry

    _register_global_max_pool(registry)

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


def unsupported_ops(model) -> Counter:
    """Every op of the graph that no converter handles, with its count (all at once)."""
    import onnx
    from onnx2torch.node_converters import registry

    register_aliases()
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
            since = onnx.defs.get_schema(node.op_type, max_inclusive_version=version, domain=domain).since_version
        except Exception:  # noqa: BLE001 - unknown op or domain
            missing[label] += 1
            continue
        if registry.OperationDescription(domain, node.op_type, since) not in registry._CONVERTER_REGISTRY:
            missing[f"{label}-{since}"] += 1
    return missing
