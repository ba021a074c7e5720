"""``xplain fit METHOD MODEL DATA``: learn a method's state from data and save it.

Why a module of its own: one verb per module; the work is :func:`xplain.run.fitting.fit_method`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import typer

from ..errors import UsageError
from .common import (
    floats,
    load_registry,
    parse_params,
    set_up,
    show_progress,
)
from .console import err, out


def fit(
    method: str = typer.Argument(
        ..., help="A method that learns from data (see `xplain methods`)."
    ),
    model_path: Path = typer.Argument(..., metavar="MODEL"),
    data: Path = typer.Argument(
        ...,
        metavar="DATA",
        help="A folder of images, a folder of class sub-folders, or a CSV manifest (path,label).",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    param: list[str] = typer.Option([], "--param", "-p", metavar="KEY=VALUE"),
    state_dir: Path | None = typer.Option(
        None, help="Where fitted state is kept (default ~/.cache/xplain/state)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    classes: str | None = typer.Option(
        None, help="Only these classes (comma-separated indices or names)."
    ),
    samples: int | None = typer.Option(
        None, min=1, help="At most N images per class (in total when DATA is unlabelled)."
    ),
    layer: str | None = typer.Option(
        None, help="Layer the method starts from (see `xplain inspect`)."
    ),
    preset: str | None = typer.Option(
        None, help="Preprocessing: imagenet, unit or none (default: sidecar, else by input size)."
    ),
    resize: int | None = typer.Option(
        None, help="Resize the shorter side to this many pixels before cropping."
    ),
    mean: str | None = typer.Option(
        None, help="Per-channel mean, comma-separated (after scaling to [0,1])."
    ),
    std: str | None = typer.Option(None, help="Per-channel std, comma-separated."),
    labels: Path | None = typer.Option(
        None, "--labels", help="Image labels: CSV (path,label) or TXT (image label)."
    ),
    class_names: str | None = typer.Option(
        None,
        "--class-names",
        help="Class names: a text/JSON file, or 'imagenet' (default: sidecar).",
    ),
):
    """Fit a method's state on DATA and save it (safetensors + JSON) keyed by the model's digest."""
    registry = load_registry()
    m = registry.method(method)
    if m.fit is None:
        raise UsageError(f"method {method!r} does not learn from data; nothing to fit")
    params = parse_params(param)
    from ..run.state import state_dir as resolve_state_dir

    model = set_up(
        model_path,
        device,
        class_names,
        out_dir=resolve_state_dir(state_dir),
        out_flag="--state-dir"
        if state_dir
        else "XPLAIN_STATE_DIR"
        if os.environ.get("XPLAIN_STATE_DIR")
        else "the state folder",
        state_dir=state_dir,
    )
    from ..plugins.progress import progress_to
    from .progress import explain_progress

    request = FitRequest(
        data=data,
        params=params,
        state_dir=state_dir,
        batch_size=batch_size,
        preset=preset,
        resize=resize,
        mean=mean,
        std=std,
        classes=classes,
        samples=samples,
        layer=layer,
        labels=labels,
    )
    bar, _, _, within = explain_progress(1, show_progress(), title=f"fitting {m.name}")
    try:
        with progress_to(within if show_progress() else None):
            path = _fit(model, m, request)
    finally:
        bar.stop()
    out.print(f"saved {path}", markup=False, highlight=False)


@dataclass(frozen=True)
class FitRequest:
    """What ``xplain fit`` was asked for, beside the model and the method (the options as given:
    ``mean``/``std`` still comma-separated text)."""

    data: Path
    params: dict
    state_dir: Path | None
    batch_size: int
    preset: str | None
    resize: int | None
    mean: str | None
    std: str | None
    classes: str | None
    samples: int | None
    layer: str | None
    labels: Path | None


def _fit(model, m, request: FitRequest):
    from ..run.fitting import FitConsole, fit_method

    return fit_method(
        model,
        m,
        request.data,
        params=request.params,
        state_dir=request.state_dir,
        batch_size=request.batch_size,
        preset=request.preset,
        resize=request.resize,
        mean=floats(request.mean, "--mean"),
        std=floats(request.std, "--std"),
        classes=request.classes,
        samples=request.samples,
        layer=request.layer,
        labels=request.labels,
        console=FitConsole(err),
    )
