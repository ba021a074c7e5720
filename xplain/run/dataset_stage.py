"""The dataset stage of an evaluation: metrics whose score of an image depends on the other
images (``Metric(scope="dataset")``, e.g. ``sufficiency``).

Why a stage of its own: per-batch scoring cannot give such a score without making it depend on
how the images fell into batches — which changes with ``--batch-size``, with a resumed run
(whose first batch is the rest of an interrupted one) and with shards. So the batches only keep
what the metric needs: every image's map (``maps/NNNNN.METHOD.npy``; the first images' maps are
kept anyway for the report) and its prediction (in the record). After the batches — at the end
of an unsharded run, or in ``xplain eval summarize`` over the merged shards — :func:`score_dataset`
calls the metric once per method on the maps of every image scored, in the order of the run's
image list, and writes ``dataset-scores.json`` (record key → scores). The summary and the
protocol aggregation read records through :func:`overlay`, which adds those scores. The result
depends only on the images done and the parameters, never on batches, resume or shards.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_write
from ..plugins.plugin_api import Attribution, MetricContext
from ..untrusted import parse_json, printable
from .records import finite_or_none, read_results
from .shards import result_key

SCORES = "dataset-scores.json"


def dataset_metrics(metrics) -> list[tuple[Any, dict]]:
    """The chosen (metric, params) pairs of dataset scope."""
    return [(m, p) for m, p in metrics if getattr(m, "scope", "sample") == "dataset"]


def map_path(out: Path, index: int, method: str) -> Path:
    return Path(out) / "maps" / f"{index:05d}.{method}.npy"


def score_dataset(
    out: Path,
    methods,
    metrics,
    configs: dict[str, str],
    images: list[str],
    files: list[Path],
    seed: int,
    model: Any = None,
) -> dict[str, Any]:
    """Score the dataset-scope metrics over every image with a record and a kept map; write
    and return ``{"scores": {key: {name: value}}, "errors": {metric: message}}`` (empty
    without such metrics). A metric that fails is an error line and NaN, as in a batch."""
    chosen = dataset_metrics(metrics)
    if not chosen:
        return {}
    records: dict[str, dict] = {}
    for path in files:
        for r in read_results(path):
            records.setdefault(r["key"], r)
    scores: dict[str, dict[str, float | None]] = {}
    errors: dict[str, str] = {}
    for method, mparams in methods:
        rows = []
        for i, image in enumerate(images):
            r = records.get(result_key(configs[method.name], image))
            if r is None or "error" in r or "prediction" not in r:
                continue
            if map_path(out, i, method.name).is_file():
                rows.append((i, r))
        if not rows:
            continue
        maps = torch.from_numpy(
            np.stack([np.load(map_path(out, i, method.name), allow_pickle=False) for i, _ in rows])
        ).float()
        context = MetricContext(
            model=model,
            x=torch.empty(0),
            targets=torch.tensor([int(r["target"]) for _, r in rows]),
            attribution=Attribution(maps, {}),
            method=method,
            method_params=mparams,
            seed=int(seed),
            predictions=torch.tensor([int(r["prediction"]) for _, r in rows]),
        )
        for metric, params in chosen:
            try:
                got = dict(metric.run(dataclasses.replace(context, params=params)))
            except (Exception, SystemExit) as e:  # noqa: BLE001 - recorded, the summary goes on
                errors[metric.name] = printable(f"{type(e).__name__}: {' '.join(str(e).split())}")
                got = {metric.name: torch.full((len(rows),), float("nan"))}
            for name, value in got.items():
                v = torch.as_tensor(value).detach().float().cpu().reshape(-1)
                if name.endswith("@x") or v.numel() != len(rows):
                    continue
                for (_, r), s in zip(rows, v.tolist()):
                    scores.setdefault(r["key"], {})[name] = finite_or_none(float(s))
    result = {"scores": scores, "errors": errors}
    atomic_write(Path(out) / SCORES, (json.dumps(result, sort_keys=True) + "\n").encode())
    return result


def read_dataset_scores(out: Path) -> dict[str, Any]:
    """``dataset-scores.json`` of OUT (empty when there is none)."""
    path = Path(out) / SCORES
    if not path.is_file():
        return {}

    def error(message, path=None):
        from ..errors import InputDataError

        return InputDataError(message, path=path)

    got = parse_json(path.read_bytes(), path, error, "dataset scores")
    return got if isinstance(got, dict) else {}


def overlay(records: Iterable[dict], extra: dict | None) -> Iterator[dict]:
    """The records with the dataset stage's scores added to their ``scores``."""
    by_key = (extra or {}).get("scores", {})
    for r in records:
        add = by_key.get(r.get("key"))
        if add and "error" not in r:
            r = {**r, "scores": {**r.get("scores", {}), **add}}
        yield r
