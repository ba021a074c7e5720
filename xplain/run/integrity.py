"""What a plugin could change besides weights and hooks, and how to put it back.

:class:`~xplain.run.guards.ModelGuard` fingerprints the graph, hooks and tensors. A plugin can
also change what every later method computes without touching those: switch modules to train
mode (Dropout, BatchNorm), replace a module's ``forward`` on the instance, change a Conv's
``stride``/``padding``/``groups``, patch a module class's ``forward``, or monkeypatch
``torch.relu`` / ``torch.nn.functional.relu`` / ``torch.Tensor.relu``. This module snapshots all
of that cheaply (attribute identities and small values, no tensor copies) so the guard can tell a
change and restore it:

* :func:`module_state` / :func:`restore_module_state` — every module's plain attributes
  (``training``, ``stride``, an instance ``forward`` …) and the attributes of the module classes
  used by the graph (a class-level ``forward`` patch).
* :func:`torch_functions` / :func:`restore_torch_functions` — the identity of every public
  callable of ``torch``, ``torch.nn.functional``, ``torch.special``, ``torch.linalg``,
  ``torch.fft`` and ``torch.Tensor`` (a few thousand ``getattr``; about a millisecond).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from typing import Any

_MISSING = object()


def _token(value: Any) -> str:
    """A stable text for an attribute value: the value for plain data, the identity otherwise
    (a replaced function or object is a change even when it prints the same)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, (tuple, list)) and len(value) <= 64:
        return "[" + ",".join(_token(v) for v in value) + "]"
    import torch

    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return repr(value)
    if isinstance(value, torch.Tensor) and value.numel() <= 4096 and value.device.type != "meta":
        t = value.detach()
        raw = t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
        return f"T{t.dtype}{tuple(t.shape)}:{hashlib.blake2b(raw, digest_size=8).hexdigest()}"
    return f"{type(value).__qualname__}@{id(value)}"


def _plain_attrs(module) -> dict[str, Any]:
    """Public instance attributes: ``training``, ``stride``, ``padding``, an instance ``forward``.
    Private ones are left out: fx keeps its generated code there (``_code``, ``_graph``), which a
    method's own ``swap_modules`` regenerates legitimately; the code is fingerprinted as text."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_")}


def _classes(gm) -> list[type]:
    """The module classes of the graph and their bases below ``nn.Module`` (included)."""
    from torch import fx, nn

    seen: dict[type, None] = {}
    for _, module in gm.named_modules():
        for cls in type(module).__mro__:
            if cls is object:
                break
            if issubclass(cls, fx.GraphModule) and cls is not fx.GraphModule:
                continue  # fx's per-instance class: recompile() replaces its forward
            seen.setdefault(cls, None)
            if cls is nn.Module:
                break
    return list(seen)


def module_state(gm) -> dict:
    """Snapshot of every module's plain attributes and of the graph's module classes."""
    modules = {name: _plain_attrs(module) for name, module in gm.named_modules()}
    classes = {cls: dict(vars(cls)) for cls in _classes(gm)}
    return {"modules": modules, "classes": classes}


def module_state_text(gm) -> str:
    """The text that goes into the model fingerprint: modules' attributes (train mode, strides,
    instance ``forward``) and the identity of every attribute of the graph's module classes."""
    parts = []
    for name, module in gm.named_modules():
        attrs = _plain_attrs(module)
        parts.append(name + "{" + ";".join(f"{k}={_token(attrs[k])}" for k in sorted(attrs)) + "}")
    for cls in _classes(gm):
        parts.append(
            f"{cls.__module__}.{cls.__qualname__}"
            + "{"
            + ";".join(f"{k}@{id(v)}" for k, v in sorted(vars(cls).items()))
            + "}"
        )
    return "\n".join(parts)


def restore_module_state(gm, saved: dict) -> None:
    """Put back every attribute :func:`module_state` saw; drop the ones added since."""
    by_name = dict(gm.named_modules())
    for name, attrs in saved["modules"].items():
        module = by_name.get(name)
        if module is None:
            continue
        current = _plain_attrs(module)
        for key in set(current) - set(attrs):
            module.__dict__.pop(key, None)  # e.g. an instance ``forward`` put there by a plugin
        for key, value in attrs.items():
            if current.get(key, _MISSING) is not value:
                module.__dict__[key] = value
    for cls, attrs in saved["classes"].items():
        current = dict(vars(cls))
        for key in set(current) - set(attrs):
            if not key.startswith("__"):
                delattr(cls, key)
        for key, value in attrs.items():
            if current.get(key, _MISSING) is not value and not key.startswith("__dict"):
                with contextlib.suppress(AttributeError, TypeError):  # read-only builtin slots
                    setattr(cls, key, value)


def _namespaces() -> list[tuple[str, Any]]:
    import torch
    import torch.nn.functional as F

    return [
        ("torch", torch),
        ("torch.nn.functional", F),
        ("torch.special", torch.special),
        ("torch.linalg", torch.linalg),
        ("torch.fft", torch.fft),
        ("torch.Tensor", torch.Tensor),
    ]


def torch_functions() -> dict[tuple[str, str], Any]:
    """``(namespace, name) -> object`` for every public callable of torch's function namespaces
    and every attribute of ``torch.Tensor`` (dunder methods included: ``__add__`` can be patched)."""
    out: dict[tuple[str, str], Any] = {}
    for label, space in _namespaces():
        for name, value in list(vars(space).items()):
            if label != "torch.Tensor" and (name.startswith("_") or not callable(value)):
                continue
            out[(label, name)] = value
    return out


#: Functions torch itself re-binds when a submodule is first imported: ``import torch._dynamo``
#: (which torch.optim, torch.compile and torchvision import lazily, so the first optimiser step of
#: a method may do it) replaces ``torch.manual_seed`` by a ``torch._disable_dynamo`` wrapper whose
#: ``__wrapped__`` is the original. Only these names, only that exact wrapper, are not a change.
_TORCH_REBINDS = {("torch", "manual_seed"): "torch._dynamo"}


def _same(key: tuple[str, str], saved: Any, now: Any) -> bool:
    if now is saved:
        return True
    module = _TORCH_REBINDS.get(key)
    return (
        module is not None
        and module in sys.modules
        and getattr(now, "__wrapped__", None) is saved
        and getattr(now, "__module__", None) == getattr(saved, "__module__", None)
    )


def changed_torch_functions(saved: dict[tuple[str, str], Any]) -> list[str]:
    """The names whose object is no longer the one saved (or that appeared since); torch's own
    lazy re-binding (:data:`_TORCH_REBINDS`) is not a change."""
    now = torch_functions()
    changed = [
        f"{s}.{n}" for (s, n), v in saved.items() if not _same((s, n), v, now.get((s, n), _MISSING))
    ]
    changed += [f"{s}.{n}" for (s, n) in now.keys() - saved.keys()]
    return sorted(changed)


def restore_torch_functions(saved: dict[tuple[str, str], Any]) -> None:
    spaces = dict(_namespaces())
    now = torch_functions()
    for (label, name), value in saved.items():
        if not _same((label, name), value, now.get((label, name), _MISSING)):
            setattr(spaces[label], name, value)
    for label, name in now.keys() - saved.keys():
        with contextlib.suppress(AttributeError, TypeError):  # builtin slots
            delattr(spaces[label], name)
