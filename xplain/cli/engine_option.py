"""The ``--engine`` option shared by ``explain``, ``eval`` and ``bench`` (see docs/engines.md).

Kept apart from the command modules so each verb declares it with one line and the help text is
written once."""

from __future__ import annotations

from typing import Any

import typer

ENGINE_HELP = (
    "What forward-only work (occlusion, deletion, insertion, …) runs on: auto (onnxruntime "
    "where it runs the file, else torch), torch or onnxruntime. Gradients always run on torch."
)


def engine_option() -> Any:
    """A fresh ``--engine`` option (default auto)."""
    return typer.Option("auto", "--engine", metavar="auto|torch|onnxruntime", help=ENGINE_HELP)


def engine_line(row: dict) -> str:
    """``xplain bench``'s one line on the engines (:func:`xplain.run.bench_engines.compare_engines`)."""
    torch_s = row["torch_seconds_per_image"]
    if row.get("onnxruntime_seconds_per_image") is None:
        why = row.get("onnxruntime_unavailable") or f"--engine {row['requested']}"
        return f"engine torch: forward {torch_s:.3g} s/image (onnxruntime not used: {why})"
    ort_s = row["onnxruntime_seconds_per_image"]
    return (
        f"engine onnxruntime for forward-only work: forward {ort_s:.3g} s/image against torch "
        f"{torch_s:.3g} ({row['ratio_onnxruntime_to_torch']:.2f}×; logits differ by "
        f"{row['logits_max_rel_diff']:.1e} relative)"
    )
