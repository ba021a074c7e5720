"""The ``xplain`` command line: a thin shell over the Python API.

Importing this module must not import torch: ``xplain --help``, ``xplain methods`` and
``xplain plugins`` stay fast. Commands that need torch import it inside their bodies.
Every expected error becomes one line on stderr and an :class:`ExitCode`.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

try:  # typer ≥ 0.20 vendors click; older typer uses the click package
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc  # type: ignore[no-redef]
from rich.console import Console
from rich.markup import escape
from rich.segment import Segment
from rich.table import Table

from ..errors import ExitCode, UsageError, XplainError
from ..output.display import display_name
from ..run.allocator import tune_allocator
from ..untrusted import printable

app = typer.Typer(
    name="xplain",
    help="Explain the decisions of ONNX image classifiers (MIP-IN, InputIBA, TR-GBP and baselines).",
    no_args_is_help=True,
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
methods_app = typer.Typer(
    help="List attribution methods, or show one.", invoke_without_command=True
)
metrics_app = typer.Typer(help="List evaluation metrics, or show one.", invoke_without_command=True)
app.add_typer(methods_app, name="methods")
app.add_typer(metrics_app, name="metrics")


class SafeConsole(Console):
    """A rich Console that never lets a control character through.

    Every segment rich renders (plain strings, markup, table cells, progress text) passes
    through :func:`xplain.untrusted.printable` (newlines kept), so an ESC/CSI/OSC/C1 sequence in
    a model's producer name, an op type, a label or a file name is shown as ``\\x1b…`` text
    instead of being executed by the terminal. Rich's own control segments (cursor moves of a
    progress bar) are left alone: they carry no untrusted text."""

    def print(self, *objects, **kwargs):  # noqa: A003 - rich's name
        super().print(
            *(printable(o, keep_newlines=True) if isinstance(o, str) else o for o in objects),
            **kwargs,
        )

    def render(self, renderable, options=None):
        for segment in super().render(renderable, options):
            if segment.control or segment.text.isprintable() or segment.text == "\n":
                yield segment
            else:
                yield Segment(
                    printable(segment.text, keep_newlines=True), segment.style, segment.control
                )


# emoji off and markup escaped: model names, paths and plugin errors are untrusted text
out = SafeConsole(soft_wrap=True, emoji=False)
err = SafeConsole(stderr=True, soft_wrap=True, emoji=False)
_options: dict[str, Any] = {"strict": False, "blocked": (), "max_input_pixels": None}


def _registry():
    from ..plugins.registry import get_registry

    registry = get_registry(strict=_options["strict"], blocked=_options["blocked"])
    for info in registry.broken():
        err.print(
            f"[yellow]warning:[/] plugin {escape(repr(info.name))} skipped: {escape(info.error or '')}",
            highlight=False,
        )
    return registry


@app.callback()
def _main(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    strict_plugins: bool = typer.Option(
        False, "--strict-plugins", help="A broken plugin is an error, not a warning."
    ),
    no_plugin: list[str] = typer.Option(
        [], "--no-plugin", metavar="NAME", help="Do not load this plugin (repeatable)."
    ),
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True
    ),
    max_input_pixels: int | None = typer.Option(
        None,
        "--max-input-pixels",
        min=1,
        metavar="N",
        help="Accept models whose declared input has up to N pixels (H×W; default 1024², "
        "or $XPLAIN_MAX_INPUT_PIXELS).",
    ),
):
    """Explain the decisions of ONNX image classifiers."""
    if version:
        from .. import __version__

        out.print(f"xplain {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        out.print(ctx.get_help())
        raise typer.Exit(ExitCode.USAGE)
    _options["strict"] = strict_plugins
    _options["blocked"] = tuple(no_plugin)
    _options["max_input_pixels"] = max_input_pixels


# ---------------------------------------------------------------------------- catalogue
def _params_table(params) -> Table:
    table = Table(box=None, pad_edge=False, show_header=True)
    for col in ("parameter", "type", "default", "description"):
        table.add_column(col)
    for p in params:
        desc = p.help + (f" (one of: {', '.join(map(str, p.choices))})" if p.choices else "")
        table.add_row(escape(p.name), p.type, escape(repr(p.default)), escape(desc))
    return table


def _list(kind: str, as_json: bool) -> None:
    registry = _registry()
    items = registry.methods if kind == "method" else registry.metrics
    if as_json:
        out.print_json(
            data=[
                {"name": n, "summary": m.summary, "plugin": m.plugin}
                for n, m in sorted(items.items())
            ]
        )
        return
    table = Table(title=f"{kind}s", box=None)
    table.add_column("name", style="bold")
    table.add_column("summary")
    table.add_column("plugin", style="dim")
    for name, item in sorted(items.items()):
        table.add_row(escape(name), escape(item.summary), escape(item.plugin))
    out.print(table)
    if not items:
        out.print(f"(no {kind}s installed)")


def _show(kind: str, name: str, as_json: bool) -> None:
    registry = _registry()
    item = registry.method(name) if kind == "method" else registry.metric(name)
    params = [
        {
            "name": p.name,
            "type": p.type,
            "default": p.default,
            "help": p.help,
            "choices": list(p.choices) if p.choices else None,
        }
        for p in item.params
    ]
    if as_json:
        data = {
            "name": item.name,
            "summary": item.summary,
            "description": item.description,
            "plugin": item.plugin,
            "params": params,
        }
        if kind == "method":
            import dataclasses

            data["capabilities"] = dataclasses.asdict(item.capabilities)
        else:
            data["higher_is_better"] = item.higher_is_better
        out.print_json(data=data)
        return
    out.print(
        f"[bold]{escape(item.name)}[/] — {escape(item.summary)}  [dim](plugin {escape(item.plugin)})[/]"
    )
    if item.description:
        out.print(f"\n{escape(item.description)}\n", highlight=False)
    if kind == "method":
        caps = item.capabilities
        flags = [
            f
            for f, on in (
                ("needs gradients", caps.needs_gradients),
                ("needs fitting", caps.needs_fitting),
                ("stochastic", caps.stochastic),
                ("multi-class", caps.multi_class),
            )
            if on
        ]
        out.print(f"capabilities: {', '.join(flags) or 'none'}")
        requires = getattr(caps, "requires", ())
        if requires:
            from ..graph.model import REQUIREMENTS

            out.print(
                "requires: "
                + "; ".join(f"{r} ({REQUIREMENTS.get(r, '?')})" for r in requires)
                + " — other models are refused before running (exit 2)",
                highlight=False,
            )
    else:
        out.print(f"direction: {'higher' if item.higher_is_better else 'lower'} is better")
    if item.params:
        out.print(_params_table(item.params))
    else:
        out.print("parameters: none")


@methods_app.callback()
def methods(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """List attribution methods."""
    if ctx.invoked_subcommand is None:
        _list("method", as_json)


@methods_app.command("show")
def methods_show(name: str, as_json: bool = typer.Option(False, "--json")):
    """Show a method's algorithm, parameters and defaults."""
    _show("method", name, as_json)


@metrics_app.callback()
def metrics(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """List evaluation metrics."""
    if ctx.invoked_subcommand is None:
        _list("metric", as_json)


@metrics_app.command("show")
def metrics_show(name: str, as_json: bool = typer.Option(False, "--json")):
    """Show a metric's definition, direction and parameters."""
    _show("metric", name, as_json)


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List installed plugins, what they provide, and any that failed to load."""
    registry = _registry()
    rows = sorted(registry.plugins.values(), key=lambda p: p.name)
    if as_json:
        import dataclasses

        out.print_json(data=[dataclasses.asdict(p) for p in rows])
        return
    table = Table(box=None)
    for col in ("plugin", "distribution", "methods", "metrics", "status"):
        table.add_column(col)
    for p in rows:
        status = (
            "blocked" if p.blocked else (f"[red]error: {escape(p.error)}[/]" if p.error else "ok")
        )
        table.add_row(
            p.name,
            f"{p.distribution} {p.version}",
            ", ".join(p.methods),
            ", ".join(p.metrics),
            status,
        )
    out.print(table)


# ---------------------------------------------------------------------------- model commands
def _parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r} is not key=value")
        params[key.strip()] = value.strip()
    return params


def _load(model_path: Path, device: str, labels: str | None = None, verify: bool = True):
    from ..run.api import load_model

    with err.status(f"loading {model_path.name}…", spinner="dots") if err.is_terminal else _null():
        return load_model(
            model_path,
            device=device,
            labels=labels,
            verify=verify,
            registry=_registry(),
            max_input_pixels=_options["max_input_pixels"],
        )


def _set_up(
    model_path: Path,
    device: str,
    labels: str | None = None,
    *,
    inputs: Sequence[Path] = (),
    data: Path | None = None,
    out_dir: Path | None = None,
    out_flag: str = "--out",
    state_dir: Path | None = None,
    verify: bool = True,
):
    """The one set-up of explain / eval / fit / bench, after their names and parameters were
    resolved with ``registry.resolve`` (so a typo fails before anything loads): the inputs
    exist → the model loads → the output folder is usable → fitted state is looked up in
    ``state_dir``. Returns the model."""
    for image in inputs:
        if not image.exists():
            raise XplainErrorInput(image, "no such file")
        if image.is_dir():
            raise XplainErrorInput(image, "is a directory, not an image")
    if data is not None and not data.exists():
        raise XplainErrorInput(data, "no such file or folder")
    model = _load(model_path, device, labels, verify=verify)
    if out_dir is not None:
        _check_out_dir(out_dir, out_flag)
    model.state_dir = state_dir
    return model


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *args, **kwargs) -> None:  # the status API, for a console that is no terminal
        pass


def _relative_note(report) -> str:
    """The difference relative to the logits' scale, shown when the logits exceed 1: the absolute
    difference alone then looks alarming (random-weight Inception v3 has logits near 1e12 and a
    float32-exact conversion differs from onnxruntime by ~5e5, i.e. 5e-7 of the scale)."""
    rel, diff = report.max_rel_diff, report.max_abs_diff
    if rel is None or diff is None or rel >= diff:
        return ""
    return f", {rel:.2g} of the logits' scale"


def _attention_summary(model) -> dict:
    found = model.attention()
    first = found[0] if found else None
    return {
        "layers": len(found),
        "tokens": first.tokens if first else None,
        "windowed": any(a.windowed for a in found),
        "prefix_tokens": first.layout.prefix if first and first.layout else None,
        "softmax": [a.node for a in found],
    }


@app.command()
def inspect(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="An ONNX classifier."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str = typer.Option("cpu", help="auto, cpu, cuda or cuda:N."),
):
    """Show what xplain sees in a model: interface, ops, activations, bias and feature layers."""
    model = _load(model_path, device)
    report = model.report
    default = model.default_feature_layer()
    bottleneck = model.bottleneck_layer()
    data = {
        "model": str(model_path),
        "digest": model.digest,
        "producer": report.producer,
        "ir_version": report.ir_version,
        "opset": report.opset,
        "opset_used": report.opset_used,
        "input": {"name": report.input_name, "shape": report.input_shape},
        "output": {"name": report.output_name, "shape": report.output_shape, "all": report.outputs},
        "num_classes": model.num_classes,
        "fixed_batch": model.spec.fixed_batch,
        "op_counts": report.op_counts,
        "activations": [
            {"layer": a.name, "onnx_name": model.onnx_name(a.name), "kind": a.kind}
            for a in model.activations()
        ],
        "bias_layers": [
            {
                "layer": b.layer,
                "onnx_name": model.onnx_name(b.layer),
                "at": b.node,
                "kind": b.kind,
                "channels": int(b.bias.numel()),
            }
            for b in model.bias_layers()
        ],
        "feature_layers": [
            {
                "layer": f.name,
                "onnx_name": model.onnx_name(f.name),
                "shape": list(f.shape),
                "layout": f.layout.kind,
                "grid": list(f.layout.grid),
                "channels": f.layout.channels,
                "prefix_tokens": f.layout.prefix,
                "cut": f.cut,
            }
            for f in model.feature_layers()
        ],
        "default_feature_layer": default.name if default else None,
        "bottleneck_layer": bottleneck.name if bottleneck else None,
        "default_layout": default.layout.describe() if default else None,
        "nonlinearities": {k: len(v) for k, v in model.nonlinearities().items()},
        "attention": _attention_summary(model),
        "softmax_stripped": report.softmax_stripped,
        "verified": report.verified,
        "max_abs_diff": report.max_abs_diff,
        "max_rel_diff": report.max_rel_diff,
        "batch_checked": report.batch_checked,
        "notes": [n for n in report.notes if n],
        "labels": bool(model.labels),
    }
    if as_json:
        print(json.dumps(data, indent=2))
        return
    kinds: dict[str, int] = {}
    for a in model.activations():
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
    shape = lambda s: "×".join("?" if d is None else str(d) for d in s)  # noqa: E731
    out.print(f"[bold]{escape(str(model_path))}[/]  sha256 {model.digest[:16]}…", highlight=False)
    out.print(
        f"producer     {escape(report.producer or '?')}   IR {report.ir_version}   opset {report.opset}"
        + (f" (converted to {report.opset_used})" if report.opset_used != report.opset else ""),
        highlight=False,
    )
    out.print(
        f"input        {escape(repr(report.input_name))} {shape(report.input_shape)}"
        + ("  (fixed batch 1: run one sample at a time)" if model.spec.fixed_batch else ""),
        highlight=False,
    )
    out.print(
        f"output       {escape(repr(report.output_name))} {shape(report.output_shape)}   classes {model.num_classes}",
        highlight=False,
    )
    out.print(
        f"softmax      {'stripped (' + report.softmax_stripped + ')' if report.softmax_stripped else 'none'}"
    )
    verdict = (
        (
            f"[green]verified[/] against onnxruntime (max |diff| {report.max_abs_diff:.2g}"
            f"{_relative_note(report)}"
            f"{', batch 1 vs 2 checked' if report.batch_checked else ''})"
        )
        if report.verified
        else "[yellow]not verified[/]"
    )
    out.print(f"conversion   {verdict}")
    out.print(
        "ops          " + ", ".join(f"{k} {v}" for k, v in report.op_counts.items()),
        highlight=False,
    )
    out.print(
        "activations  " + (", ".join(f"{k} {v}" for k, v in kinds.items()) or "none"),
        highlight=False,
    )
    out.print(
        f"bias layers  {len(data['bias_layers'])}  ("
        + ", ".join(sorted({b["kind"] for b in data["bias_layers"]}))
        + ")",
        highlight=False,
    )
    census = ", ".join(f"{k} {v}" for k, v in data["nonlinearities"].items())
    out.print("non-linear   " + (census or "none"), highlight=False)
    att = data["attention"]
    if att["layers"]:
        out.print(
            f"attention    {att['layers']} softmax layers, {att['tokens']} tokens"
            + (" (windowed)" if att["windowed"] else f", {att['prefix_tokens']} prefix"),
            highlight=False,
        )
    if default is not None:
        out.print(
            f"default layer {escape(default.name)}  {escape(default.layout.describe())}",
            highlight=False,
        )
    table = Table(
        title="feature layers (default: CAM methods; iba: iba/input-iba bottleneck; `-p layer=` takes the id or the ONNX name)",
        box=None,
    )
    table.add_column("layer")
    table.add_column("ONNX name")
    table.add_column("shape")
    table.add_column("layout")
    table.add_column("")
    for f in model.feature_layers():
        marks = [
            "default" if f.name == data["default_feature_layer"] else "",
            "iba" if f.name == data["bottleneck_layer"] else "",
        ]
        # ONNX names are file content: escaped (control characters) and markup-escaped for rich
        onnx_name = model.onnx_name(f.name)
        table.add_row(
            escape(f.name),
            escape(display_name(onnx_name)) if onnx_name else "–",
            shape(f.shape),
            escape(f.layout.describe()),
            " ".join(m for m in marks if m),
        )
    out.print(table)
    for note in data["notes"]:
        out.print(f"[dim]note: {escape(note)}[/]", highlight=False)


@app.command()
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
    labels: str | None = typer.Option(None, help="Class names: a text/JSON file, or 'imagenet'."),
    state_dir: Path | None = typer.Option(
        None, help="Where fitted state is looked up (see `xplain fit`)."
    ),
    percentile: float = typer.Option(
        99.5,
        "--percentile",
        help="Display scale: this percentile of |map| gets full colour (100 = max).",
    ),
    grey: bool = typer.Option(
        False, "--grey", help="Show the photo in greyscale under the overlay's colours."
    ),
    colorbar: bool = typer.Option(
        False, "--colorbar", help="Heatmaps as a small figure with a colour bar and scale."
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
    verify: bool = typer.Option(
        True,
        "--verify/--no-verify",
        help="Check the conversion against onnxruntime at load (default). --no-verify "
        "skips it for models already checked (`xplain inspect`): faster start-up.",
    ),
):
    """Explain IMAGE(s) with one or more methods: heatmap, overlay, raw .npy and a JSON record each,
    and a side-by-side panel per image when several methods are given."""
    registry = _registry()
    names = _method_list(method)
    registry.resolve("method", names)  # fail fast on an unknown method, before loading the model
    params = _scoped_params(param, names, "--param")
    registry.resolve("method", names, params)
    from ..output.render import RenderOptions

    render = RenderOptions(percentile=percentile, grey=grey, colorbar=colorbar)
    from ..run.explaining import expand_images

    _check_images(images)  # FIFOs and devices refused before the model loads
    images, stems = expand_images(list(images))
    model = _set_up(model_path, device, labels, out_dir=out_dir, state_dir=state_dir, verify=verify)
    from ..data.images import Preprocess
    from ..run.explaining import explain_files

    preprocess = Preprocess.for_model(
        model, preset=preset, resize=resize, mean=_floats(mean, "--mean"), std=_floats(std, "--std")
    )
    progress_cb, progress = None, None
    if len(images) > 1:
        from rich.progress import Progress

        progress = Progress(console=err, transient=True)
        task = progress.add_task(",".join(names), total=len(images))
        progress.start()
        progress_cb = lambda n: progress.advance(task, n)  # noqa: E731
    try:
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
            render=render,
            panel=panel,
            stems=stems,
            timeout=timeout,
        )
    finally:
        if progress is not None:
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


def _method_list(items: list[str]) -> list[str]:
    """``--method a,b --method c`` -> [a, b, c]; a name given twice is a usage error."""
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    if not names:
        raise UsageError("--method: no method given")
    if len(set(names)) != len(names):
        raise UsageError(
            f"--method: {next(n for n in names if names.count(n) > 1)!r} is given twice"
        )
    return names


def _floats(text: str | None, flag: str):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def _check_images(images: list[Path]) -> None:
    """Fail fast, before the model loads: a missing image, a FIFO or a device."""
    from ..untrusted import require_regular_file

    for image in images:
        if not image.exists() and not image.is_symlink():
            raise XplainErrorInput(image, "no such file")
        if image.is_dir():
            continue  # explain accepts folders of images (bench does not: see its own check)
        from ..errors import InputDataError

        require_regular_file(image, InputDataError, "image")


def XplainErrorInput(path, message):  # noqa: N802 - reads like the exception it builds
    from ..errors import InputDataError

    return InputDataError(message, path=path)


def _check_out_dir(folder: Path, flag: str) -> None:
    """Fail with one line (exit 2) before any work if the output folder cannot be used.

    The folder itself is created by the first file written, so a run that fails on its input
    leaves nothing behind, not even an empty folder."""
    if folder.is_symlink() and not folder.exists():
        raise UsageError(
            f"{flag} is a dangling symbolic link (to {os.readlink(folder)!r})", path=folder
        )
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"{flag} is a file, not a folder", path=folder)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} is not writable", path=folder)
        return
    parent = next(p for p in folder.absolute().parents if p.exists())  # "/" always exists
    if not parent.is_dir():
        raise UsageError(f"{flag}: cannot create the folder ({parent} is a file)", path=folder)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(
            f"{flag}: cannot create the folder ({parent} is not writable)", path=folder
        )


@app.command()
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
    registry = _registry()
    m = registry.method(method)
    if m.fit is None:
        raise UsageError(f"method {method!r} does not learn from data; nothing to fit")
    from ..run.fitting import FitConsole, fit_method

    params = _parse_params(param)
    from ..run.state import state_dir as resolve_state_dir

    model = _set_up(
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
    path = fit_method(
        model,
        m,
        data,
        params=params,
        state_dir=state_dir,
        batch_size=batch_size,
        preset=preset,
        resize=resize,
        mean=_floats(mean, "--mean"),
        std=_floats(std, "--std"),
        classes=classes,
        samples=samples,
        layer=layer,
        labels=labels,
        console=FitConsole(err),
    )
    out.print(f"saved {path}", markup=False, highlight=False)


@app.command()
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
):
    """Measure methods: seconds per image, × one forward pass, peak memory, and Captum's time.

    MODEL is an ONNX file, or one of the 224×224 benchmark networks by name (resnet50,
    efficientnet_b0: torchvision architectures with random weights; efficientnet_lite0: ImageNet
    weights from the `bench` extra), exported once to ~/.cache/xplain/bench-models."""
    registry = _registry()
    names = [n.strip() for n in methods.split(",") if n.strip()]
    from ..run.bench import resolve_methods, resolve_metrics

    chosen = [
        m.name for m in resolve_methods(names, registry)
    ]  # fail fast, before loading the model
    params = _scoped_params(param, chosen, "--param")
    registry.resolve("method", chosen, params)
    chosen_metrics = [m.name for m in resolve_metrics((metrics or "").split(","), registry)]
    if metric_param and not chosen_metrics:
        raise UsageError("--metric-param without --metrics")
    metric_params = (
        _scoped_params(metric_param, chosen_metrics, "--metric-param") if chosen_metrics else {}
    )
    registry.resolve("metric", chosen_metrics, metric_params)
    if not model_path.exists():
        from ..run.bench_models import BENCH_MODELS, bench_model_path

        if str(model_path) in BENCH_MODELS:
            with (
                err.status(f"exporting {model_path}…", spinner="dots")
                if err.is_terminal
                else _null()
            ):
                model_path = bench_model_path(str(model_path), size)
    images = list(images or [])
    _check_images(images)
    model = _load(model_path, device)
    model.state_dir = state_dir
    import torch

    from ..run.bench import bench as run_bench

    if images:
        from ..data.images import Preprocess
        from ..run.batching import load_batch

        loaded = load_batch(images, Preprocess.for_model(model, preset=preset), model.device).x
        assert loaded is not None  # every image loaded (or load_batch raised)
        n = batch_size or len(loaded)
        x = loaded[torch.arange(n, device=loaded.device) % len(loaded)]
    else:
        x = model.example_input(batch_size or 8, seed=seed)
    status = err.status("benchmarking…", spinner="dots") if err.is_terminal else _null()
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
        from ..run.bench import bench_metrics

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


# ---------------------------------------------------------------------------- eval
def _names(text: str, available: dict, kind: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return sorted(available)
    if not names:
        raise UsageError(f"no {kind}s given (a comma-separated list, or 'all')")
    return names


def _scoped_params(items: list[str], chosen: list[str], flag: str) -> dict[str, dict[str, str]]:
    """``NAME.KEY=VALUE`` (or ``KEY=VALUE`` when only one NAME is chosen) -> {NAME: {KEY: VALUE}}.

    Method and metric names never contain a dot, so the first dot separates NAME from KEY."""
    params: dict[str, dict[str, str]] = {}
    for key, value in _parse_params(items).items():
        name, dot, sub = key.partition(".")
        if not dot:
            if len(chosen) != 1:
                raise UsageError(f"{flag} {key}={value}: say which one, as NAME.{key}={value}")
            name, sub = chosen[0], key
        if name not in chosen:
            raise UsageError(f"{flag} {key}={value}: {name!r} is not among the chosen ones")
        params.setdefault(name, {})[sub] = value
    return params


@app.command("eval")
def eval_command(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="An ONNX classifier."),
    data: Path = typer.Argument(
        ...,
        metavar="DATA",
        help="A folder of images, class sub-folders, or a CSV manifest (path,label[,boxes]).",
    ),
    methods: str = typer.Option("", "--methods", "-m", help="Comma-separated methods, or 'all'."),
    metrics: str = typer.Option("", "--metrics", help="Comma-separated metrics, or 'all'."),
    protocol: str | None = typer.Option(
        None,
        "--protocol",
        metavar="latec|FILE",
        help="A published protocol's methods, metrics and settings, ranked as it ranks them "
        "(DIR/protocol.md); instead of --methods/--metrics.",
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Image labels: CSV (path,label) or TXT (image label)."
    ),
    boxes: Path | None = typer.Option(
        None, "--boxes", help="Boxes: a folder of Pascal VOC XML or a JSON file."
    ),
    out_dir: Path = typer.Option(Path("xplain-eval"), "--out", "-o", help="Output folder."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Use only the first N images."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per batch."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    seed: int = typer.Option(
        0, min=0, max=2**32 - 1, help="Seed for stochastic methods and metrics."
    ),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Skip work already in OUT/results.jsonl."
    ),
    param: list[str] = typer.Option(
        [], "--param", "-p", metavar="METHOD.KEY=VALUE", help="Method parameter (repeatable)."
    ),
    metric_param: list[str] = typer.Option(
        [], "--metric-param", metavar="METRIC.KEY=VALUE", help="Metric parameter (repeatable)."
    ),
    preset: str | None = typer.Option(
        None, help="Preprocessing: imagenet, unit or none (default: sidecar)."
    ),
    class_names: str | None = typer.Option(
        None, "--class-names", help="The model's class names: a text/JSON file, or 'imagenet'."
    ),
    montage: int = typer.Option(4, min=0, max=64, help="Images in the montage of maps."),
    report_images: int = typer.Option(
        8,
        "--report-images",
        min=0,
        max=256,
        help="Images shown one by one, with every method's map, in DIR/report.html.",
    ),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write DIR/plots/*.png."),
    state_dir: Path | None = typer.Option(
        None, help="Where fitted state is looked up (see `xplain fit`)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON to stdout."),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        min=0.001,
        max=1e7,
        metavar="SECONDS",
        help="Fail a method's batch that runs longer (error records).",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help="Image decoding workers (default: the number of cores; 0: none).",
    ),
    worker_kind: str = typer.Option(
        "thread", "--worker-kind", help="Decoding workers: thread or process."
    ),
    shard: str | None = typer.Option(
        None,
        "--shard",
        metavar="I/N",
        help="Evaluate shard I of N (0-based) into results.shard-I-of-N.jsonl; "
        "'env' reads RANK/WORLD_SIZE or the SLURM array task.",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray",
        metavar="auto|ADDRESS|local",
        help="Run on Ray (pip install 'xplain[ray]'): local starts a "
        "local cluster, auto joins the running one.",
    ),
    ray_workers: int = typer.Option(
        2, "--ray-workers", min=1, help="Ray worker actors (one model each)."
    ),
    gpus_per_worker: float = typer.Option(
        0.0,
        "--gpus-per-worker",
        min=0.0,
        help="GPUs per Ray worker (0.5: two workers share a GPU).",
    ),
):
    """Evaluate methods with metrics on a data set: results.jsonl, summary.json/.csv, a table, plots and
    report.html.

    `xplain eval summarize DIR` merges the results files of DIR (the shards of a run) into the
    summary and reports images no shard has done."""
    registry = _registry()
    chosen_protocol = None
    if protocol is not None:  # issue 23: the protocol names the methods, metrics and settings
        from ..run import protocols

        chosen_protocol, method_names, metric_names, proto_mp, proto_xp = protocols.cli_plan(
            protocol, methods, metrics, registry
        )
    else:
        method_names = _names(methods, registry.methods, "method")
        metric_names = _names(metrics, registry.metrics, "metric")
    registry.resolve("method", method_names)  # fail fast on a bad name, then on bad parameters
    registry.resolve("metric", metric_names)
    method_params = _scoped_params(param, method_names, "--param")
    metric_params = _scoped_params(metric_param, metric_names, "--metric-param")
    if chosen_protocol is not None:
        method_params = protocols.merged(proto_mp, method_params)
        metric_params = protocols.merged(proto_xp, metric_params)
    from ..plugins.registry import validate_params

    for n in method_names:
        validate_params(registry.method(n).params, method_params.get(n, {}), f"method {n!r}")
    for n in metric_names:
        validate_params(registry.metric(n).params, metric_params.get(n, {}), f"metric {n!r}")
    if not data.exists():
        raise XplainErrorInput(data, "no such file or folder")
    if worker_kind not in ("thread", "process"):
        raise UsageError(f"--worker-kind {worker_kind!r}: expected thread or process")
    from ..run.shards import parse_shard

    chosen_shard = parse_shard(shard)
    ray = None
    if ray_address is not None:
        ray = {"address": ray_address, "workers": ray_workers, "gpus_per_worker": gpus_per_worker}
    model = _load(model_path, device, class_names)
    if [n.strip() for n in methods.split(",") if n.strip()] == ["all"]:
        # "all" means every method this model qualifies for (rectifiers, attention …)
        skipped = [
            n
            for n in method_names
            if any(model.requirement_problem(r) for r in registry.method(n).capabilities.requires)
        ]
        method_names = [n for n in method_names if n not in skipped]
        if skipped:
            err.print(
                f"xplain: note: --methods all leaves out {', '.join(skipped)} (requirements this "
                "model does not meet; `xplain methods show NAME`)",
                highlight=False,
                markup=False,
            )
    _check_out_dir(out_dir, "--out")
    model.state_dir = state_dir
    if chosen_protocol is not None:  # methods the model cannot run are named, the rest scored
        applicable, refused = protocols.split_applicable(chosen_protocol, model, registry)
        if not applicable:
            raise UsageError(f"protocol {chosen_protocol.name}: no method applies to this model")
        method_names = [str(e.plugin) for e in applicable]
        method_params = {n: method_params[n] for n in method_names}
        protocols.write_plan(out_dir, chosen_protocol, refused)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from ..data.images import Preprocess
    from ..run.evaluation import evaluate

    class _Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.2f} images/s" if task.speed else "… images/s")

    preprocess = Preprocess.for_model(model, preset=preset)
    progress = Progress(
        TextColumn("eval"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = progress.add_task("eval", total=None)
    with progress:
        summary = evaluate(
            model,
            data,
            methods=method_names,
            metrics=metric_names,
            out_dir=out_dir,
            labels=labels,
            boxes=boxes,
            limit=limit,
            batch_size=batch_size,
            seed=seed,
            resume=resume,
            preprocess=preprocess,
            method_params=method_params,
            metric_params=metric_params,
            registry=registry,
            montage=montage,
            plots=plots,
            report_images=report_images,
            workers=workers,
            worker_kind=worker_kind,
            shard=chosen_shard,
            ray=ray,
            timeout=timeout,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    ranked = None
    if chosen_protocol is not None and "shard" not in summary:
        ranked = protocols.finish(out_dir, registry)
        summary["protocol"] = ranked
    if as_json:
        print(json.dumps(summary, indent=2))
        _fail_if_nothing_evaluated(summary, data)
        return
    if ranked is not None:
        for line in protocols.ranking_lines(ranked):
            out.print(escape(line), highlight=False)
    matrix = summary_table(summary)
    width = 22 + sum(max(len(k) + 2, 7) + 1 for k in summary["scores"])
    out.print(matrix if width <= out.width else ranking_table(summary))
    failed = {m: n for m, n in summary["errors"].items() if n}
    for name, n in failed.items():
        out.print(
            f"[yellow]{escape(name)}: {n} error(s), e.g. {escape(summary['error_examples'].get(name, ''))}[/]",
            highlight=False,
        )
    if "shard" in summary:
        out.print(
            f"wrote {escape(str(out_dir))}/{chosen_shard.results_name} (shard {summary['shard']}); when every "
            f"shard is done: xplain eval summarize {escape(str(out_dir))}",
            highlight=False,
        )
    else:
        _print_missing(summary)
        out.print(
            f"wrote {escape(str(out_dir))}/results.jsonl, summary.json, summary.csv, report.html"
            + (", plots/" if plots else ""),
            highlight=False,
        )
    _fail_if_nothing_evaluated(summary, data)


def _print_missing(summary: dict) -> None:
    if summary.get("missing"):
        examples = ", ".join(summary.get("missing_images", [])[:3])
        out.print(
            f"[yellow]{summary['missing']} image(s) have no result in any results file, e.g. "
            f"{escape(examples)}[/]",
            highlight=False,
        )


@app.command("eval-summarize", hidden=True)
def eval_summarize_command(
    out_dir: Path = typer.Argument(
        ..., metavar="DIR", help="The --out folder of `xplain eval` (its shards)."
    ),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write DIR/plots/*.png."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON to stdout."),
):
    """Merge every results file in DIR into summary.json/csv, the table and plots (`xplain eval summarize DIR`)."""
    from ..run.shards import summarize

    summary = summarize(out_dir, plots=plots, registry=_registry())
    from ..run.protocols import finish, ranking_lines

    ranked = finish(out_dir, _registry())  # a --protocol run: its ranking over all shards
    if ranked is not None:
        summary["protocol"] = ranked
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for line in ranking_lines(ranked) if ranked is not None else []:
        out.print(escape(line), highlight=False)
    out.print(summary_table(summary))
    _print_missing(summary)
    out.print(
        f"merged {', '.join(summary['results_files']) or 'no results files'} -> "
        f"{escape(str(out_dir))}/summary.json, summary.csv" + (", plots/" if plots else ""),
        highlight=False,
    )


def _fail_if_nothing_evaluated(summary: dict, data: Path) -> None:
    """Failed images are skipped, but a run in which every one failed is an input error (exit 5)."""
    errors = sum(summary["errors"].values())
    if errors and not summary["scores"]:
        example = next((e for e in summary["error_examples"].values() if e), "")
        from ..errors import InputDataError

        raise InputDataError(
            f"nothing could be evaluated: {errors} error(s), e.g. {example}", path=data
        )


def summary_table(summary: dict) -> Table:
    """Methods × scores (means; standard errors are in summary.csv/json); the best per score has a *."""
    table = Table(
        title=f"{summary['images']} images: mean per method (* best; ↑ higher / ↓ lower is better)",
        box=None,
        pad_edge=False,
    )
    table.add_column("method", style="bold", no_wrap=True)
    keys = summary["scores"]
    for k in keys:
        table.add_column(
            f"{k} {'↑' if summary['higher_is_better'][k] else '↓'}",
            justify="right",
            overflow="fold",
        )
    table.add_column("errors", justify="right")
    for name, per in summary["table"].items():
        cells = []
        for k in keys:
            cell = per.get(k)
            if not cell or cell["mean"] is None:
                cells.append("n/a")
                continue
            text = f"{cell['mean']:.3g}"
            cells.append(f"[bold green]*{text}[/]" if summary["best"].get(k) == name else text)
        table.add_row(escape(name), *cells, str(summary["errors"].get(name, 0)))
    return table


def ranking_table(summary: dict) -> Table:
    """The narrow form for many scores: per score the best, runner-up and worst method."""
    table = Table(
        title=f"{summary['images']} images: best / runner-up / worst method per score "
        "(full table: summary.csv)",
        box=None,
        pad_edge=False,
    )
    for col in ("score", "", "best", "runner-up", "worst"):
        table.add_column(col, no_wrap=col in ("score", ""))
    for k in summary["scores"]:
        ranked = sorted(
            (
                (per[k]["mean"], name)
                for name, per in summary["table"].items()
                if k in per and per[k]["mean"] is not None
            ),
            reverse=summary["higher_is_better"][k],
        )
        cells = [f"{escape(n)} {v:.3g}" for v, n in ranked]
        if not cells:
            table.add_row(escape(k), "", "n/a", "", "")
            continue
        table.add_row(
            escape(k),
            "↑" if summary["higher_is_better"][k] else "↓",
            f"[bold green]{cells[0]}[/]",
            cells[1] if len(cells) > 2 else "",
            cells[-1] if len(cells) > 1 else "",
        )
    return table


# ---------------------------------------------------------------------------- entry point
_warned: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A warning is one line on stderr, like an error, not Python's two with the source line;
    each text once per run (a method warns per batch, the user needs it once)."""
    text = str(message)
    if text not in _warned:
        _warned.add(text)
        err.print(f"xplain: warning: {text}", highlight=False, markup=False)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; expected errors print one line and return their exit code."""
    argv = sys.argv[1:] if argv is None else argv
    tune_allocator()
    if (
        argv[:2] == ["eval", "summarize"] and not Path("summarize").is_file()
    ):  # a sub-command of eval
        argv = ["eval-summarize", *argv[2:]]
    debug = "--debug" in argv or os.environ.get("XPLAIN_DEBUG") == "1"
    command = typer.main.get_command(app)
    try:
        _warned.clear()
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
                # raised by onnx2torch's Slice module on every call; about a library's internals,
                # nothing a user can act on (torch 2.9+ indexing semantics it still gets right)
                warnings.filterwarnings(
                    "ignore", message="Using a non-tuple sequence for multidimensional indexing"
                )
            code = command.main(args=argv, prog_name="xplain", standalone_mode=False)
        if code == ExitCode.INTERRUPTED:  # typer turns Ctrl-C into Exit(130) without a word
            err.print("xplain: interrupted", highlight=False)
        return int(code or 0) if isinstance(code, int) else 0
    except typer.Abort:
        err.print("xplain: interrupted", highlight=False)
        return ExitCode.INTERRUPTED
    except typer.Exit as exc:
        return exc.exit_code
    except click_exc.ClickException as exc:
        if debug:
            raise
        exc.show(file=sys.stderr)
        return ExitCode.USAGE
    except XplainError as exc:
        if debug:
            raise
        err.print(f"xplain: error: {exc}", highlight=False, markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("xplain: interrupted", highlight=False)
        return ExitCode.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        err.print(
            f"xplain: internal error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
            highlight=False,
            markup=False,
        )
        return ExitCode.FAILURE


def run() -> None:
    sys.exit(main())
