"""``xplain eval MODEL DATA`` and ``xplain eval summarize DIR``: the evaluation verbs, and the
summary tables they print.

Why a module of its own: one verb per module (named ``evaluate``, not ``eval``, which is a
builtin); the work is :func:`xplain.run.evaluation.evaluate` and ``summarize``.
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
    check_out_dir,
    input_error,
    load_registry,
    names_or_all,
    open_model,
    scoped_params,
)
from .console import err, out
from .engine_option import engine_option


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
    engine: str = engine_option(),
):
    """Evaluate methods with metrics on a data set: results.jsonl, summary.json/.csv, a table, plots and
    report.html.

    `xplain eval summarize DIR` merges the results files of DIR (the shards of a run) into the
    summary and reports images no shard has done."""
    OPTIONS["engine"] = engine
    registry = load_registry()
    chosen_protocol = None
    if protocol is not None:  # issue 23: the protocol names the methods, metrics and settings
        from ..run import protocols

        chosen_protocol, method_names, metric_names, proto_mp, proto_xp = protocols.cli_plan(
            protocol, methods, metrics, registry
        )
    else:
        method_names = names_or_all(methods, registry.methods, "method")
        metric_names = names_or_all(metrics, registry.metrics, "metric")
    registry.resolve("method", method_names)  # fail fast on a bad name, then on bad parameters
    registry.resolve("metric", metric_names)
    method_params = scoped_params(param, method_names, "--param")
    metric_params = scoped_params(metric_param, metric_names, "--metric-param")
    if chosen_protocol is not None:
        method_params = protocols.merged(proto_mp, method_params)
        metric_params = protocols.merged(proto_xp, metric_params)
    from ..plugins.registry import validate_params

    for n in method_names:
        validate_params(registry.method(n).params, method_params.get(n, {}), f"method {n!r}")
    for n in metric_names:
        validate_params(registry.metric(n).params, metric_params.get(n, {}), f"metric {n!r}")
    if not data.exists():
        raise input_error(data, "no such file or folder")
    if worker_kind not in ("thread", "process"):
        raise UsageError(f"--worker-kind {worker_kind!r}: expected thread or process")
    from ..run.shards import parse_shard

    chosen_shard = parse_shard(shard)
    ray = None
    if ray_address is not None:
        ray = {"address": ray_address, "workers": ray_workers, "gpus_per_worker": gpus_per_worker}
    model = open_model(model_path, device, class_names)
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
    check_out_dir(out_dir, "--out")
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


def eval_summarize_command(
    out_dir: Path = typer.Argument(
        ..., metavar="DIR", help="The --out folder of `xplain eval` (its shards)."
    ),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write DIR/plots/*.png."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON to stdout."),
):
    """Merge every results file in DIR into summary.json/csv, the table and plots (`xplain eval summarize DIR`)."""
    from ..run.evaluation import summarize

    summary = summarize(out_dir, plots=plots, registry=load_registry())
    from ..run.protocols import finish, ranking_lines

    ranked = finish(out_dir, load_registry())  # a --protocol run: its ranking over all shards
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
    from ..run.guards import fail_if_invalid

    fail_if_invalid(summary)  # a method/metric that changed the model or inputs: exit 4


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
