"""Run guards for ``xplain eval`` (and anything else that writes into one output folder).

Small functions with one job each, so other run drivers (sharded or distributed eval) can call them:

* :func:`lock_output` — an exclusive ``fcntl.flock`` on the ``OUT`` folder itself for the whole run, so a
  second concurrent run on the same ``--out`` refuses with one line instead of duplicating every line
  of ``results.jsonl``. The lock dies with the process (no stale lock after ``kill -9``).
* :class:`ModelGuard` — a fingerprint of the graph (generated code, module tree, hooks) and of every
  parameter and buffer, taken before the methods run and checked after each one. A buggy method that
  leaves a hook on the graph or edits weights in place would otherwise corrupt the scores of every
  method after it (and resume would keep them); the guard names it, and :meth:`ModelGuard.restore`
  puts the graph and weights back.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking, documented
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def lock_output(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the block; refuse (exit 2) if another process has it."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the folder's own descriptor: no lock file to leave behind or to race on when deleting it
    fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                "another xplain run is writing to this --out folder (it is locked); wait for it "
                "or choose another --out",
                path=out,
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _hooks(module) -> tuple:
    names = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_state_dict_hooks",
        "_load_state_dict_pre_hooks",
    )
    return tuple(dict(getattr(module, n, {}) or {}) for n in names)


def model_fingerprint(model) -> str:
    """A digest of everything a method could leave changed: generated code, the module tree (names
    and types), hook counts per module, and the bytes of every parameter and buffer."""
    import torch

    gm = model.graph
    h = hashlib.blake2b(digest_size=16)
    h.update(gm.code.encode())
    for name, module in gm.named_modules():
        h.update(f"{name}:{type(module).__qualname__}:{[len(d) for d in _hooks(module)]};".encode())
    for name, tensor in list(gm.named_parameters()) + list(gm.named_buffers()):
        h.update(name.encode())
        t = tensor.detach()
        h.update(str((t.dtype, tuple(t.shape), t.requires_grad)).encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


class ModelGuard:
    """Remember a model's graph and weights; tell whether a method changed them; put them back."""

    def __init__(self, model):
        gm = model.graph
        self.model = model
        self.modules = dict(gm.named_modules())
        self.hooks = {name: _hooks(m) for name, m in self.modules.items()}
        self.graph = copy.deepcopy(gm.graph)
        self.tensors = {
            name: t.detach().clone().cpu()
            for name, t in list(gm.named_parameters()) + list(gm.named_buffers())
        }
        self.requires_grad = {name: p.requires_grad for name, p in gm.named_parameters()}
        self.fingerprint = model_fingerprint(model)

    def changed(self) -> bool:
        return model_fingerprint(self.model) != self.fingerprint

    def restore(self) -> bool:
        """Put modules, hooks, graph and tensor values back; True when the fingerprint matches again."""
        import torch

        gm = self.model.graph
        for name, module in self.modules.items():
            if not name:
                continue
            parent, _, leaf = name.rpartition(".")
            with contextlib.suppress(AttributeError):
                setattr(gm.get_submodule(parent) if parent else gm, leaf, module)
        names = (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        )
        for name, module in self.modules.items():
            for attr, saved in zip(names, self.hooks[name]):
                current = getattr(module, attr, None)
                if current is not None:
                    current.clear()
                    current.update(saved)
        gm.graph = copy.deepcopy(self.graph)
        gm.recompile()
        with torch.no_grad():
            for name, tensor in list(gm.named_parameters()) + list(gm.named_buffers()):
                saved = self.tensors.get(name)
                if saved is not None and saved.shape == tensor.shape:
                    tensor.copy_(saved.to(tensor.device, tensor.dtype))
            for name, p in gm.named_parameters():
                p.requires_grad_(self.requires_grad.get(name, False))
        return not self.changed()
