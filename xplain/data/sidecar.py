"""A model's sidecar file (``MODEL.json``: preprocessing and labels) and class-label files.

The sidecar and label files are untrusted input read beside the model; their size limits, key
checks and confinement (a labels file must sit inside the model's folder) live in one place.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputDataError
from ..untrusted import confined_file, parse_json, require_regular_file
from .decode import PathLike

SIDECAR_KEYS = ("preset", "resize", "crop", "mean", "std", "labels")


class Sidecar(dict):
    """A sidecar's checked values; ``path`` lets later errors (bad preprocessing values) name the file."""

    def __init__(self, values: dict, path: Path):
        super().__init__(values)
        self.path = path


_MAX_SIDECAR_BYTES = 16 * 2**20
_MAX_LABELS_BYTES = 64 * 2**20


def read_sidecar(model_path: PathLike) -> dict[str, Any]:
    """Read ``<model>.json`` (e.g. ``model.onnx.json``) next to a model, or return ``{}``.

    The sidecar lets a model ship its preprocessing and labels so users need no flags.  Types are
    checked here so a typo fails at once, naming the file; a relative "labels" path is resolved
    against the sidecar's folder (stored as an absolute path), because that is where its author
    put it, not wherever the user runs from.  "labels": "imagenet" means the built-in names.
    """
    path = Path(str(model_path) + ".json")
    if not path.exists() and not path.is_symlink():
        return Sidecar({}, path)
    size = require_regular_file(path, InputDataError, "sidecar")
    if size > _MAX_SIDECAR_BYTES:
        raise InputDataError(
            f"the sidecar is larger than {_MAX_SIDECAR_BYTES // 2**20} MiB", path=path
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputDataError(f"cannot read the sidecar: {e.strerror}", path=path) from e
    data = parse_json(raw, path, InputDataError, "JSON in the sidecar")
    if not isinstance(data, dict):
        raise InputDataError("the sidecar must be a JSON object", path=path)
    unknown = sorted(set(data) - set(SIDECAR_KEYS))
    if unknown:
        raise InputDataError(
            f"unknown sidecar key(s) {', '.join(unknown)}; allowed: {', '.join(SIDECAR_KEYS)}",
            path=path,
        )

    def bad(key: str, expected: str) -> InputDataError:
        return InputDataError(
            f"sidecar key {key!r} must be {expected}, got {data[key]!r}", path=path
        )

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "preset" and not isinstance(value, str):
            raise bad(key, "a string")
        if key == "resize" and not (value is None or (is_int(value) and 0 <= value <= 65536)):
            raise bad(key, "a non-negative integer (at most 65536) or null")
        if key == "crop" and not (
            (is_int(value) and 0 < value <= 65536)
            or (
                isinstance(value, list)
                and len(value) == 2
                and all(is_int(v) and 0 < v <= 65536 for v in value)
            )
        ):
            raise bad(key, "a positive integer or [H, W]")
        if key in ("mean", "std") and not (
            is_num(value)
            or (isinstance(value, list) and 0 < len(value) <= 4 and all(is_num(v) for v in value))
        ):
            raise bad(key, "a number or a list of numbers")
        if key == "labels":
            if isinstance(value, str):
                if value != "imagenet":  # confined like external data: only files beside the model
                    value = str(
                        confined_file(path.parent, value, InputDataError, "labels file", path)
                    )
            elif isinstance(value, list):
                if not value or not all(isinstance(v, str) for v in value):
                    raise bad(key, 'a file name, "imagenet" or a list of strings')
            elif isinstance(value, dict):
                value = _labels_from_json(value, path)
            else:
                raise bad(key, 'a file name, "imagenet" or a list of strings')
        out[key] = value
    return Sidecar(out, path)


@functools.lru_cache(maxsize=1)
def _imagenet_labels() -> tuple[str, ...]:
    text = (importlib.resources.files("xplain") / "data" / "imagenet_classes.txt").read_text(
        encoding="utf-8"
    )
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (a fresh list each call).

    Shipped as data (generated once from torchvision's metadata) so that no runtime code needs
    torchvision just to name a class.
    """
    return list(_imagenet_labels())


def load_labels(
    spec: str | os.PathLike[str] | Sequence[str], base_dir: PathLike | None = None
) -> list[str]:
    """Class names from a list, the string "imagenet", or a text/JSON file.

    Text files hold one label per line (whitespace stripped; trailing empty lines ignored; an
    empty line in the middle is an error because it would silently name a class "").  JSON files
    (``.json``) hold a list of names or an object mapping "0".."N-1" to names; a value may also be
    an ``[id, name]`` pair as in Keras' ``imagenet_class_index.json`` (the last element is used).
    Relative paths are resolved against ``base_dir`` when given.
    """
    if isinstance(spec, (list, tuple)):
        if not spec or not all(isinstance(v, str) for v in spec):
            raise InputDataError("labels must be a non-empty list of strings")
        return list(spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise InputDataError(f'labels must be a file name, "imagenet" or a list, got {spec!r}')
    if isinstance(spec, str) and spec == "imagenet":
        return imagenet_labels()
    path = Path(spec)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    size = require_regular_file(path, InputDataError, "labels file")
    if size > _MAX_LABELS_BYTES:
        raise InputDataError(
            f"the labels file is larger than {_MAX_LABELS_BYTES // 2**20} MiB", path=path
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputDataError(f"cannot read the labels file: {e}", path=path) from e
    if path.suffix.lower() == ".json":
        return _labels_from_json(parse_json(text, path, InputDataError, "JSON"), path)
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise InputDataError("the labels file is empty", path=path)
    if "" in lines:
        raise InputDataError(f"line {lines.index('') + 1} is empty (one label per line)", path=path)
    return lines


def _labels_from_json(data: Any, path: PathLike) -> list[str]:
    def name(v: Any) -> str | None:
        if isinstance(v, list) and v:
            v = v[-1]
        return v.strip() if isinstance(v, str) and v.strip() else None

    if isinstance(data, list):
        names = [name(v) for v in data]
    elif isinstance(data, dict):
        try:
            if any(
                len(k) > 12 for k in data
            ):  # int() of a 5000-digit key raises, and no model has 10^12 classes
                raise ValueError
            index = {int(k): v for k, v in data.items()}
        except ValueError:
            raise InputDataError(
                'label keys must be class indices ("0", "1", ...)', path=path
            ) from None
        if sorted(index) != list(range(len(index))):
            raise InputDataError(
                f"label indices must be 0..{len(index) - 1} without gaps", path=path
            )
        names = [name(index[i]) for i in range(len(index))]
    else:
        raise InputDataError("labels JSON must be a list or an object of index -> name", path=path)
    if not names:
        raise InputDataError("no labels found", path=path)
    if None in names:
        raise InputDataError(f"label {names.index(None)} is not a non-empty string", path=path)
    return names  # type: ignore[return-value]
