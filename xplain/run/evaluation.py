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
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.datasets import Sample, class_names_of, output_exclusion, read_dataset
from ..data.images import Preprocess, load_image
from ..data.pipeline import Prepared, default_workers, prefetch, to_device
from ..errors import PluginError, UsageError, XplainError
from ..graph.model import Model
from ..output.fileio import atomic_write, save_npy, write_failed
from ..plugins.plugin_api import Method, MetricContext
from ..plugins.registry import Registry, get_registry
from ..untrusted import path_text, printable, safe_stem
from .api import check_requirements, run_method
from .engine import configure as configure_engine
from .engine import describe as describe_engine
from .engine import engines_between, forward_counts
from .guards import ModelGuard, lock_output
from .shards import Shard, data_root, image_key, lock_results, missing_report, result_key, write_run
from .shards import digest as _digest

RESULTS = "results.jsonl"


# ----------------------------------------------------------------------------- results file
def _repair_tail(path: Path) -> None:
    """Cut a torn last line (a run killed mid-write) so the next append starts a fresh line."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos = size
        block = 1 << 16
        while pos > 0:  # find the last newline
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                f.truncate(start + i + 1)
                break
            pos = start
        else:
            f.truncate(0)
        f.flush()
        os.fsync(f.fileno())


def read_results(path: Path, damaged: list[int] | None = None):
    """Yield the records of a results file, skipping lines that cannot be used.

    A damaged line — invalid UTF-8, not JSON, nested absurdly deep, a huge integer, not an
    object, a key that is not a string — is skipped and its line number appended to ``damaged``
    (when given), so resume goes on and the caller can report them."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw.decode("utf-8"))
                ok = _well_formed(record)
            except (UnicodeDecodeError, ValueError, RecursionError):
                ok = False
            if ok:
                yield record
            elif damaged is not None:
                damaged.append(number)


def _number(v: Any) -> bool:
    return v is None or (
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    )


def _well_formed(record: Any) -> bool:
    """A results line is used only when every field the summary reads has the right type."""
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("key"), str)
        or not isinstance(record.get("method", ""), str)
        or not isinstance(record.get("error", ""), str)
    ):
        return False
    scores, curves, xs = (
        record.get("scores", {}),
        record.get("curves", {}),
        record.get("curve_x", {}),
    )
    if not isinstance(scores, dict) or not isinstance(curves, dict) or not isinstance(xs, dict):
        return False
    return (
        all(_number(v) for v in scores.values())
        and all(isinstance(c, list) and all(_number(v) for v in c) for c in curves.values())
        and all(isinstance(c, list) and all(_number(v) for v in c) for c in xs.values())
    )


def _append(path: Path, records: list[dict]) -> None:
    if not records:
        return
    text = "".join(json.dumps(r, allow_nan=False, separators=(",", ":")) + "\n" for r in records)
    data = text.encode("utf-8", "backslashreplace")  # undecodable file names as \udcNN escapes
    try:
        with open(path, "ab") as f:
            start = f.tell()
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):  # no torn line left behind (disk full)
                    f.truncate(start)
                raise
    except OSError as e:
        raise write_failed(path, e) from None


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- the run
def _resolve(items, kind: str, registry: Registry, given: dict | None) -> list[tuple[Any, dict]]:
    return registry.resolve(kind, items, given)


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
    """
    registry = registry or get_registry()
    configure_engine(model, engine)  # auto, torch or onnxruntime for forward-only work; None: keep
    if not methods:
        raise UsageError("no methods to evaluate")
    chosen_methods = _resolve(methods, "method", registry, method_params)
    for method, _ in chosen_methods:  # refuse before any work: one line, exit 2
        check_requirements(model, method)
    chosen_metrics = _resolve(metrics, "metric", registry, metric_params)
    if batch_size < 1:
        raise UsageError("batch size must be at least 1")
    preprocess = preprocess or Preprocess.for_model(model)
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
        _repair_tail(results)

        metric_config = {m.name: p for m, p in chosen_metrics}
        base = {
            "model": model.digest,
            "seed": int(seed),
            "metrics": metric_config,
            "preprocess": preprocess.to_dict(),
        }
        configs = {
            m.name: _digest({**base, "method": m.name, "params": p}) for m, p in chosen_methods
        }
        images = [str(s.path.resolve()) for s in samples]
        write_run(
            out,
            {
                "configs": configs,
                "methods": {m.name: p for m, p in chosen_methods},
                "metrics": metric_config,
                "model": str(model.report.path),
                "digest": model.digest,
                "data": str(data),
                "seed": int(seed),
                "preprocess": preprocess.to_dict(),
                "montage": montage,
                "images": images,
                "engine": describe_engine(model),
            },
        )

        def key(image: str, method: str) -> str:
            return result_key(configs[method], image)

        root = data_root(Path(data))
        mine = [i for i, s in enumerate(samples) if shard.owns(image_key(s.path, root))]
        wanted = {key(images[i], m.name) for i in mine for m, _ in chosen_methods}
        damaged: list[int] = []
        done = {r["key"] for r in read_results(results, damaged)} & wanted
        if damaged:
            import warnings

            warnings.warn(
                f"{path_text(results)}: skipped {len(damaged)} damaged line(s) (first: line {damaged[0]}); "
                "their work is redone",
                stacklevel=2,
            )
        jobs = []
        for i in mine:
            todo = {m.name: key(images[i], m.name) for m, _ in chosen_methods}
            todo = {m: k for m, k in todo.items() if k not in done}
            if todo:
                jobs.append(Job(i, samples[i], todo))
        batches = [jobs[k : k + batch_size] for k in range(0, len(jobs), batch_size)]
        handled = len(mine) - len(jobs)
        if progress is not None:
            progress(handled, len(mine))

        def write(
            batch_records: list[dict], maps: list[tuple[int, str, np.ndarray]], views: list
        ) -> None:
            # a retried batch writes once, and a key twice in one batch once
            firsts: dict[str, dict] = {}
            for r in batch_records:
                if r["key"] not in done:
                    firsts.setdefault(r["key"], r)
            fresh = list(firsts.values())
            for index, method, array in maps:
                save_npy(out / "maps" / f"{index:05d}.{method}.npy", array)
            for index, sample, array in views:
                _keep_view(out, index, sample, array, preprocess)
            _append(results, fresh)
            done.update(r["key"] for r in fresh)

        keep = max(
            int(montage), int(report_images)
        )  # images whose maps and views are kept in OUT/maps
        plan = Plan(seed=int(seed), batch_size=batch_size, montage=keep, timeout=timeout)
        guard = ModelGuard(model)
        if ray is not None:
            from .ray_engine import run_on_ray

            def on_batch(batch_records, maps, views, n_jobs):
                nonlocal handled
                write(batch_records, maps, views)
                handled += n_jobs
                if progress is not None:
                    progress(handled, len(mine))

            run_on_ray(
                model, batches, chosen_methods, chosen_metrics, preprocess, plan, on_batch, **ray
            )
        else:
            n_workers = default_workers() if workers is None else max(0, int(workers))
            stream = prefetch(
                ([(j.index, j.sample) for j in b] for b in batches),
                preprocess,
                workers=n_workers,
                kind=worker_kind,
            )
            for batch, prepared in zip(batches, stream):  # prefetch yields the batches in order
                write(
                    *score_batch(
                        model, batch, prepared, chosen_methods, chosen_metrics, plan, guard
                    )
                )
                handled += len(batch)
                if progress is not None:
                    progress(handled, len(mine))

        summary = summarise(results, wanted, chosen_methods, chosen_metrics)
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
        summary.update(missing_report(out, configs, images, [results]))
        write_summary(out, summary)
        if plots:
            write_plots(
                out, summary, samples, [m.name for m, _ in chosen_methods], montage, preprocess
            )
        from ..output.report import write_report

        write_report(out)
        return summary


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


def _pixels(arr: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """A preprocessed C×H×W array back to [0, 1] pixel values, H×W×C (H×W for one channel)."""
    img = (
        arr * np.asarray(preprocess.std)[:, None, None] + np.asarray(preprocess.mean)[:, None, None]
    )
    img = np.clip(img / (preprocess.scale * 255.0), 0, 1)
    return img.transpose(1, 2, 0).squeeze(axis=2) if img.shape[0] == 1 else img.transpose(1, 2, 0)


def _keep_view(
    out: Path, index: int, sample: Sample, arr: np.ndarray, preprocess: Preprocess
) -> None:
    """Save what the model saw of image ``index`` (``maps/NNNNN.image.png``) and where it came
    from (``maps/NNNNN.json``), so the report needs nothing outside OUT."""
    from PIL import Image

    from ..output.render import png_bytes

    pixels = np.rint(_pixels(arr, preprocess) * 255.0).astype(np.uint8)
    atomic_write(out / "maps" / f"{index:05d}.image.png", png_bytes(Image.fromarray(pixels)))
    facts = {"image": str(sample.path), "label": sample.label}
    atomic_write(out / "maps" / f"{index:05d}.json", (json.dumps(facts) + "\n").encode())


def _error_record(
    k: str, sample: Sample, method: str, params: dict, seed: int, message: str
) -> dict:
    return {
        "key": k,
        "image": path_text(sample.path),
        "method": method,
        "params": params,
        "seed": seed,
        "error": printable(" ".join(str(message).split())),
    }


def check_model_unchanged(
    guard: ModelGuard | None,
    method_name: str,
    lines: list[dict],
    samples_by_key: dict,
    params: dict,
    seed: int,
) -> list[dict]:
    """After a method ran: if it left the model changed, its records become error records and the
    model is restored (a :class:`PluginError` when that is impossible, since every later score
    would be wrong)."""
    if guard is None or not guard.changed():
        return lines
    if not guard.restore():
        raise PluginError(
            f"method {method_name!r} changed the model's graph or weights and it could not be "
            "restored; stopping so no later score is computed on a corrupted model"
        )
    message = (
        f"method {method_name!r} changed the model's graph or weights (a hook left behind or weights "
        "edited in place); its results are discarded and the model was restored"
    )
    return [
        _error_record(r["key"], samples_by_key[r["key"]], method_name, params, seed, message)
        for r in lines
    ]


def score_batch(
    model: Model,
    batch: list[Job],
    prepared: list[Prepared],
    chosen_methods,
    chosen_metrics,
    plan: Plan,
    guard: ModelGuard | None = None,
) -> tuple[list[dict], list[tuple[int, str, np.ndarray]], list[tuple[int, Sample, Any]]]:
    """Explain and score one batch: its result records, the maps of the first ``plan.montage``
    images (index, method, map) and what the model saw of them (index, sample, input array).

    Pure with respect to the output folder (the caller writes), so a Ray worker can run it.
    ``guard`` checks the model after every method (:func:`check_model_unchanged`)."""
    seed, montage = plan.seed, plan.montage
    by_index = {j.index: j for j in batch}
    records: list[dict] = []
    maps_out: list[tuple[int, str, np.ndarray]] = []
    loaded: dict[int, Prepared] = {}
    for p in prepared:
        if p.error is None:
            loaded[p.index] = p
            continue
        job = by_index[p.index]
        for m, params in chosen_methods:
            if m.name in job.keys:
                records.append(
                    _error_record(job.keys[m.name], job.sample, m.name, params, seed, p.error)
                )
    views = [(i, by_index[i].sample, p.array) for i, p in loaded.items() if i < montage]
    if not loaded:
        return records, maps_out, views
    order = sorted(loaded)
    x_all = to_device([a for i in order if (a := loaded[i].array) is not None], model.device)
    with torch.no_grad():
        logits = model(x_all).float()
    probs = torch.softmax(logits, dim=1)
    preds = probs.argmax(1)
    targets, bad = [], {}
    for row, i in enumerate(order):
        label = by_index[i].sample.label
        if label is not None and not 0 <= label < model.num_classes:
            bad[i] = f"label {label} is out of range for a model with {model.num_classes} classes"
        elif not bool(torch.isfinite(probs[row]).all()):
            bad[i] = (
                "the model's output for this image is not finite (NaN/Inf): check the preprocessing"
            )
        targets.append(int(preds[row]) if label is None or i in bad else int(label))
    t_all = torch.tensor(targets, device=model.device, dtype=torch.long)
    box_all: list[torch.Tensor | None] = []
    box_labels_all: list[torch.Tensor | None] = []
    for i in order:
        s, geo = by_index[i].sample, loaded[i].geometry
        if s.boxes is None or geo is None:
            box_all.append(None)
            box_labels_all.append(None)
            continue
        box_all.append(
            torch.tensor(
                [geo.box_to_input(b.xmin, b.ymin, b.xmax, b.ymax) for b in s.boxes],
                dtype=torch.float32,
            ).reshape(-1, 4)
        )
        box_labels_all.append(
            torch.tensor([-1 if b.label is None else b.label for b in s.boxes], dtype=torch.long)
        )
    state = _BatchState(
        order, by_index, x_all, t_all, probs, preds, box_all, box_labels_all, plan, cache={}
    )
    for method, mparams in chosen_methods:
        rows = [row for row, i in enumerate(order) if method.name in by_index[i].keys]
        for row in [r for r in rows if order[r] in bad]:
            job = by_index[order[row]]
            records.append(
                _error_record(
                    job.keys[method.name], job.sample, method.name, mparams, seed, bad[order[row]]
                )
            )
        rows = [r for r in rows if order[r] not in bad]
        if rows:
            lines, maps = _score_method(model, method, mparams, chosen_metrics, rows, state)
            by_key = {by_index[order[r]].keys[method.name]: by_index[order[r]].sample for r in rows}
            checked = check_model_unchanged(guard, method.name, lines, by_key, mparams, seed)
            records += checked
            if checked is lines:
                maps_out += maps
    return records, maps_out, views


@dataclasses.dataclass(frozen=True)
class _BatchState:
    """What :func:`score_batch` computed once for a batch and every method's scoring reads:
    the loaded rows (``order``: job indices by row), their inputs, targets, the model's
    probabilities and predictions, boxes in input coordinates, the plan, and ``cache`` (metric
    work shared by every method on this batch)."""

    order: list[int]
    by_index: dict[int, Job]
    x_all: torch.Tensor
    t_all: torch.Tensor
    probs: torch.Tensor
    preds: torch.Tensor
    box_all: list[torch.Tensor | None]
    box_labels_all: list[torch.Tensor | None]
    plan: Plan
    cache: dict


def _score_method(
    model: Model,
    method: Method,
    mparams: dict,
    chosen_metrics,
    rows: list[int],
    state: _BatchState,
) -> tuple[list[dict], list[tuple[int, str, np.ndarray]]]:
    """Run one method on ``rows`` of the batch and score its maps with every metric: one record
    per row (error records when the method fails; NaN and ``metric_errors`` for a failing
    metric), and the maps of the montage images."""
    order, by_index, x_all, t_all = state.order, state.by_index, state.x_all, state.t_all
    probs, preds, cache = state.probs, state.preds, state.cache
    seed, batch_size, montage = state.plan.seed, state.plan.batch_size, state.plan.montage
    timeout = state.plan.timeout
    sel = torch.tensor(rows, device=x_all.device)
    x, targets = x_all[sel], t_all[sel]
    jobs = [by_index[order[r]] for r in rows]
    samples = [j.sample for j in jobs]
    started, forwards = time.perf_counter(), forward_counts(model)
    try:
        attribution = run_method(model, method, x, targets, mparams, seed, timeout=timeout)
    except XplainError as e:
        return [
            _error_record(j.keys[method.name], j.sample, method.name, mparams, seed, str(e))
            for j in jobs
        ], []
    seconds = (time.perf_counter() - started) / len(rows)
    context = MetricContext(
        model=model,
        x=x,
        targets=targets,
        attribution=attribution,
        boxes=[state.box_all[r] for r in rows],
        box_labels=[state.box_labels_all[r] for r in rows],
        method=method,
        method_params=mparams,
        seed=seed,
        batch_size=batch_size,
        cache=cache,
        explain=lambda xx, tt: run_method(model, method, xx, tt, mparams, seed, timeout=timeout),
    )
    scores: dict[str, torch.Tensor] = {}
    curves: dict[str, torch.Tensor] = {}
    curve_x: dict[str, list] = {}
    metric_errors: dict[str, str] = {}
    for metric, params in chosen_metrics:
        try:
            with torch.no_grad() if not metric.needs else contextlib.nullcontext():
                res = metric.run(dataclasses.replace(context, params=params))
            for name, value in dict(res).items():
                value = torch.as_tensor(value).detach().float().cpu()
                if name.endswith("@x"):
                    curve_x[name[:-2]] = value.reshape(-1).tolist()
                elif value.ndim == 2 or name in metric.curves:
                    curves[name] = value.reshape(len(rows), -1)
                else:
                    scores[name] = value.reshape(len(rows))
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a failing metric is recorded, the run goes on
            detail = (
                f"sys.exit({e.code!r})" if isinstance(e, SystemExit) else " ".join(str(e).split())
            )
            metric_errors[metric.name] = printable(f"{type(e).__name__}: {detail}")
            scores[metric.name] = torch.full((len(rows),), float("nan"))
    maps = attribution.maps.detach().float().cpu()
    engine = engines_between(forwards, forward_counts(model))  # who served model.infer
    lines, maps_out = [], []
    for j, (r, job, s) in enumerate(zip(rows, jobs, samples)):
        index = order[r]
        t = int(targets[j])
        record = {
            "key": job.keys[method.name],
            "image": path_text(s.path),
            "method": method.name,
            "params": mparams,
            "seed": seed,
            "target": t,
            "target_label": model.label(t),
            "label": s.label,
            "prediction": int(preds[r]),
            "probability": _finite(float(probs[r, t])),
            "seconds": seconds,
            "engine": engine,
            "scores": {n: _finite(float(v[j])) for n, v in scores.items()},
            "curves": {n: [_finite(float(c)) for c in v[j]] for n, v in curves.items()},
        }
        if curve_x:
            record["curve_x"] = curve_x
        if metric_errors:
            record["metric_errors"] = metric_errors
        lines.append(record)
        if index < montage:
            maps_out.append((index, method.name, maps[j].numpy()))
    return lines, maps_out


# ----------------------------------------------------------------------------- summary
def summarise(results: Path | list[Path], wanted: set[str], chosen_methods, chosen_metrics) -> dict:
    """Mean, standard error (sample std / sqrt n) and count of every score, per method.

    ``results``: one results file or several (the shards of a run; a key found twice counts once).
    NaN scores (not applicable) are left out of mean and count and counted under ``nan``."""
    direction: dict[str, bool] = {}
    curve_labels: dict[str, str] = {}
    for metric, _ in chosen_metrics:
        curve_labels.update(metric.curves)
    values: dict[str, dict[str, list]] = {m.name: {} for m, _ in chosen_methods}
    nans: dict[str, dict[str, int]] = {m.name: {} for m, _ in chosen_methods}
    curve_sum: dict[str, dict[str, np.ndarray]] = {}
    curve_n: dict[str, dict[str, np.ndarray]] = {}
    curve_xs: dict[str, list] = {}
    errors = {m.name: 0 for m, _ in chosen_methods}
    error_examples: dict[str, str] = {}
    seen = set()
    files = [results] if isinstance(results, Path) else list(results)
    for record in (r for path in files for r in read_results(path)):
        if (
            record["key"] not in wanted
            or record["key"] in seen
            or record.get("method") not in values
        ):
            continue
        seen.add(record["key"])
        name = record["method"]
        if "error" in record:
            errors[name] += 1
            error_examples.setdefault(name, record["error"])
            continue
        for k, v in record.get("scores", {}).items():
            if v is None:
                nans[name][k] = nans[name].get(k, 0) + 1
                values[name].setdefault(k, [])
            else:
                values[name].setdefault(k, []).append(float(v))
        for k, c in record.get("curves", {}).items():
            arr = np.array([np.nan if v is None else v for v in c], dtype=np.float64)
            s = curve_sum.setdefault(k, {}).setdefault(name, np.zeros_like(arr))
            cnt = curve_n.setdefault(k, {}).setdefault(name, np.zeros_like(arr))
            if s.shape == arr.shape:
                ok = np.isfinite(arr)
                s[ok] += arr[ok]
                cnt[ok] += 1
        for k, xs in record.get("curve_x", {}).items():
            curve_xs.setdefault(k, xs)
    metric_of = {}
    for metric, _ in chosen_metrics:
        metric_of[metric.name] = metric
    table: dict[str, dict[str, dict]] = {}
    keys: list[str] = []
    for name, per in values.items():
        table[name] = {}
        for k, vs in per.items():
            if k not in keys:
                keys.append(k)
            n = len(vs)
            mean = float(np.mean(vs)) if n else None
            se = float(np.std(vs, ddof=1) / math.sqrt(n)) if n > 1 else None
            table[name][k] = {"mean": mean, "stderr": se, "count": n, "nan": nans[name].get(k, 0)}
    position = {m.name: i for i, (m, _) in enumerate(chosen_metrics)}

    def owner(k: str):  # the metric that returned score k
        return next(
            (m for m in metric_of.values() if k == m.name or k in m.directions), None
        ) or next((m for m in metric_of.values() if k.startswith(m.name + "-")), None)

    for k in keys:
        direction[k] = owner(k).higher_is_better_for(k) if owner(k) is not None else True
    keys.sort(
        key=lambda k: (
            position[owner(k).name] if owner(k) is not None else len(position),
            k != getattr(owner(k), "name", k),
            k,
        )
    )
    best = {}
    for k in keys:
        cands = [
            (v[k]["mean"], name) for name, v in table.items() if k in v and v[k]["mean"] is not None
        ]
        if len(cands) > 1:
            best[k] = (max if direction[k] else min)(cands)[1]
    curves: dict[str, dict[str, Any]] = {}
    for k, sums in curve_sum.items():
        curves[k] = {"xlabel": curve_labels.get(k, ""), "methods": {}}
        for name, s in sums.items():
            cnt = curve_n[k][name]
            avg = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
            curves[k]["methods"][name] = [_finite(float(v)) for v in avg]
        length = len(next(iter(curves[k]["methods"].values())))
        curves[k]["x"] = curve_xs.get(k) or np.linspace(0, 1, length).tolist()
    return {
        "methods": {m.name: p for m, p in chosen_methods},
        "metrics": {m.name: p for m, p in chosen_metrics},
        "scores": keys,
        "higher_is_better": direction,
        "table": table,
        "best": best,
        "errors": errors,
        "error_examples": error_examples,
        "curves": curves,
    }


def write_summary(out: Path, summary: dict) -> None:
    atomic_write(
        out / "summary.json", (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode()
    )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["method", "score", "mean", "stderr", "count", "nan", "errors", "higher_is_better", "best"]
    )
    for name, per in summary["table"].items():
        for k in summary["scores"]:
            cell = per.get(k)
            if cell is None:
                continue
            w.writerow(
                [
                    name,
                    k,
                    "" if cell["mean"] is None else f"{cell['mean']:.6g}",
                    "" if cell["stderr"] is None else f"{cell['stderr']:.6g}",
                    cell["count"],
                    cell["nan"],
                    summary["errors"].get(name, 0),
                    summary["higher_is_better"][k],
                    summary["best"].get(k) == name,
                ]
            )
    atomic_write(out / "summary.csv", buf.getvalue().encode())


# ----------------------------------------------------------------------------- plots
def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_plots(
    out: Path,
    summary: dict,
    samples: list[Sample],
    methods: list[str],
    montage: int,
    preprocess: Preprocess,
) -> list[Path]:
    """One PNG per curve (a line per method) and a montage; Agg canvas, no pyplot state."""
    from matplotlib.figure import Figure

    written = []
    for k, curve in summary["curves"].items():
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        import matplotlib

        colours = matplotlib.colormaps["tab20"].colors  # type: ignore[attr-defined] # 20 distinct colours: methods stay apart
        ax.set_prop_cycle(color=colours[0::2] + colours[1::2])
        for name, ys in curve["methods"].items():
            ys = [np.nan if v is None else v for v in ys]
            xs = curve["x"] if len(curve["x"]) == len(ys) else np.linspace(0, 1, len(ys))
            ax.plot(xs, ys, label=name, linestyle="--" if name == "random" else "-")
        ax.set_xlabel(curve["xlabel"] or "step")
        ax.set_ylabel(k)
        ax.set_title(k)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / "plots" / f"{safe_stem(k)}.png"  # score names come from plugins
        atomic_write(path, _png(fig))
        written.append(path)
    montage_path = _montage(out, samples[:montage], methods, preprocess)
    if montage_path is not None:
        written.append(montage_path)
    return written


def _montage(
    out: Path, samples: list[Sample], methods: list[str], preprocess: Preprocess
) -> Path | None:
    from matplotlib.figure import Figure

    from ..output.render import colorize

    rows = []
    for i, s in enumerate(samples):
        maps = {m: out / "maps" / f"{i:05d}.{m}.npy" for m in methods}
        if not any(p.exists() for p in maps.values()):
            continue
        try:
            arr, _ = preprocess(load_image(s.path))
        except (XplainError, OSError):
            continue
        rows.append((s, _pixels(arr, preprocess), maps))
    if not rows:
        return None
    cols = len(methods) + 1
    fig = Figure(figsize=(1.6 * cols, 1.7 * len(rows)))
    for r, (s, img, maps) in enumerate(rows):
        ax = fig.add_subplot(len(rows), cols, r * cols + 1)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(printable(path_text(s.path.name)), fontsize=6)
        ax.axis("off")
        for c, m in enumerate(methods, 2):
            ax = fig.add_subplot(len(rows), cols, r * cols + c)
            if maps[m].exists():
                ax.imshow(colorize(np.load(maps[m])))
            if r == 0:
                ax.set_title(m, fontsize=6)
            ax.axis("off")
    fig.tight_layout()
    path = out / "plots" / "montage.png"
    atomic_write(path, _png(fig))
    return path


__all__ = ["evaluate", "read_results", "summarise", "write_summary", "write_plots"]
