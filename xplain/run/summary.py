"""Stage 4 of an evaluation: the summary — mean, standard error and count per method × score.

Why a module of its own: the summary is computed from records only (one results file or the
shards of a run), so a finished run, a resumed one and ``xplain eval summarize`` agree; it is
written atomically as ``summary.json`` and ``summary.csv``. Plots and the report
(:mod:`xplain.output`) read what this stage wrote.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write
from .dataset_stage import overlay
from .records import finite_or_none, read_results


def summarise(
    results: Path | list[Path],
    wanted: set[str],
    chosen_methods,
    chosen_metrics,
    extra: dict | None = None,
) -> dict:
    """Mean, standard error (sample std / sqrt n) and count of every score, per method.

    ``results``: one results file or several (the shards of a run; a key found twice counts once).
    NaN scores (not applicable) are left out of mean and count and counted under ``nan``.
    ``extra``: the dataset stage's scores (:func:`xplain.run.dataset_stage.score_dataset`)."""
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
    invalid: dict[str, str] = {}  # method or metric -> why its results were discarded
    seen = set()
    files = [results] if isinstance(results, Path) else list(results)
    for record in overlay((r for path in files for r in read_results(path)), extra):
        if (
            record["key"] not in wanted
            or record["key"] in seen
            or record.get("method") not in values
        ):
            continue
        seen.add(record["key"])
        name = record["method"]
        if record.get("invalid") is True:
            invalid.setdefault(name, record.get("error", ""))
        elif isinstance(record.get("invalid"), dict):
            for metric_name, why in record["invalid"].items():
                invalid.setdefault(str(metric_name), str(why))
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
            curves[k]["methods"][name] = [finite_or_none(float(v)) for v in avg]
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
        "invalid": invalid,
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
