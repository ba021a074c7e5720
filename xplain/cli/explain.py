"""``xplain explain MODEL IMAGE...``: heatmaps, overlays, raw maps, JSON records and panels.

Why a module of its own: one verb per module; the work is :func:`xplain.run.explaining.explain_files`,
this is the option parsing and the printed lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import (
    OPTIONS,
    check_images,
    floats,
    load_registry,
    method_list,
    scoped_params,
    set_up,
    show_progress,
)
from .console import out
from .engine_option import engine_option


def explain(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="An ONNX classifier."),
    images: list[Path] = typer.Argument(
        ...,
        metavar="IMAGE...",
        help="Image files (JPEG, PNG, BMP, WebP, TIFF) or folders of them (recursive).",
    ),
    method: list[str] = typer.Option(
        ["saliency"],
        "--method",
        "-m",
        metavar="NAME[,NAME...]",
        help="Attribution method(s): a,b,c or repeated (see `xplain methods`).",
    ),
    target: str = typer.Option(
        "top1", help="top1, top5 (one map per class), a class index or a label name."
    ),
    out_dir: Path = typer.Option(Path("xplain-out"), "--out", "-o", help="Output folder."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed for stochastic methods."),
    batch_size: int = typer.Option(
        16, "--batch-size", min=1, help="Images (or image×target pairs) per batch."
    ),
    param: list[str] = typer.Option(
        [],
        "--param",
        "-p",
        metavar="[METHOD.]KEY=VALUE",
        help="Method parameter (repeatable; METHOD.KEY=VALUE with several methods).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON array of the records to stdout."
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
    labels: str | None = typer.Option(
        None,
        "--class-names",
        help="Class names: a text/JSON file, 'imagenet' or 'none' (default: the sidecar's; "
        "ImageNet's for 1000 outputs).",
    ),
    state_dir: Path | None = typer.Option(
        None, help="Where fitted state is looked up (see `xplain fit`)."
    ),
    percentile: float = typer.Option(
        99.5,
        "--percentile",
        help="Display scale: this percentile of |map| gets full colour (100 = max).",
    ),
    grey: bool | None = typer.Option(
        None,
        "--grey/--colour-photo",
        help="Photo in greyscale (or in colour) under the overlay's colours; default: "
        "greyscale under signed maps only, so red and blue read as the map's.",
    ),
    colorbar: bool = typer.Option(
        False, "--colorbar", help="Heatmaps and overlays as figures with a colour bar and scale."
    ),
    panel: bool | None = typer.Option(
        None,
        "--panel/--no-panel",
        help="Write NAME.panel.png (photo + one overlay per method; default: "
        "with several methods).",
    ),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        min=0.001,
        max=1e7,
        metavar="SECONDS",
        help="Stop a method call that runs longer (exit 4).",
    ),
    verify: bool | None = typer.Option(
        None,
        "--verify/--no-verify",
        help="Check the conversion against onnxruntime at load (--verify: always; default: "
        "unless this file was verified before, remembered in $XPLAIN_CACHE_DIR).",
    ),
    engine: str = engine_option(),
):
    """Explain IMAGE(s) with one or more methods: heatmap, overlay, raw .npy and a JSON record each,
    and a side-by-side panel per image when several methods are given."""
    OPTIONS["engine"] = engine
    registry = load_registry()
    names = method_list(method)
    registry.resolve("method", names)  # fail fast on an unknown method, before loading the model
    params = scoped_params(param, names, "--param")
    registry.resolve("method", names, params)
    from ..output.render import RenderOptions

    render = RenderOptions(percentile=percentile, grey=grey, colorbar=colorbar)
    from ..run.explaining import expand_images

    check_images(images)  # FIFOs and devices refused before the model loads
    images, stems = expand_images(list(images))
    model = set_up(model_path, device, labels, out_dir=out_dir, state_dir=state_dir, verify=verify)
    from ..data.images import Preprocess
    from ..run.explaining import explain_files

    preprocess = Preprocess.for_model(
        model, preset=preset, resize=resize, mean=floats(mean, "--mean"), std=floats(std, "--std")
    )
    from ..plugins.progress import progress_to
    from .progress import explain_progress

    progress, progress_cb, on_method, within = explain_progress(len(images), show_progress())
    try:
        with progress_to(within if show_progress() else None):
            records = explain_files(
                model,
                images,
                names,
                registry=registry,
                out_dir=out_dir,
                preprocess=preprocess,
                target=target,
                method_params=params,
                seed=seed,
                batch_size=batch_size,
                progress=progress_cb,
                on_method=on_method,
                render=render,
                panel=panel,
                stems=stems,
                timeout=timeout,
            )
    finally:
        progress.stop()
    if as_json:
        print(json.dumps(records, indent=2))
        return
    panels = []
    for r in records:
        label = f" ({r['target_label']})" if r["target_label"] else ""
        out.print(
            f"{r['image']}: {r['method']} class {r['target']}{label} p={r['probability']:.3f}"
            f" -> {r['files']['heatmap']}",
            highlight=False,
            markup=False,
        )
        if "panel" in r["files"] and r["files"]["panel"] not in panels:
            panels.append(r["files"]["panel"])
    for path in panels:
        out.print(f"panel -> {path}", highlight=False, markup=False)
