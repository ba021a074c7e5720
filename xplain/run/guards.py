"""Run guards for ``xplain eval`` (and anything else that writes into one output folder).

Small functions with one job each, so other run drivers (sharded or distributed eval) can call them:

* :func:`lock_output` — an exclusive ``fcntl.flock`` on the ``OUT`` folder itself for the whole run, so a
  second concurrent run on the same ``--out`` refuses with one line instead of duplicating every line
  of ``results.jsonl``. The lock dies with the process (no stale lock after ``kill -9``).
* :class:`ModelGuard` — a fingerprint of the graph (generated code, module tree, hooks), of every
  parameter and buffer, of every module's plain attributes (train mode, Conv strides, an instance
  ``forward``) and module classes, and of the identity of torch's functions (``torch.relu``,
  ``F.relu``, ``Tensor.relu`` …; :mod:`xplain.run.integrity`), taken before the methods run and
  checked after each one. A buggy method that
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
from . import integrity

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
    h.update(integrity.module_state_text(gm).encode())
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
        self.attributes = integrity.module_state(gm)
        self.functions = integrity.torch_functions()
        self.fingerprint = model_fingerprint(model)

    def changed(self) -> bool:
        """True when the graph, its weights or attributes, or one of torch's functions changed."""
        return model_fingerprint(self.model) != self.fingerprint or bool(
            integrity.changed_torch_functions(self.functions)
        )

    def what_changed(self) -> str:
        """A few words for the message: which torch functions were replaced, else "the model"."""
        names = integrity.changed_torch_functions(self.functions)
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            return f"torch's functions ({shown})"
        return "the model's graph, weights or module attributes"

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
        integrity.restore_torch_functions(self.functions)
        gm.graph = copy.deepcopy(self.graph)
        gm.recompile()
        integrity.restore_module_state(gm, self.attributes)
        with torch.no_grad():
            for name, tensor in list(gm.named_parameters()) + list(gm.named_buffers()):
                saved = self.tensors.get(name)
                if saved is not None and saved.shape == tensor.shape:
                    tensor.copy_(saved.to(tensor.device, tensor.dtype))
            for name, p in gm.named_parameters():
                p.requires_grad_(self.requires_grad.get(name, False))
        return not self.changed()


class InputWatch:
    """What a metric is handed — the batch ``x``, the maps and extras — and the model, checked
    after the metric ran: a metric that edits one of them in place would change every later
    metric's score (and the saved maps). :meth:`check` restores them and names what changed."""

    def __init__(self, guard: ModelGuard | None, x, attribution):
        self.guard, self.x, self.attribution = guard, x, attribution
        self.saved_x = x.detach().clone()
        self.saved_maps = attribution.maps.detach().clone()
        self.saved_extras = {k: v.detach().clone() for k, v in attribution.extras.items()}
        self.extras = dict(attribution.extras)

    def check(self) -> str | None:
        """None when nothing changed; else restore everything and return a few words."""
        import torch

        changed = []
        if not torch.equal(self.x, self.saved_x):
            changed.append("the input batch x")
            with torch.no_grad():
                self.x.copy_(self.saved_x)
        maps = self.attribution.maps
        if maps.shape != self.saved_maps.shape or not torch.equal(maps, self.saved_maps):
            changed.append("the maps")
        if self.attribution.extras.keys() != self.saved_extras.keys() or any(
            self.attribution.extras[k] is not self.extras[k] or not torch.equal(self.extras[k], v)
            for k, v in self.saved_extras.items()
        ):
            changed.append("the extras")
        if set(changed) - {"the input batch x"}:
            self.attribution.maps = self.saved_maps.clone()
            self.attribution.extras = {k: v.clone() for k, v in self.saved_extras.items()}
            self.extras = dict(self.attribution.extras)
        if self.guard is not None and self.guard.changed():
            changed.append(self.guard.what_changed())
            if not self.guard.restore():
                from ..errors import PluginError

                raise PluginError(
                    f"a metric changed {self.guard.what_changed()} and it could not be restored; "
                    "stopping so no later score is computed on a corrupted model"
                )
        return " and ".join(changed) if changed else None


def check_unchanged(guard: ModelGuard | None, what: str) -> None:
    """After one plugin call outside eval (``explain``, the Python API): a change to the model
    or to torch's functions is restored and reported as a :class:`PluginError` (exit 4), so no
    result computed on a changed model is written."""
    from ..errors import PluginError

    if guard is None or not guard.changed():
        return
    changed = guard.what_changed()
    restored = guard.restore()
    raise PluginError(
        f"{what} changed {changed} (weights edited in place, a hook left behind, train mode, a "
        "replaced forward or torch function); "
        + ("the model was restored and nothing of it was written" if restored else "stopped")
    )


def fail_if_invalid(summary: dict) -> None:
    """End of ``eval``: methods or metrics whose results were discarded because they changed the
    model, the inputs or torch (named in ``summary["invalid"]``) make the run exit 4."""
    from ..errors import PluginError

    invalid = summary.get("invalid") or {}
    if invalid:
        first = next(iter(invalid.items()))
        raise PluginError(
            f"results of {', '.join(sorted(invalid))} are invalid and were not scored: "
            f"{first[0]}: {first[1]}",
            path=summary.get("out"),
        )
