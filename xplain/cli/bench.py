"""``xplain bench MODEL``: the CLI of the timing library :mod:`xplain.run.timing` (seconds per
image, × forward, peak memory, Captum's time) on an ONNX file or a reference network.

Why a module of its own: one verb per module. Not to be confused with the repository's
``bench/`` folder of benchmark *scripts*, which are not part of the package.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from .common import (
    OPTIONS,
    check_images,
    load_registry,
    open_model,
    scoped_params,
)
from .console import NoStatus, err, out
from .engine_option import engine_line, engine_option


def bench(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="An ONNX classifier."),
    images: list[Path] | None = typer.Argument(
        None, metavar="[IMAGE...]", help="Images to explain (default: random inputs)."
    ),
    methods: str = typer.Option(
        ..., "--methods", "-m", help="Comma-separated methods to measure (see `xplain methods`)."
    ),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Batch size (default 8; with images: their number, cycled to fill).",
    ),
    repeats: int = typer.Option(5, min=1, help="Timed runs per method; the median is reported."),
    warmup: int = typer.Option(1, min=0, help="Untimed runs before timing."),
    param: list[str] = typer.Option(
        [],
        "--param",
        "-p",
        metavar="METHOD.KEY=VALUE",
        help="Method parameter, e.g. integrated-gradients.steps=20 (repeatable).",
    ),
    preset: str | None = typer.Option(
        None, help="Preprocessing for images: imagenet, unit or none (default: sidecar)."
    ),
    seed: int = typer.Option(
        0, min=0, max=2**32 - 1, help="Seed for stochastic methods and random inputs."
    ),
    captum: bool = typer.Option(
        True, "--captum/--no-captum", help="Also time Captum's version of each method."
    ),
    state_dir: Path | None = typer.Option(
        None, help="Where fitted state is looked up (see `xplain fit`)."
    ),
    clock: str = typer.Option(
        "wall",
        "--clock",
        help="wall (elapsed time) or cpu (process CPU time: robust on a shared CPU).",
    ),
    size: int = typer.Option(
        224,
        "--size",
        min=1,
        help="Input size when MODEL names a benchmark network (resnet50, efficientnet_b0).",
    ),
    metrics: str | None = typer.Option(
        None,
        "--metrics",
        help="Also time these metrics (comma-separated) on the first method's maps.",
    ),
    metric_param: list[str] = typer.Option(
        [], "--metric-param", metavar="METRIC.KEY=VALUE", help="Metric parameter (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    engine: str = engine_option(),
):
    """Measure methods: seconds per image, × one forward pass, peak memory, and Captum's time.

    MODEL is an ONNX file, or one of the 224×224 benchmark networks by name (resnet50,
    efficientnet_b0: torchvision architectures with random weights; efficientnet_lite0: ImageNet
    weights from the `bench` extra), exported once to ~/.cache/xplain/bench-models."""
    OPTIONS["engine"] = engine
    registry = load_registry()
    names = [n.strip() for n in methods.split(",") if n.strip()]
    from ..run.timing import resolve_methods, resolve_metrics

    chosen = [
        m.name for m in resolve_methods(names, registry)
    ]  # fail fast, before loading the model
    params = scoped_params(param, chosen, "--param")
    registry.resolve("method", chosen, params)
    chosen_metrics = [m.name for m in resolve_metrics((metrics or "").split(","), registry)]
    if metric_param and not chosen_metrics:
        raise UsageError("--metric-param without --metrics")
    metric_params = (
        scoped_params(metric_param, chosen_metrics, "--metric-param") if chosen_metrics else {}
    )
    registry.resolve("metric", chosen_metrics, metric_params)
    if not model_path.exists():
        from ..run.reference_networks import BENCH_MODELS, bench_model_path

        if str(model_path) in BENCH_MODELS:
            with (
                err.status(f"exporting {model_path}…", spinner="dots")
                if err.is_terminal
                else NoStatus()
            ):
                model_path = bench_model_path(str(model_path), size)
    images = list(images or [])
    check_images(images)
    model = open_model(model_path, device)
    model.state_dir = state_dir
    import torch

    from ..run.timing import bench as run_bench

    if images:
        from ..data.images import Preprocess
        from ..run.batching import load_batch

        loaded = load_batch(images, Preprocess.for_model(model, preset=preset), model.device).x
        assert loaded is not None  # every image loaded (or load_batch raised)
        n = batch_size or len(loaded)
        x = loaded[torch.arange(n, device=loaded.device) % len(loaded)]
    else:
        x = model.example_input(batch_size or 8, seed=seed)
    status = err.status("benchmarking…", spinner="dots") if err.is_terminal else NoStatus()
    with status:
        report = run_bench(
            model,
            x,
            chosen,
            registry=registry,
            params=params,
            repeats=repeats,
            warmup=warmup,
            seed=seed,
            captum=captum,
            clock=clock,
            progress=(lambda msg: status.update(f"benchmarking {escape(msg)}…"))
            if err.is_terminal
            else None,
        )
    if chosen_metrics:
        from ..run.timing import bench_metrics

        report["metric_bench"] = bench_metrics(
            model,
            x,
            chosen_metrics,
            chosen[0],
            registry=registry,
            params=metric_params,
            method_params=params.get(chosen[0]),
            repeats=repeats,
            warmup=warmup,
            seed=seed,
            clock=clock,
        )
    from ..run.bench_engines import compare_engines

    report["engines"] = compare_engines(model, x, repeats, warmup, clock)
    report["model"] = str(model_path)
    report["images"] = [str(p) for p in images] or None
    if as_json:
        print(json.dumps(report, indent=2))
        return
    per_image = report["forward_seconds_per_image"]
    out.print(
        f"[bold]{escape(str(model_path))}[/]  device {escape(report['device'])}  batch {report['batch_size']}"
        f"  forward {per_image:.3g} s/image  clock {report['clock']}",
        highlight=False,
    )
    out.print(engine_line(report["engines"]), highlight=False, markup=False)
    table = Table(box=None)
    for col in ("method", "s/image", "×forward", "peak mem (MB)", "captum s/image", "ours/captum"):
        table.add_column(
            col,
            justify="left" if col == "method" else "right",
            no_wrap=col == "method",
            overflow="fold",
        )
    notes = []
    for row in report["methods"]:
        status_ = row["captum_status"]
        if row["captum_seconds_per_image"] is not None:
            cap, ratio = f"{row['captum_seconds_per_image']:.3g}", f"{row['ratio_to_captum']:.2f}"
        elif status_ == "none":
            cap = ratio = "—"
        elif status_ in ("not installed", "skipped"):
            cap = ratio = status_
        else:
            cap = ratio = "failed"
            notes.append(f"{row['name']}: Captum {row['captum']} {status_}")
        fwd = "—" if row["ratio_to_forward"] is None else f"{row['ratio_to_forward']:.2f}"
        if row.get("stages"):
            split = ", ".join(
                f"{name} {st['ratio_to_forward']:.3g}×"
                for name, st in row["stages"].items()
                if st["ratio_to_forward"] is not None
            )
            notes.append(f"{row['name']} stages (× forward): {split}")
        table.add_row(
            escape(row["name"]),
            f"{row['seconds_per_image']:.3g}",
            fwd,
            "—" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.1f}",
            cap,
            ratio,
        )
    out.print(table)
    out.print(f"[dim]peak mem: {escape(report['memory'])}[/]", highlight=False)
    for line in notes:
        out.print(f"[dim]note: {escape(line)}[/]", highlight=False)
    if report.get("metric_bench"):
        mb = report["metric_bench"]
        table = Table(box=None, title=f"metrics on {escape(mb['method'])} maps")
        for col in ("metric", "s/image", "fwd/image", "ms/fwd", "×forward", "peak MB"):
            table.add_column(
                col, justify="left" if col == "metric" else "right", no_wrap=col == "metric"
            )
        for row in mb["metrics"]:
            step = row["seconds_per_step"]
            table.add_row(
                escape(row["name"]),
                f"{row['seconds_per_image']:.3g}",
                f"{row['forward_images']:.4g}",
                "—" if step is None else f"{1e3 * step:.3g}",
                "—" if row["ratio_to_forward"] is None else f"{row['ratio_to_forward']:.2f}",
                "—" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.1f}",
            )
        out.print(table)
