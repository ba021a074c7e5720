"""Stage 1 of an evaluation: the plan — which (method, parameters) × (metric, parameters) run,
under which configuration keys, on which images, in which batches.

Why a module of its own: planning is pure (no file is read or written here, nothing runs), so it
is where new ways of *choosing* what to evaluate plug in without touching scoring or records.
The seam for that is :class:`Selection`: today the CLI and :func:`xplain.evaluate` build it from
``--methods/--metrics/--param/--metric-param``; a *protocol* (a data file naming methods with
their parameters and metrics with theirs, e.g. LATEC's) is read into the same ``Selection`` and
planned by the same :func:`plan_run`, so results keys, resume, shards and Ray stay unchanged.

The result keys made here are the contract of the records stage (:mod:`xplain.run.records`):
a hash of the model digest, seed, metrics with their parameters, preprocessing, method and
method parameters (the *configuration*), and the image path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.datasets import Sample
from ..data.images import Preprocess
from ..errors import UsageError
from ..graph.model import Model
from ..plugins.registry import Registry
from .api import check_requirements
from .shards import Shard, data_root, image_key, result_key
from .shards import digest as _digest


@dataclasses.dataclass(frozen=True)
class Selection:
    """What to evaluate, before it is resolved against the registry: methods and metrics (names
    or plugin objects) and their parameters by name (strings or values).

    A protocol file becomes one of these (that reader is the seam for LATEC-style protocols);
    :func:`plan_run` resolves and validates it the same way whatever built it."""

    methods: Sequence[Any]
    metrics: Sequence[Any]
    method_params: dict | None = None
    metric_params: dict | None = None


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A resolved :class:`Selection` for one model, seed and preprocessing: the chosen
    (method, params) and (metric, params) pairs and each method's configuration digest."""

    methods: list[tuple[Any, dict]]
    metrics: list[tuple[Any, dict]]
    configs: dict[str, str]

    @property
    def metric_config(self) -> dict[str, dict]:
        return {m.name: p for m, p in self.metrics}

    def key(self, image: str, method: str) -> str:
        """The result key of (image, method) under this plan."""
        return result_key(self.configs[method], image)

    def owned(self, samples: list[Sample], data: Path, shard: Shard) -> list[int]:
        """Indices of the samples ``shard`` owns (all of them for one shard)."""
        root = data_root(data)
        return [i for i, s in enumerate(samples) if shard.owns(image_key(s.path, root))]

    def wanted(self, images: list[str], mine: list[int]) -> set[str]:
        """Every result key this run should end with."""
        return {self.key(images[i], m.name) for i in mine for m, _ in self.methods}

    def jobs(
        self, samples: list[Sample], images: list[str], mine: list[int], done: set[str]
    ) -> list[Job]:
        """One job per owned image with a method not done yet (resume skips the rest)."""
        jobs = []
        for i in mine:
            todo = {m.name: self.key(images[i], m.name) for m, _ in self.methods}
            todo = {m: k for m, k in todo.items() if k not in done}
            if todo:
                jobs.append(Job(i, samples[i], todo))
        return jobs


def plan_run(
    model: Model,
    selection: Selection,
    registry: Registry,
    *,
    seed: int,
    preprocess: Preprocess,
) -> RunPlan:
    """Resolve ``selection`` (an unknown name or bad parameter is a UsageError), refuse a method
    whose requirements the model does not meet — all before any work — and derive the keys."""
    if not selection.methods:
        raise UsageError("no methods to evaluate")
    methods = registry.resolve("method", selection.methods, selection.method_params)
    for method, _ in methods:  # refuse before any work: one line, exit 2
        check_requirements(model, method)
    metrics = registry.resolve("metric", selection.metrics, selection.metric_params)
    base = {
        "model": model.digest,
        "seed": int(seed),
        "metrics": {m.name: p for m, p in metrics},
        "preprocess": preprocess.to_dict(),
    }
    configs = {m.name: _digest({**base, "method": m.name, "params": p}) for m, p in methods}
    return RunPlan(methods, metrics, configs)


def batches_of(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """The jobs in batches of ``batch_size`` (the last one shorter)."""
    return [jobs[k : k + batch_size] for k in range(0, len(jobs), batch_size)]


@dataclasses.dataclass
class Job:
    """One image to score: its position in the data set, the sample, and method -> result key for
    the methods not done yet. Keys are made by the driver, so workers never compute them."""

    index: int
    sample: Sample
    keys: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every batch shares (shipped once to Ray workers)."""

    seed: int
    batch_size: int
    montage: int
    timeout: float | None = None
