"""``xplain.evaluate`` / ``xplain eval``: score methods with metrics over a data set.

(The module is ``evaluation``, not ``evaluate``: a submodule named ``evaluate`` would replace the
``xplain.evaluate`` function on the package as soon as it was imported.)

The run streams the data in batches (memory does not grow with the data set), explains each
batch with every method, scores every metric, and appends one JSON line per (image, method) to
``OUT/results.jsonl``, flushed and fsynced per batch. Every line carries a key — a hash of the
model digest, image path, method, method parameters, seed, metrics with their parameters and
the preprocessing — so re-running the same command skips what is done, and a run killed at any
point loses nothing already written and writes no duplicates (a torn last line is cut off before
appending). At the end it writes ``summary.json`` and ``summary.csv`` atomically (mean, standard
error and count per method × score, from the lines of this configuration only), the mean curves
of the curve metrics to ``plots/*.png`` (one line per method) and a montage of the maps of every
method for the first few images.

Targets: the sample's label when the data has one, else the model's top-1 class. A sample that
cannot be used (bad manifest row, unreadable image, a method failing on it) becomes an error line
and is skipped; the summary counts errors per method.

The stages, one module each, in the one direction data flows:

1. plan (:mod:`xplain.run.planning`): methods × metrics resolved, result keys, jobs, batches;
2. score a batch (:mod:`xplain.run.scoring`): the same function on the local loop and on Ray;
3. records (:mod:`xplain.run.records`): append, read, resume; shards (:mod:`xplain.run.shards`);
4. summary (:mod:`xplain.run.summary`);
5. plots and report (:mod:`xplain.output.plots`, :mod:`xplain.output.report`).

This module only drives them: :func:`evaluate` (a run) and :func:`summarize` (merging the shards
of a run) read as the list of those stages. It is the one module of ``xplain.run`` allowed to
import ``xplain.output`` for that last stage (see tests/test_imports.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import Sample, class_names_of, output_exclusion, read_dataset
from ..data.images import Preprocess
from ..data.pipeline import default_workers, prefetch
from ..errors import InputDataError, UsageError
from ..fileio import save_npy, write_failed
from ..graph.model import Model
from ..onnx.engine import configure as configure_engine
from ..onnx.engine import describe as describe_engine
from ..output.plots import keep_view, write_plots
from ..output.report import write_report
from ..plugins.registry import Registry, get_registry, validate_params
from ..untrusted import path_text
from .dataset_stage import score_dataset
from .guards import ModelGuard, lock_output
from .planning import Job, Plan, RunPlan, Selection, batches_of, plan_run
from .records import RESULTS, append_records, read_results, repair_tail
from .scoring import score_batch
from .shards import (
    Shard,
    lock_results,
    missing_report,
    read_run,
    result_files,
    result_key,
    write_run,
)
from .summary import summarise, write_summary


def evaluate(
    model: Model,
    data: str | Path,
    *,
    methods: list,
    metrics: list,
    out_dir: str | Path = "xplain-eval",
    labels: str | Path | None = None,
    boxes: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    resume: bool = True,
    preprocess: Preprocess | None = None,
    method_params: dict | None = None,
    metric_params: dict | None = None,
    registry: Registry | None = None,
    progress: Callable[[int, int], None] | None = None,
    montage: int = 4,
    plots: bool = True,
    report_images: int = 8,
    timeout: float | None = None,
    workers: int | None = None,
    worker_kind: str = "thread",
    shard: Shard | None = None,
    ray: dict | None = None,
    engine: str | None = None,
) -> dict:
    """Evaluate ``methods`` with ``metrics`` on ``data``; returns the summary (also written to disk).

    ``methods``/``metrics`` are names (or Method/Metric objects); ``method_params`` and
    ``metric_params`` map a name to its parameters (strings or values). ``progress(done, total)``
    is called after each batch with the number of images handled so far. The maps of the first
    ``max(montage, report_images)`` images are kept in ``OUT/maps/`` for the montage and for
    ``OUT/report.html``, which is written at the end (:func:`xplain.report.write_report`).
    ``timeout`` bounds each method call (seconds). The output folder is locked for the run
    (:func:`~xplain.run.guards.lock_output`; a shard locks only its results file, so shards can
    share the folder), images inside it are not read as data, and the model is checked after
    every method (:class:`~xplain.run.guards.ModelGuard`).

    ``workers``: background decoding workers (None = the number of cores, 0 = decode in the
    calling thread); ``worker_kind`` "thread" or "process". ``shard``: evaluate only this
    shard's part of the data (see :mod:`xplain.run.shards`), into ``results.shard-I-of-N.jsonl``;
    the summary of a sharded run covers its shard and is not written (``xplain eval summarize``
    merges the shards). ``ray``: ``{"address": ..., "workers": N, "gpus_per_worker": F}`` runs
    the batches on Ray actors (see :mod:`xplain.run.ray_engine`); this process stays the only writer.
    ``engine``: what forward-only work runs on (auto, torch, onnxruntime; None: the model's, see
    :mod:`xplain.onnx.engine`); records say which served it, ``run.json`` the settings.
    """
    registry = registry or get_registry()
    configure_engine(model, engine)
    preprocess = preprocess or Preprocess.for_model(model)
    selection = Selection(methods, metrics, method_params, metric_params)
    plan = plan_run(model, selection, registry, seed=int(seed), preprocess=preprocess)
    if batch_size < 1:
        raise UsageError("batch size must be at least 1")
    out = Path(out_dir)
    samples = read_dataset(
        Path(data),
        class_names=class_names_of(model),
        labels=labels,
        boxes=boxes,
        limit=limit,
        exclude=output_exclusion(Path(data), out),
    )
    shard = shard or Shard(0, 1)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(out, e) from None
    results = out / shard.results_name
    with lock_output(out) if shard.count == 1 else lock_results(results):
        if not resume and results.exists():
            results.unlink()
        repair_tail(results)
        images = [str(s.path.resolve()) for s in samples]
        write_run(out, _run_record(model, plan, data, int(seed), preprocess, montage, images))
        mine = plan.owned(samples, Path(data), shard)
        wanted = plan.wanted(images, mine)
        done = _done(results, wanted)
        jobs = plan.jobs(samples, images, mine, done)
        keep = max(int(montage), int(report_images))  # images whose maps and views are kept
        batch_plan = Plan(seed=int(seed), batch_size=batch_size, montage=keep, timeout=timeout)
        _score_all(
            model,
            batches_of(jobs, batch_size),
            plan,
            batch_plan,
            _Writer(out, results, done, preprocess),
            progress=progress,
            handled=len(mine) - len(jobs),
            total=len(mine),
            ray=ray,
            workers=workers,
            worker_kind=worker_kind,
            preprocess=preprocess,
        )
        extra = None  # dataset-scope metrics: over every image, after the batches
        if shard.count == 1:  # a shard's are scored by `eval summarize` over the merged shards
            extra = score_dataset(
                out, plan.methods, plan.metrics, plan.configs, images, [results], seed, model
            )
        summary = summarise(results, wanted, plan.methods, plan.metrics, extra)
        if extra and extra["errors"]:
            summary["dataset_errors"] = extra["errors"]
        summary.update(
            {
                "model": str(model.report.path),
                "digest": model.digest,
                "data": str(data),
                "images": len(mine),
                "seed": int(seed),
                "out": str(out),
            }
        )
        if shard.count > 1:
            summary["shard"] = shard.label
            return summary
        summary.update(missing_report(out, plan.configs, images, [results]))
        _finish(
            out, summary, samples, [m.name for m, _ in plan.methods], montage, preprocess, plots
        )
        return summary


def summarize(out: Path, *, plots: bool = True, registry=None) -> dict[str, Any]:
    """Merge every results file in ``out`` into summary.json/csv and plots; report missing images.

    The same stages as the end of :func:`evaluate`, with the plan read back from ``run.json``."""
    out = Path(out)
    if not out.is_dir():
        raise InputDataError("no such folder", path=out)
    run = read_run(out)
    registry = registry or get_registry()
    methods = []
    for name, params in run["methods"].items():
        method = registry.method(name)
        methods.append((method, validate_params(method.params, params, f"method {name!r}")))
    metrics = []
    for name, params in run["metrics"].items():
        metric = registry.metric(name)
        metrics.append((metric, validate_params(metric.params, params, f"metric {name!r}")))
    configs, images = run["configs"], run["images"]
    wanted = {result_key(configs[m.name], img) for m, _ in methods for img in images}
    files = result_files(out)
    extra = score_dataset(out, methods, metrics, configs, images, files, run.get("seed", 0))
    summary = summarise(files, wanted, methods, metrics, extra)
    if extra and extra["errors"]:
        summary["dataset_errors"] = extra["errors"]
    summary.update(
        {
            "model": run.get("model", ""),
            "digest": run.get("digest", ""),
            "data": run.get("data", ""),
            "images": len(images),
            "seed": run.get("seed", 0),
            "out": str(out),
            "results_files": [p.name for p in files],
        }
    )
    summary.update(missing_report(out, configs, images, files))
    montage = int(run.get("montage", 0))
    samples = [Sample(Path(p), None, None) for p in images[:montage]]
    preprocess = _preprocess_of(run)
    _finish(
        out,
        summary,
        samples,
        [m.name for m, _ in methods],
        montage,
        preprocess,
        plots and preprocess is not None,
    )
    return summary


# ----------------------------------------------------------------------------- the driver's parts
def _run_record(
    model: Model,
    plan: RunPlan,
    data: str | Path,
    seed: int,
    preprocess: Preprocess,
    montage: int,
    images: list[str],
) -> dict:
    """``run.json``: what ``summarize`` needs to merge the shards of this run."""
    return {
        "configs": plan.configs,
        "methods": {m.name: p for m, p in plan.methods},
        "metrics": plan.metric_config,
        "model": str(model.report.path),
        "digest": model.digest,
        "data": str(data),
        "seed": seed,
        "preprocess": preprocess.to_dict(),
        "montage": montage,
        "images": images,
        "engine": describe_engine(model),
    }


def _done(results: Path, wanted: set[str]) -> set[str]:
    """Resume: the wanted keys already in the results file (damaged lines are redone)."""
    damaged: list[int] = []
    done = {r["key"] for r in read_results(results, damaged)} & wanted
    if damaged:
        warnings.warn(
            f"{path_text(results)}: skipped {len(damaged)} damaged line(s) (first: line {damaged[0]}); "
            "their work is redone",
            stacklevel=3,
        )
    return done


class _Writer:
    """The only writer of a run: a scored batch's maps, views and new records (a retried batch
    writes once, and a key twice in one batch once)."""

    def __init__(self, out: Path, results: Path, done: set[str], preprocess: Preprocess):
        self.out, self.results, self.done, self.preprocess = out, results, done, preprocess

    def __call__(
        self, batch_records: list[dict], maps: list[tuple[int, str, np.ndarray]], views: list
    ) -> None:
        firsts: dict[str, dict] = {}
        for r in batch_records:
            if r["key"] not in self.done:
                firsts.setdefault(r["key"], r)
        fresh = list(firsts.values())
        for index, method, array in maps:
            save_npy(self.out / "maps" / f"{index:05d}.{method}.npy", array)
        for index, sample, array in views:
            keep_view(self.out, index, sample, array, self.preprocess)
        append_records(self.results, fresh)
        self.done.update(r["key"] for r in fresh)


def _score_all(
    model: Model,
    batches: list[list[Job]],
    plan: RunPlan,
    batch_plan: Plan,
    write: _Writer,
    *,
    progress: Callable[[int, int], None] | None,
    handled: int,
    total: int,
    ray: dict | None,
    workers: int | None,
    worker_kind: str,
    preprocess: Preprocess,
) -> None:
    """Score every batch — on Ray actors or in this process, through the same
    :func:`~xplain.run.scoring.score_batch` — and write each as it comes back."""

    def advance(n_jobs: int) -> None:
        nonlocal handled
        handled += n_jobs
        if progress is not None:
            progress(handled, total)

    advance(0)
    guard = ModelGuard(model)
    if ray is not None:
        from .ray_engine import run_on_ray

        def on_batch(batch_records, maps, views, n_jobs):
            write(batch_records, maps, views)
            advance(n_jobs)

        run_on_ray(
            model, batches, plan.methods, plan.metrics, preprocess, batch_plan, on_batch, **ray
        )
        return
    n_workers = default_workers() if workers is None else max(0, int(workers))
    stream = prefetch(
        ([(j.index, j.sample) for j in b] for b in batches),
        preprocess,
        workers=n_workers,
        kind=worker_kind,
    )
    for batch, prepared in zip(batches, stream):  # prefetch yields the batches in order
        moved = [0.0]

        def within(fraction: float, n: int = len(batch), moved=moved) -> None:
            """The bar moves per stage of the batch (a method, a metric), not once per batch."""
            moved[0] = min(float(n), moved[0] + fraction * n)
            if progress is not None:
                progress(handled + moved[0], total)

        write(
            *score_batch(
                model, batch, prepared, plan.methods, plan.metrics, batch_plan, guard, within
            )
        )
        advance(len(batch))


def _finish(
    out: Path,
    summary: dict,
    samples: list[Sample],
    methods: list[str],
    montage: int,
    preprocess: Preprocess | None,
    plots: bool,
) -> None:
    """The last stages: summary.json/csv, plots and the montage, report.html."""
    write_summary(out, summary)
    if plots and preprocess is not None:
        write_plots(out, summary, samples, methods, montage, preprocess)
    write_report(out)


def _preprocess_of(run: dict) -> Preprocess | None:
    """The preprocessing recorded in run.json (None when it is missing or malformed)."""
    pre = run.get("preprocess") or {}
    try:
        return Preprocess(
            channels=int(pre["channels"]),
            size=tuple(pre["size"]),
            resize=pre["resize"],
            crop=tuple(pre["crop"]),
            scale=float(pre["scale"]),
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            preset=str(pre["preset"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


__all__ = [
    "RESULTS",
    "evaluate",
    "read_results",
    "summarise",
    "summarize",
    "write_summary",
    "write_plots",
]
