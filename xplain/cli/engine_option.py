"""The ``--engine`` option shared by ``explain``, ``eval`` and ``bench`` (see docs/engines.md).

Kept apart from the command modules so each verb declares it with one line and the help text is
written once."""

from __future__ import annotations

import typer

ENGINE_HELP = (
    "What forward-only work (occlusion, deletion, insertion, …) runs on: auto (onnxruntime "
    "where it runs the file, else torch), torch or onnxruntime. Gradients always run on torch."
)


def engine_option() -> typer.models.OptionInfo:
    """A fresh ``--engine`` option (default auto)."""
    return typer.Option("auto", "--engine", metavar="auto|torch|onnxruntime", help=ENGINE_HELP)
