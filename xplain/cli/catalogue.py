"""``xplain methods``, ``xplain metrics`` (list, ``show NAME``) and ``xplain plugins``.

Why a module of its own: the catalogue reads only the plugin registry (no torch import, so these
commands stay fast), and its output is the documentation of every method's algorithm and
defaults that plugins declare.
"""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from .common import (
    load_registry,
)
from .console import out

methods_app = typer.Typer(
    help="List attribution methods, or show one.", invoke_without_command=True
)
metrics_app = typer.Typer(help="List evaluation metrics, or show one.", invoke_without_command=True)


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
    registry = load_registry()
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
    registry = load_registry()
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


def plugins(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List installed plugins, what they provide, and any that failed to load."""
    registry = load_registry()
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
