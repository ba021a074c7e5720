"""Remembering that a model file was verified, so the next ``explain`` of it starts fast.

Why a module of its own: verification (the converted graph against onnxruntime on random
inputs, batch of 1 against batch of 2) was ~10.8 s of every ``explain`` of EfficientNet-Lite0,
paid again on every call for the same file.  The file's SHA-256 digest (already computed by
``read_model``) identifies it, so a changed file has another digest and is verified again.  One
small JSON file per digest records the outcome together with the versions of xplain, torch,
onnx, onnx2torch and onnxruntime that produced it (another version: verified again, since a
converter change can change the graph).  A remembered file also skips onnx's structural
checker (0.3 s of serialising Lite0 again): those bytes passed it under that onnx version.

Cache files are untrusted input (another user or a program may have written them): at most
4 KiB, regular files only, parsed with :func:`xplain.untrusted.parse_json`, every field
type-checked; anything that does not match is ignored (the model is verified again and the
entry rewritten), never an error.  The folder is ``$XPLAIN_CACHE_DIR``, else
``$XDG_CACHE_HOME/xplain``, else ``~/.cache/xplain``; ``XPLAIN_VERIFY`` = ``always`` /
``never`` / ``auto`` (default) sets what ``--verify``/``--no-verify`` choose on the command line.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
from pathlib import Path

from ..errors import UsageError
from ..fileio import atomic_write

__all__ = ["cache_dir", "verify_mode", "recall", "remember"]

MAX_BYTES = 4096
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_DISTS = ("xplain", "torch", "onnx", "onnx2torch", "onnxruntime")


def cache_dir() -> Path:
    """Where verification outcomes are kept (see the module docstring)."""
    if env := os.environ.get("XPLAIN_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xplain"


def verify_mode(verify: bool | None) -> bool | None:
    """``True`` (always verify), ``False`` (never) or ``None`` (verify unless remembered): the
    explicit choice, else ``XPLAIN_VERIFY``."""
    if verify is not None:
        return bool(verify)
    env = os.environ.get("XPLAIN_VERIFY", "auto").strip().lower()
    modes = {"always": True, "1": True, "never": False, "0": False, "auto": None, "": None}
    if env not in modes:
        raise UsageError(f"XPLAIN_VERIFY must be always, never or auto, got {env[:40]!r}")
    return modes[env]


def _versions() -> dict[str, str]:
    out = {}
    for dist in _DISTS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


class _Unusable(Exception):
    """A cache file that cannot be used (the model is verified again)."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)


def _entry(digest: str) -> Path | None:
    if not _DIGEST.match(str(digest)):
        return None
    return cache_dir() / "verified" / f"{digest}.json"


def recall(digest: str) -> dict | None:
    """The remembered outcome for ``digest`` under the current versions, or ``None``."""
    from ..untrusted import parse_json

    path = _entry(digest)
    if path is None:
        return None
    try:
        st = path.stat()
        if not path.is_file() or st.st_size > MAX_BYTES:
            return None
        data = parse_json(path.read_bytes(), path, _Unusable, "verification cache")
    except (OSError, _Unusable):
        return None
    if not isinstance(data, dict) or data.get("digest") != digest:
        return None
    if data.get("versions") != _versions():
        return None
    diffs = [data.get("max_abs_diff"), data.get("max_rel_diff")]
    if not all(isinstance(d, (int, float)) and math.isfinite(d) and d >= 0 for d in diffs):
        return None
    if not isinstance(data.get("batch_checked"), bool):
        return None
    return data


def remember(digest: str, max_abs_diff, max_rel_diff, batch_checked: bool) -> None:
    """Record a successful verification; a folder that cannot be written is skipped silently
    (the cache only saves time)."""
    path = _entry(digest)
    if path is None or max_abs_diff is None or max_rel_diff is None:
        return
    record = {
        "digest": digest,
        "versions": _versions(),
        "max_abs_diff": float(max_abs_diff),
        "max_rel_diff": float(max_rel_diff),
        "batch_checked": bool(batch_checked),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(record).encode())
    except OSError:
        pass
