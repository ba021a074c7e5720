"""onnx2torch without torchvision until a graph needs it (start-up, issue 29).

``import onnx2torch`` imports every converter module, and two of them import torchvision at
module level (``nms``: NonMaxSuppression, ``roialign``: RoiAlign); torchvision in turn imports
``torch._dynamo``. On EfficientNet-Lite0 that is ~1.7 s of CPU time in every ``xplain explain``
for two ops no image classifier has.

:func:`install` (called when :mod:`xplain.onnx` is imported, before anything imports
onnx2torch) puts a meta-path finder in front of exactly those two module names. It loads a
stand-in that registers *deferred* converters under the real keys (NonMaxSuppression-10/11,
RoiAlign-10/16): the first time one is asked for, the stand-in drops its registrations, the real
onnx2torch module is imported (it registers its own converters, and imports torchvision), and the
real converter is called. Attribute access on the stand-in (``OnnxNonMaxSuppression``) loads the
real module the same way. So behaviour is onnx2torch's; only the import is postponed. Nothing is
installed when onnx2torch or torchvision is already imported (then there is nothing to save).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

#: the onnx2torch modules that import torchvision, and the converter keys each registers
DEFERRED: dict[str, tuple[tuple[str, int], ...]] = {
    "onnx2torch.node_converters.nms": (("NonMaxSuppression", 10), ("NonMaxSuppression", 11)),
    "onnx2torch.node_converters.roialign": (("RoiAlign", 10), ("RoiAlign", 16)),
}


def _load_real(name: str) -> types.ModuleType:
    """Replace the stand-in ``name`` by onnx2torch's own module (idempotent)."""
    current = sys.modules.get(name)
    if current is not None and not getattr(current, "__xplain_deferred__", False):
        return current
    from onnx2torch.node_converters import registry

    _FINDER.names.discard(name)
    for op, version in DEFERRED[name]:
        key = registry.OperationDescription("", op, version)
        if getattr(registry._CONVERTER_REGISTRY.get(key), "__xplain_deferred__", False):
            del registry._CONVERTER_REGISTRY[key]
    sys.modules.pop(name, None)
    module = importlib.import_module(name)
    setattr(sys.modules["onnx2torch.node_converters"], name.rsplit(".", 1)[1], module)
    return module


def _deferred_converter(name: str, op: str, version: int):
    def convert(node, graph):
        _load_real(name)
        from onnx2torch.node_converters import registry

        key = registry.OperationDescription("", op, version)
        return registry._CONVERTER_REGISTRY[key](node, graph)

    convert.__xplain_deferred__ = True  # type: ignore[attr-defined]
    return convert


def _real_attribute(name: str, attr: str):
    if attr.startswith("__"):  # the import system probes ``__path__`` and the like
        raise AttributeError(attr)
    return getattr(_load_real(name), attr)


class _StandIn(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        from onnx2torch.node_converters import registry

        name = module.__name__
        module.__all__ = []  # ``from … import *`` in onnx2torch's __init__ takes nothing
        module.__xplain_deferred__ = True
        module.__getattr__ = lambda attr: _real_attribute(name, attr)
        for op, version in DEFERRED[name]:
            key = registry.OperationDescription("", op, version)
            registry._CONVERTER_REGISTRY.setdefault(key, _deferred_converter(name, op, version))


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.names: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):  # noqa: ARG002 - the protocol's
        if fullname in self.names and "torchvision" not in sys.modules:
            return importlib.machinery.ModuleSpec(fullname, _StandIn())
        return None


_FINDER = _Finder()


def install() -> None:
    """Defer onnx2torch's two torchvision converters, unless there is nothing to save."""
    if "onnx2torch" in sys.modules or "torchvision" in sys.modules or _FINDER in sys.meta_path:
        return
    _FINDER.names.update(DEFERRED)
    sys.meta_path.insert(0, _FINDER)
