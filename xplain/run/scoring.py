"""Stage 2 of an evaluation: score one batch — explain it with every method, score every metric.

Why a module of its own: this is the one piece both engines run. The local loop of
:func:`xplain.run.evaluation.evaluate` and the Ray actors of :mod:`xplain.run.ray_engine` call
:func:`score_batch` with the same jobs and :class:`~xplain.run.planning.Plan`, and it is pure with
respect to the output folder (it returns records, maps and views; the driver writes them), so a
worker on another machine computes exactly what the local loop would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..data.datasets import Sample
from ..data.pipeline import Prepared, to_device
from ..errors import PluginError, XplainError
from ..graph.model import Model
from ..onnx.engine import engines_between, forward_counts
from ..plugins.plugin_api import Method, MetricContext
from ..plugins.progress import progress_to
from ..untrusted import path_text, printable
from .api import run_method
from .guards import InputWatch, ModelGuard
from .planning import Job, Plan
from .records import finite_or_none


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
        f"method {method_name!r} changed the model ({guard.what_changed()}: a hook left behind, "
        "weights edited in place, train mode, a replaced forward or torch function); its results "
        "are discarded and the model was restored"
    )
    return [
        {
            **_error_record(r["key"], samples_by_key[r["key"]], method_name, params, seed, message),
            "invalid": True,
        }
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
    step: Callable[[float], None] | None = None,
) -> tuple[list[dict], list[tuple[int, str, np.ndarray]], list[tuple[int, Sample, Any]]]:
    """Explain and score one batch: its result records, the maps of the first ``plan.montage``
    images (index, method, map) and what the model saw of them (index, sample, input array).

    Pure with respect to the output folder (the caller writes), so a Ray worker can run it.
    ``guard`` checks the model after every method (:func:`check_model_unchanged`). ``step(f)``
    is told after each method and each metric that a fraction ``f`` of the batch is done, so a
    progress bar moves within a batch (one method call covers the whole batch)."""
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
    stages = max(1, len(chosen_methods) * (1 + len(chosen_metrics)))
    state = _BatchState(
        order,
        by_index,
        x_all,
        t_all,
        probs,
        preds,
        box_all,
        box_labels_all,
        plan,
        {},
        guard,
        step=(lambda f: step(f / stages)) if step is not None else None,
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
    guard: ModelGuard | None = None  #: checks the model after every metric too
    #: ``step(f)``: a fraction ``f`` of one stage (a method or a metric) of the batch is done
    step: Callable[[float], None] | None = None

    @contextlib.contextmanager
    def stage(self) -> Iterator[None]:
        """One stage: what its plugin reports through ``xplain.report_progress`` (image-steps
        of its passes) moves the bar within the stage; the rest when it ends (or fails)."""
        step = self.step
        if step is None:
            yield
            return
        reached = [0.0]

        def listener(done: int, total: int, what: str) -> None:  # noqa: ARG001 - the hook's
            f = min(1.0, done / total) if total > 0 else 0.0
            if f > reached[0]:  # a plugin's second loop starting at 0 does not move it back
                step(f - reached[0])
                reached[0] = f

        try:
            with progress_to(listener):
                yield
        finally:
            step(1.0 - reached[0])


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
    cpu_started = time.process_time()
    try:
        with state.stage():
            attribution = run_method(model, method, x, targets, mparams, seed, timeout=timeout)
    except XplainError as e:
        return [
            _error_record(j.keys[method.name], j.sample, method.name, mparams, seed, str(e))
            for j in jobs
        ], []
    if state.guard is not None and state.guard.changed():  # no metric sees a changed model
        return [{"key": j.keys[method.name]} for j in jobs], []  # score_batch fails these
    seconds = (time.perf_counter() - started) / len(rows)
    cpu_seconds = (time.process_time() - cpu_started) / len(rows)
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
    invalid: dict[str, str] = {}
    # per metric and image: wall and process CPU seconds (the protocol's cost table reads them)
    metric_seconds: dict[str, list[float]] = {}
    keep_all = False  # a dataset-scope metric: keep every map for the dataset stage
    for metric, params in chosen_metrics:
        if metric.scope == "dataset":  # scored after the batches (xplain.run.dataset_stage)
            keep_all = True
            if state.step is not None:
                state.step(1.0)  # its stage of this batch is done (nothing to score yet)
            continue
        watch = InputWatch(state.guard, x, attribution)  # a metric editing x/maps/weights
        got: dict[str, torch.Tensor] = {}
        metric_began, metric_cpu = time.perf_counter(), time.process_time()
        try:
            with (
                state.stage(),
                torch.no_grad() if not metric.needs else contextlib.nullcontext(),
            ):
                res = metric.run(dataclasses.replace(context, params=params))
            got = {n: torch.as_tensor(v).detach().float().cpu() for n, v in dict(res).items()}
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a failing metric is recorded, the run goes on
            detail = (
                f"sys.exit({e.code!r})" if isinstance(e, SystemExit) else " ".join(str(e).split())
            )
            metric_errors[metric.name] = printable(f"{type(e).__name__}: {detail}")
        metric_seconds[metric.name] = [
            round((time.perf_counter() - metric_began) / len(rows), 6),
            round((time.process_time() - metric_cpu) / len(rows), 6),
        ]
        if (changed := watch.check()) is not None:
            invalid[metric.name] = metric_errors[metric.name] = (
                f"metric {metric.name!r} changed {changed} in place; its scores are discarded "
                "and the inputs and model were restored"
            )
            got = {}
        if metric.name in metric_errors:
            scores[metric.name] = torch.full((len(rows),), float("nan"))
        for name, value in got.items():
            if name.endswith("@x"):
                curve_x[name[:-2]] = value.reshape(-1).tolist()
            elif value.ndim == 2 or name in metric.curves:
                curves[name] = value.reshape(len(rows), -1)
            else:
                scores[name] = value.reshape(len(rows))
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
            "probability": finite_or_none(float(probs[r, t])),
            "seconds": seconds,
            "cpu_seconds": round(cpu_seconds, 6),
            "metric_seconds": metric_seconds,
            "engine": engine,
            "scores": {n: finite_or_none(float(v[j])) for n, v in scores.items()},
            "curves": {n: [finite_or_none(float(c)) for c in v[j]] for n, v in curves.items()},
        }
        if curve_x:
            record["curve_x"] = curve_x
        if metric_errors:
            record["metric_errors"] = metric_errors
        if invalid:
            record["invalid"] = invalid
        lines.append(record)
        if index < montage or keep_all:
            maps_out.append((index, method.name, maps[j].numpy()))
    return lines, maps_out
