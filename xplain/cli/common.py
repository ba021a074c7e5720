"""What the verbs share: global options, the plugin registry, loading a model, checking inputs
and output folders before work starts, and parsing ``--param``-style options.

Why a module of its own: ``explain``, ``eval``, ``fit`` and ``bench`` set up the same way, so a
check added here (a FIFO refused, an unwritable folder) holds for all of them. The mapping of
errors to exit codes lives in :mod:`xplain.cli.app`, the entry point.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape

from ..errors import UsageError
from .console import NoStatus, err

#: the global options of the ``xplain`` callback (``--strict-plugins``, ``--no-plugin``,
#: ``--max-input-pixels``), read by every verb
OPTIONS: dict[str, Any] = {
    "strict": False,
    "blocked": (),
    "max_input_pixels": None,
    "quiet": False,
    "engine": "auto",  # set by the verbs with --engine (explain, eval, bench)
}


def show_progress() -> bool:
    """Progress bars and spinners: on a terminal, unless ``--quiet``."""
    return bool(err.is_terminal and not OPTIONS["quiet"])


def load_registry():
    from ..plugins.registry import get_registry

    registry = get_registry(strict=OPTIONS["strict"], blocked=OPTIONS["blocked"])
    for info in registry.broken():
        err.print(
            f"[yellow]warning:[/] plugin {escape(repr(info.name))} skipped: {escape(info.error or '')}",
            highlight=False,
        )
    return registry


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r} is not key=value")
        params[key.strip()] = value.strip()
    return params


def open_model(
    model_path: Path, device: str, labels: str | None = None, verify: bool | None = None
):
    from ..run.api import load_model

    with (
        err.status(f"loading {model_path.name}…", spinner="dots") if show_progress() else NoStatus()
    ):
        model = load_model(
            model_path,
            device=device,
            labels=labels,
            verify=verify,
            registry=load_registry(),
            max_input_pixels=OPTIONS["max_input_pixels"],
            engine=OPTIONS["engine"],
        )
    if (model.labels_source or "").startswith("imagenet (default"):
        err.print(
            f"labels: ImageNet class names ({model.num_classes} outputs, no sidecar or --labels; "
            "--labels none turns this off)",
            highlight=False,
        )
    return model


def set_up(
    model_path: Path,
    device: str,
    labels: str | None = None,
    *,
    inputs: Sequence[Path] = (),
    data: Path | None = None,
    out_dir: Path | None = None,
    out_flag: str = "--out",
    state_dir: Path | None = None,
    verify: bool | None = None,
):
    """The one set-up of explain / eval / fit / bench, after their names and parameters were
    resolved with ``registry.resolve`` (so a typo fails before anything loads): the inputs
    exist → the model loads → the output folder is usable → fitted state is looked up in
    ``state_dir``. Returns the model."""
    for image in inputs:
        if not image.exists():
            raise input_error(image, "no such file")
        if image.is_dir():
            raise input_error(image, "is a directory, not an image")
    if data is not None and not data.exists():
        raise input_error(data, "no such file or folder")
    model = open_model(model_path, device, labels, verify=verify)
    if out_dir is not None:
        check_out_dir(out_dir, out_flag)
    model.state_dir = state_dir
    return model


def method_list(items: list[str]) -> list[str]:
    """``--method a,b --method c`` -> [a, b, c]; a name given twice is a usage error."""
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    if not names:
        raise UsageError("--method: no method given")
    if len(set(names)) != len(names):
        raise UsageError(
            f"--method: {next(n for n in names if names.count(n) > 1)!r} is given twice"
        )
    return names


def floats(text: str | None, flag: str):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def check_images(images: list[Path]) -> None:
    """Fail fast, before the model loads: a missing image, a FIFO or a device."""
    from ..untrusted import require_regular_file

    for image in images:
        if not image.exists() and not image.is_symlink():
            raise input_error(image, "no such file")
        if image.is_dir():
            continue  # explain accepts folders of images (bench does not: see its own check)
        from ..errors import InputDataError

        require_regular_file(image, InputDataError, "image")


def input_error(path, message):  # noqa: N802 - reads like the exception it builds
    from ..errors import InputDataError

    return InputDataError(message, path=path)


def check_out_dir(folder: Path, flag: str) -> None:
    """Fail with one line (exit 2) before any work if the output folder cannot be used.

    The folder itself is created by the first file written, so a run that fails on its input
    leaves nothing behind, not even an empty folder."""
    from ..untrusted import check_path_length

    check_path_length(folder, UsageError, flag)  # 5,000 characters: one line, not ENAMETOOLONG
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


def names_or_all(text: str, available: dict, kind: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return sorted(available)
    if not names:
        raise UsageError(f"no {kind}s given (a comma-separated list, or 'all')")
    return names


def scoped_params(items: list[str], chosen: list[str], flag: str) -> dict[str, dict[str, str]]:
    """``NAME.KEY=VALUE`` (or ``KEY=VALUE`` when only one NAME is chosen) -> {NAME: {KEY: VALUE}}.

    Method and metric names never contain a dot, so the first dot separates NAME from KEY."""
    params: dict[str, dict[str, str]] = {}
    for key, value in parse_params(items).items():
        name, dot, sub = key.partition(".")
        if not dot:
            if len(chosen) != 1:
                raise UsageError(f"{flag} {key}={value}: say which one, as NAME.{key}={value}")
            name, sub = chosen[0], key
        if name not in chosen:
            raise UsageError(f"{flag} {key}={value}: {name!r} is not among the chosen ones")
        params.setdefault(name, {})[sub] = value
    return params
