"""The ``xplain`` command line: a thin shell over the Python API.

This module is the entry point: the Typer app with its global options, the verbs registered
from their modules (:mod:`~xplain.cli.catalogue`, :mod:`~xplain.cli.inspect_model`,
:mod:`~xplain.cli.explain`, :mod:`~xplain.cli.fit`, :mod:`~xplain.cli.bench`,
:mod:`~xplain.cli.evaluate`; shared set-up in :mod:`~xplain.cli.common`), and :func:`main`, the
one place where an error becomes one line on stderr and an :class:`ExitCode`.

Importing this module must not import torch: ``xplain --help``, ``xplain methods`` and
``xplain plugins`` stay fast. Commands that need torch import it inside their bodies.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import typer

try:  # typer ≥ 0.20 vendors click; older typer uses the click package
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc  # type: ignore[no-redef]

from ..errors import ExitCode, XplainError
from ..run.allocator import tune_allocator
from . import bench, catalogue, evaluate, explain, fit, inspect_model
from .common import OPTIONS
from .console import err, out

app = typer.Typer(
    name="xplain",
    help="Explain the decisions of ONNX image classifiers (MIP-IN, InputIBA, TR-GBP and baselines).",
    no_args_is_help=True,
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(catalogue.methods_app, name="methods")
app.add_typer(catalogue.metrics_app, name="metrics")


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
    OPTIONS["strict"] = strict_plugins
    OPTIONS["blocked"] = tuple(no_plugin)
    OPTIONS["max_input_pixels"] = max_input_pixels


# the verbs, in the order `xplain --help` lists them
app.command()(catalogue.plugins)
app.command()(inspect_model.inspect)
app.command()(explain.explain)
app.command()(fit.fit)
app.command()(bench.bench)
app.command("eval")(evaluate.eval_command)
app.command("eval-summarize", hidden=True)(evaluate.eval_summarize_command)


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
    from ..plugins.boundary import exit_process

    exit_process(main())  # a plugin's leftover thread does not keep the process alive
