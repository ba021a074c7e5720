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
import hashlib
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

from .api import run_method
from ..data.datasets import Sample, class_names_of, read_dataset
from ..errors import UsageError, XplainError
from ..output.fileio import atomic_write, save_npy
from ..data.images import Preprocess, load_image
from ..graph.model import Model
from ..plugins.plugin_api import Method
from ..plugins.registry import Registry, get_registry, validate_params

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


def read_results(path: Path):
    """Yield the records of a results file, skipping lines that do not parse."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "key" in record:
                yield record


def _append(path: Path, records: list[dict]) -> None:
    if not records:
        return
    text = "".join(json.dumps(r, allow_nan=False, separators=(",", ":")) + "\n" for r in records)
    with open(path, "a", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- the run
def _resolve(items, kind: str, registry: Registry, given: dict | None) -> list[tuple[Any, dict]]:
    out = []
    given = given or {}
    names = [i if isinstance(i, str) else i.name for i in items]
    unknown = set(given) - set(names)
    if unknown:
        raise UsageError(f"parameters given for {kind} {', '.join(sorted(unknown))} which is not evaluated")
    for item in items:
        obj = (registry.method(item) if kind == "method" else registry.metric(item)) if isinstance(item, str) else item
        out.append((obj, validate_params(obj.params, given.get(obj.name, {}), f"{kind} {obj.name!r}")))
    if len({o.name for o, _ in out}) != len(out):
        raise UsageError(f"a {kind} is listed twice")
    return out


def _digest(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=12).hexdigest()


def evaluate(model: Model, data: str | Path, *, methods: list, metrics: list, out_dir: str | Path = "xplain-eval",
             labels: str | Path | None = None, boxes: str | Path | None = None, limit: int | None = None,
             batch_size: int = 16, seed: int = 0, resume: bool = True, preprocess: Preprocess | None = None,
             method_params: dict | None = None, metric_params: dict | None = None,
             registry: Registry | None = None, progress: Callable[[int, int], None] | None = None,
             montage: int = 4, plots: bool = True, report_images: int = 8) -> dict:
    """Evaluate ``methods`` with ``metrics`` on ``data``; returns the summary (also written to disk).

    ``methods``/``metrics`` are names (or Method/Metric objects); ``method_params`` and
    ``metric_params`` map a name to its parameters (strings or values). ``progress(done, total)``
    is called after each batch with the number of images handled so far. The maps of the first
    ``max(montage, report_images)`` images are kept in ``OUT/maps/`` for the montage and for
    ``OUT/report.html``, which is written at the end (:func:`xplain.report.write_report`).
    """
    registry = registry or get_registry()
    if not methods:
        raise UsageError("no methods to evaluate")
    chosen_methods = _resolve(methods, "method", registry, method_params)
    chosen_metrics = _resolve(metrics, "metric", registry, metric_params)
    if batch_size < 1:
        raise UsageError("batch size must be at least 1")
    preprocess = preprocess or Preprocess.from_options(
        (model.spec.channels, model.spec.height, model.spec.width), sidecar=getattr(model, "sidecar", None))
    samples = read_dataset(Path(data), class_names=class_names_of(model), labels=labels, boxes=boxes, limit=limit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS
    if not resume and results.exists():
        results.unlink()
    _repair_tail(results)

    metric_config = {m.name: p for m, p in chosen_metrics}
    base = {"model": model.digest, "seed": int(seed), "metrics": metric_config, "preprocess": preprocess.to_dict()}
    configs = {m.name: _digest({**base, "method": m.name, "params": p}) for m, p in chosen_methods}

    def key(sample: Sample, method: str) -> str:
        return _digest({"config": configs[method], "image": str(sample.path.resolve())})

    wanted = {key(s, m.name) for s in samples for m, _ in chosen_methods}
    done = {r["key"] for r in read_results(results)} & wanted

    keep = max(int(montage), int(report_images))
    handled = 0
    for start in range(0, len(samples), batch_size):
        batch = list(enumerate(samples[start:start + batch_size], start))
        _run_batch(model, batch, chosen_methods, chosen_metrics, preprocess, results, out, done, key,
                   seed, batch_size, keep)
        handled += len(batch)
        if progress is not None:
            progress(handled, len(samples))

    summary = summarise(results, wanted, chosen_methods, chosen_metrics)
    summary.update({"model": str(getattr(model.report, "path", "")), "digest": model.digest, "data": str(data),
                    "images": len(samples), "seed": int(seed), "out": str(out)})
    write_summary(out, summary)
    if plots:
        write_plots(out, summary, samples, [m.name for m, _ in chosen_methods], montage, preprocess)
    from ..output.report import write_report

    write_report(out)
    return summary


def _pixels(arr: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """A preprocessed C×H×W array back to [0, 1] pixel values, H×W×C (H×W for one channel)."""
    img = arr * np.asarray(preprocess.std)[:, None, None] + np.asarray(preprocess.mean)[:, None, None]
    img = np.clip(img / (preprocess.scale * 255.0), 0, 1)
    return img.transpose(1, 2, 0).squeeze(axis=2) if img.shape[0] == 1 else img.transpose(1, 2, 0)


def _keep_view(out: Path, index: int, sample: Sample, arr: np.ndarray, preprocess: Preprocess) -> None:
    """Save what the model saw of image ``index`` (``maps/NNNNN.image.png``) and where it came
    from (``maps/NNNNN.json``), so the report needs nothing outside OUT."""
    from PIL import Image

    from ..output.render import png_bytes

    pixels = np.rint(_pixels(arr, preprocess) * 255.0).astype(np.uint8)
    atomic_write(out / "maps" / f"{index:05d}.image.png", png_bytes(Image.fromarray(pixels)))
    facts = {"image": str(sample.path), "label": sample.label}
    atomic_write(out / "maps" / f"{index:05d}.json", (json.dumps(facts) + "\n").encode())


def _error_record(k: str, sample: Sample, method: str, params: dict, seed: int, message: str) -> dict:
    return {"key": k, "image": str(sample.path), "method": method, "params": params, "seed": seed,
            "error": " ".join(str(message).split())}


def _run_batch(model, batch, chosen_methods, chosen_metrics, preprocess, results, out, done, key, seed,
               batch_size, montage) -> None:
    pending = {m.name: [(i, s) for i, s in batch if key(s, m.name) not in done] for m, _ in chosen_methods}
    if not any(pending.values()):
        return
    errors: list[dict] = []
    loaded: dict[int, tuple[np.ndarray, Any]] = {}
    for i, s in batch:
        if not any(key(s, m) not in done for m in pending):
            continue
        message = s.error
        if message is None:
            try:
                arr, geo = preprocess(load_image(s.path))
                loaded[i] = (arr, geo)
                if i < montage:
                    _keep_view(out, i, s, arr, preprocess)
            except XplainError as e:
                message = str(e)
            except Exception as e:  # noqa: BLE001 - one broken image must not end the run
                message = f"{s.path}: cannot load: {type(e).__name__}: {e}"
        if message is not None:
            for m, p in chosen_methods:
                k = key(s, m.name)
                if k not in done:
                    errors.append(_error_record(k, s, m.name, p, seed, message))
                    done.add(k)
    _append(results, errors)
    if not loaded:
        return
    order = sorted(loaded)
    by_index = dict(batch)
    x_all = torch.from_numpy(np.stack([loaded[i][0] for i in order])).to(model.device, torch.float32)
    with torch.no_grad():
        logits = model(x_all).float()
    probs = torch.softmax(logits, dim=1)
    preds = probs.argmax(1)
    targets, bad = [], {}
    for row, i in enumerate(order):
        label = by_index[i].label
        if label is not None and not 0 <= label < model.num_classes:
            bad[i] = f"label {label} is out of range for a model with {model.num_classes} classes"
        targets.append(int(preds[row]) if label is None or i in bad else int(label))
    t_all = torch.tensor(targets, device=model.device, dtype=torch.long)
    box_all, box_labels_all = [], []
    for i in order:
        s, geo = by_index[i], loaded[i][1]
        if s.boxes is None:
            box_all.append(None)
            box_labels_all.append(None)
            continue
        box_all.append(torch.tensor([geo.box_to_input(b.xmin, b.ymin, b.xmax, b.ymax) for b in s.boxes],
                                    dtype=torch.float32).reshape(-1, 4))
        box_labels_all.append(torch.tensor([-1 if b.label is None else b.label for b in s.boxes], dtype=torch.long))
    cache: dict = {}  # method-independent work shared by every method on this batch
    for method, mparams in chosen_methods:
        rows = [row for row, i in enumerate(order) if key(by_index[i], method.name) not in done]
        lines = []
        for row in [r for r in rows if order[r] in bad]:
            s = by_index[order[row]]
            lines.append(_error_record(key(s, method.name), s, method.name, mparams, seed, bad[order[row]]))
        rows = [r for r in rows if order[r] not in bad]
        if rows:
            lines += _score_method(model, method, mparams, chosen_metrics, rows, order, by_index, x_all, t_all, probs,
                                   preds, box_all, box_labels_all, key, seed, batch_size, cache, out, montage)
        _append(results, lines)
        done.update(r["key"] for r in lines)


def _score_method(model, method: Method, mparams, chosen_metrics, rows, order, by_index, x_all, t_all, probs, preds,
                  box_all, box_labels_all, key, seed, batch_size, cache, out, montage) -> list[dict]:
    sel = torch.tensor(rows, device=x_all.device)
    x, targets = x_all[sel], t_all[sel]
    samples = [by_index[order[r]] for r in rows]
    started = time.perf_counter()
    try:
        attribution = run_method(model, method, x, targets, mparams, seed)
    except XplainError as e:
        return [_error_record(key(s, method.name), s, method.name, mparams, seed, str(e)) for s in samples]
    seconds = (time.perf_counter() - started) / len(rows)
    context = {
        "boxes": [box_all[r] for r in rows], "box_labels": [box_labels_all[r] for r in rows],
        "method": method, "method_params": mparams, "seed": seed, "batch_size": batch_size,
        "forward_batch": max(64, 8 * batch_size), "cache": cache,
        "explain": lambda xx, tt: run_method(model, method, xx, tt, mparams, seed),
    }
    scores: dict[str, torch.Tensor] = {}
    curves: dict[str, torch.Tensor] = {}
    curve_x: dict[str, list] = {}
    metric_errors: dict[str, str] = {}
    for metric, params in chosen_metrics:
        try:
            with torch.no_grad() if not metric.needs else contextlib.nullcontext():
                res = metric.score(model, x, targets, attribution, {**context, "params": params})
            for name, value in dict(res).items():
                value = torch.as_tensor(value).detach().float().cpu()
                if name.endswith("@x"):
                    curve_x[name[:-2]] = value.reshape(-1).tolist()
                elif value.ndim == 2 or name in metric.curves:
                    curves[name] = value.reshape(len(rows), -1)
                else:
                    scores[name] = value.reshape(len(rows))
        except Exception as e:  # noqa: BLE001 - a failing metric is recorded, the run goes on
            metric_errors[metric.name] = f"{type(e).__name__}: {' '.join(str(e).split())}"
            scores[metric.name] = torch.full((len(rows),), float("nan"))
    maps = attribution.maps.detach().float().cpu()
    lines = []
    for j, (r, s) in enumerate(zip(rows, samples)):
        index = order[r]
        t = int(targets[j])
        record = {
            "key": key(s, method.name), "image": str(s.path), "method": method.name, "params": mparams, "seed": seed,
            "target": t, "target_label": model.label(t) if hasattr(model, "label") else None, "label": s.label,
            "prediction": int(preds[r]), "probability": float(probs[r, t]), "seconds": seconds,
            "scores": {n: _finite(float(v[j])) for n, v in scores.items()},
            "curves": {n: [_finite(float(c)) for c in v[j]] for n, v in curves.items()},
        }
        if curve_x:
            record["curve_x"] = curve_x
        if metric_errors:
            record["metric_errors"] = metric_errors
        lines.append(record)
        if index < montage:
            save_npy(out / "maps" / f"{index:05d}.{method.name}.npy", maps[j].numpy())
    return lines


# ----------------------------------------------------------------------------- summary
def summarise(results: Path, wanted: set[str], chosen_methods, chosen_metrics) -> dict:
    """Mean, standard error (sample std / sqrt n) and count of every score, per method.

    NaN scores (not applicable) are left out of mean and count and counted under ``nan``."""
    direction: dict[str, bool] = {}
    curve_labels: dict[str, str] = {}
    for metric, _ in chosen_metrics:
        curve_labels.update(metric.curves)
    values: dict[str, dict[str, list]] = {m.name: {} for m, _ in chosen_methods}
    nans: dict[str, dict[str, int]] = {m.name: {} for m, _ in chosen_methods}
    curve_sum: dict[str, dict[str, list]] = {}
    curve_n: dict[str, dict[str, list]] = {}
    curve_xs: dict[str, list] = {}
    errors = {m.name: 0 for m, _ in chosen_methods}
    error_examples: dict[str, str] = {}
    seen = set()
    for record in read_results(results):
        if record["key"] not in wanted or record["key"] in seen or record.get("method") not in values:
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
            n = curve_n.setdefault(k, {}).setdefault(name, np.zeros_like(arr))
            if s.shape == arr.shape:
                ok = np.isfinite(arr)
                s[ok] += arr[ok]
                n[ok] += 1
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
        return next((m for m in metric_of.values() if k == m.name or k in m.directions), None) or \
            next((m for m in metric_of.values() if k.startswith(m.name + "-")), None)

    for k in keys:
        direction[k] = owner(k).higher_is_better_for(k) if owner(k) is not None else True
    keys.sort(key=lambda k: (position[owner(k).name] if owner(k) is not None else len(position), k != getattr(
        owner(k), "name", k), k))
    best = {}
    for k in keys:
        cands = [(v[k]["mean"], name) for name, v in table.items() if k in v and v[k]["mean"] is not None]
        if len(cands) > 1:
            best[k] = (max if direction[k] else min)(cands)[1]
    curves = {}
    for k, per in curve_sum.items():
        curves[k] = {"xlabel": curve_labels.get(k, ""), "methods": {}}
        for name, s in per.items():
            n = curve_n[k][name]
            mean = np.where(n > 0, s / np.maximum(n, 1), np.nan)
            curves[k]["methods"][name] = [_finite(float(v)) for v in mean]
        length = len(next(iter(curves[k]["methods"].values())))
        curves[k]["x"] = curve_xs.get(k) or np.linspace(0, 1, length).tolist()
    return {"methods": {m.name: p for m, p in chosen_methods}, "metrics": {m.name: p for m, p in chosen_metrics},
            "scores": keys, "higher_is_better": direction, "table": table, "best": best, "errors": errors,
            "error_examples": error_examples, "curves": curves}


def write_summary(out: Path, summary: dict) -> None:
    atomic_write(out / "summary.json", (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "score", "mean", "stderr", "count", "nan", "errors", "higher_is_better", "best"])
    for name, per in summary["table"].items():
        for k in summary["scores"]:
            cell = per.get(k)
            if cell is None:
                continue
            w.writerow([name, k, "" if cell["mean"] is None else f"{cell['mean']:.6g}",
                        "" if cell["stderr"] is None else f"{cell['stderr']:.6g}", cell["count"], cell["nan"],
                        summary["errors"].get(name, 0), summary["higher_is_better"][k],
                        summary["best"].get(k) == name])
    atomic_write(out / "summary.csv", buf.getvalue().encode())


# ----------------------------------------------------------------------------- plots
def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_plots(out: Path, summary: dict, samples: list[Sample], methods: list[str], montage: int,
                preprocess: Preprocess) -> list[Path]:
    """One PNG per curve (a line per method) and a montage; Agg canvas, no pyplot state."""
    from matplotlib.figure import Figure

    written = []
    for k, curve in summary["curves"].items():
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        import matplotlib

        colours = matplotlib.colormaps["tab20"].colors  # 20 distinct colours: methods stay apart
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
        path = out / "plots" / f"{k}.png"
        atomic_write(path, _png(fig))
        written.append(path)
    path = _montage(out, samples[:montage], methods, preprocess)
    if path is not None:
        written.append(path)
    return written


def _montage(out: Path, samples: list[Sample], methods: list[str], preprocess: Preprocess) -> Path | None:
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
        ax.set_title(s.path.name, fontsize=6)
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
