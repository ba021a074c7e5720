"""Temporary graph changes — module swaps, inserted modules, taps — each undone on exit.

Methods change how a network computes only through these context managers (invariant 3: a
method leaves the model as it found it, also after an exception). They live apart from the
graph analyses because they are the one part of :class:`~xplain.graph.model.Model` that
mutates: keeping the bookkeeping (which modules a live tap hooks, the names of inserted
modules) in one small class makes the restore logic reviewable on its own.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
from collections.abc import Iterator
from functools import partial
from typing import Any, Protocol

import torch
from torch import fx, nn


class _Host(Protocol):
    """What :class:`Surgery` needs of a model."""

    graph: fx.GraphModule

    @property
    def device(self) -> torch.device: ...

    def node(self, name: str) -> fx.Node: ...


class Surgery:
    """The temporary changes to one model's graph. ``model`` gives the ``graph``, resolves a
    layer name with ``node(name)`` (the model's error for an unknown one) and says where new
    modules go (``device``); it is read on each use, never captured, so a copied or unpickled
    model changes its own graph."""

    def __init__(self, model: _Host):
        self.model = model
        self._insert_ids = itertools.count()
        self._tapped: set[str] = (
            set()
        )  #: module targets a live tap hooks (they must not be swapped)
        self._live = 0  #: swap_modules / insert_after contexts now open

    @property
    def modified(self) -> bool:
        """True while a swap, an insert or a tap is live: the graph is not the file's then, so
        forward-only work must run it on torch (:mod:`xplain.onnx.engine`)."""
        return self._live > 0 or bool(self._tapped)

    @property
    def graph(self) -> fx.GraphModule:
        return self.model.graph

    def _node(self, name: str) -> fx.Node:
        return self.model.node(name)

    @contextlib.contextmanager
    def swap_modules(self, replacements: dict[str, nn.Module]) -> Iterator[None]:
        """Temporarily replace the modules of the named nodes (forward must stay the same)."""
        saved: dict[str, nn.Module] = {}
        nodes = {n.name: n for n in self.graph.graph.nodes} if len(replacements) > 1 else {}
        device = self.model.device
        self._live += 1
        try:
            for name, new in replacements.items():
                target = str((nodes[name] if name in nodes else self._node(name)).target)
                if target in self._tapped:
                    raise RuntimeError(
                        f"node {name!r} is tapped: enter Model.tap inside swap_modules/apply_rules, "
                        "so the tap's hook sits on the module that runs"
                    )
                saved[target] = self.graph.get_submodule(target)
                set_submodule(self.graph, target, new.to(device))
            yield
        finally:
            self._live -= 1
            for target, old in saved.items():
                set_submodule(self.graph, target, old)

    @contextlib.contextmanager
    def insert_after(self, modules: dict[str, nn.Module]) -> Iterator[None]:
        """Temporarily route each named node's output through a module (e.g. a bottleneck)."""
        graph = self.graph.graph
        inserted: list[tuple[fx.Node, fx.Node, str]] = []
        self._live += 1
        try:
            for name, module in modules.items():
                site = self._node(name)
                target = f"xplain_inserted_{next(self._insert_ids)}"
                self.graph.add_submodule(target, module.to(self.model.device))
                with graph.inserting_after(site):
                    new = graph.call_module(target, (site,))
                site.replace_all_uses_with(new, delete_user_cb=partial(operator.is_not, new))
                inserted.append((site, new, target))
            self.graph.recompile()
            yield
        finally:
            self._live -= 1
            for site, new, target in reversed(inserted):
                new.replace_all_uses_with(site)
                graph.erase_node(new)
                delattr(self.graph, target)
            if inserted:
                self.graph.recompile()

    @contextlib.contextmanager
    def tap(self, names: list[str], gradients: bool = True, leaf: bool = False) -> Iterator[Tap]:
        """Record outputs (and gradients) at the named nodes (see :meth:`xplain.Model.tap`)."""
        tap = Tap(gradients, leaf)
        handles: list[Any] = []
        targets: list[str] = []
        others: dict[str, nn.Module] = {}
        try:
            for name in names:
                node = self._node(name)
                target = str(node.target)
                if node.op == "call_module" and target not in self._tapped:
                    module = self.graph.get_submodule(target)
                    handles.append(
                        module.register_forward_hook(
                            lambda _m, _args, out, name=name: (
                                tap.record(name, out) if isinstance(out, torch.Tensor) else None
                            )
                        )
                    )  # record() returns the output to use: None keeps it
                    self._tapped.add(target)
                    targets.append(target)
                else:
                    others[name] = _TapModule(tap, name)
            with self.insert_after(others) if others else contextlib.nullcontext():
                yield tap
        finally:
            for handle in handles:
                handle.remove()
            self._tapped.difference_update(targets)


class Tap:
    """What :meth:`Model.tap` collected: ``activations[name]`` and ``gradients[name]``.

    A graph fixed at batch 1 runs once per sample, so a tap sees one slice per call; the
    dicts concatenate the slices in call order, so they always cover the whole batch. A
    concatenation is not a node of the autograd graph: to differentiate *with respect to* a
    tapped activation, run a fixed-batch graph one sample at a time."""

    def __init__(self, gradients: bool, leaf: bool = False):
        self.want_gradients = gradients
        self.leaf = leaf
        self._activations: dict[str, list[torch.Tensor]] = {}
        self._gradients: dict[str, dict[int, torch.Tensor]] = {}

    def record(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """Keep ``x``; returns its leaf replacement with ``leaf`` (else None: x stays)."""
        replaced = None
        if self.leaf and x.is_floating_point() and torch.is_grad_enabled():
            x = replaced = x.detach().requires_grad_(True)
        calls = self._activations.setdefault(name, [])
        index = len(calls)
        calls.append(x)
        if self.want_gradients and x.requires_grad:
            x.register_hook(lambda g: self._gradients.setdefault(name, {}).__setitem__(index, g))
        return replaced

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        return {
            name: calls[0] if len(calls) == 1 else torch.cat(calls)
            for name, calls in self._activations.items()
        }

    @property
    def gradients(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, by_call in self._gradients.items():
            parts = [by_call[i] for i in sorted(by_call)]
            out[name] = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out


class _TapModule(nn.Module):
    def __init__(self, tap: Tap, name: str):
        super().__init__()
        self._tap, self._name = tap, name

    def forward(self, x):
        if isinstance(x, torch.Tensor):
            replaced = self._tap.record(self._name, x)
            return x if replaced is None else replaced
        return x


def set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
