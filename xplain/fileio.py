"""Crash-safe file writing.

Every output xplain produces goes through here so that an interrupted run (Ctrl-C, a crash, a full
disk) never leaves a half-written file behind: the bytes go to a temporary file in the *same*
directory (so the final ``os.replace`` is an atomic rename on one file system), are flushed and
fsync'ed, and only then replace the target.  A reader therefore sees either the old file or the
complete new one, and ``xplain eval`` can trust every file it finds when it resumes.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import math
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import UsageError
from .untrusted import path_text

__all__ = [
    "atomic_write",
    "atomic_open",
    "atomic_group",
    "append_line",
    "write_json",
    "save_npy",
    "json_ready",
    "write_failed",
]


def write_failed(target: object, err: OSError) -> UsageError:
    """The one-line error for an output that cannot be written (disk full, read-only, quota):
    exit 2, naming the file, like an unusable ``--out``."""
    reason = err.strerror or type(err).__name__
    return UsageError(f"cannot write the file: {reason}", path=path_text(target))


class _Group:
    """Files written to temp names now and renamed into place together by :func:`atomic_group`."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []

    def add(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(target)
        self.pending.append((tmp, target))
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def commit(self) -> None:
        done: list[Path] = []
        try:
            for tmp, target in self.pending:
                os.replace(tmp, target)
                done.append(target)
        except BaseException:
            for target in done:  # all or none: undo the renames that happened
                with contextlib.suppress(OSError):
                    os.unlink(target)
            raise
        for directory in {target.parent for _, target in self.pending}:
            _fsync_dir(directory)
        self.pending = []

    def abort(self) -> None:
        for tmp, _ in self.pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.pending = []


_group: contextvars.ContextVar[_Group | None] = contextvars.ContextVar(
    "xplain_atomic_group", default=None
)


@contextlib.contextmanager
def atomic_group() -> Iterator[None]:
    """Every :func:`atomic_write` inside the block lands together or not at all.

    Each file goes to its own temp name (fsynced) as it is written; only when the block completes
    are they all renamed into place. An exception — a full disk on the third file, Ctrl-C — removes
    the temp files, so ``explain`` leaves either all of an image's outputs (npy, PNGs, extras, JSON)
    or none of them."""
    group = _Group()
    token = _group.set(group)
    try:
        yield
        try:
            group.commit()
        except OSError as e:
            raise write_failed(e.filename or group.pending[0][1], e) from None
    except BaseException:
        group.abort()
        raise
    finally:
        _group.reset(token)


def _temp_path(target: Path) -> Path:
    # Hidden (leading dot) so globbing for outputs never picks up a leftover, and a random suffix so
    # two writers of the same target never share a temp file.
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort (not all platforms can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Yield a file object whose contents replace ``path`` only if the ``with`` block completes.

    ``mode`` must be a write mode ("w"/"wb"; "x" and "+" make no sense for a fresh temp file).
    Extra keyword arguments (``encoding``, ``newline``) go to :func:`open`; text mode defaults
    to UTF-8 so output does not depend on the locale.  On any exception — ``KeyboardInterrupt``
    included — the temp file is deleted and the target is left untouched.
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_open supports only write modes 'w', 'wt' and 'wb', not {mode!r}")
    target = Path(path)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    tmp = _temp_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # "x": never clobber another writer's temp file; closed by the ``with`` below
        f = open(tmp, mode.replace("w", "x"), **kwargs)  # noqa: SIM115
    except OSError as e:
        raise write_failed(target, e) from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:  # a full disk, a quota: one line naming the file, nothing half-written
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_failed(target, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`); inside
    :func:`atomic_group` the rename waits for the group."""
    group = _group.get()
    if group is not None:
        try:
            group.add(Path(path), data)
        except OSError as e:
            raise write_failed(path, e) from None
        return
    with atomic_open(path, "wb") as f:
        f.write(data)


def append_line(path: str | os.PathLike[str], text: str) -> None:
    """Append ``text`` plus a newline and fsync, so a line that was reported written survives a crash.

    JSONL writers call this once per record: an interrupted run loses at most the line being
    written, and a reader should skip a final line without a newline.  ``text`` must not contain a
    newline itself, or one record would become two lines.
    """
    if "\n" in text or "\r" in text:
        raise ValueError("append_line: text must be a single line")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8", newline="\n") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_failed(target, e) from None


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON (keys in insertion order, trailing newline) atomically.

    Serialisation happens before the file is opened, so an unserialisable object raises without
    touching anything on disk. NaN and ±inf become ``null`` (:func:`json_ready`): the file is
    always valid JSON. Undecodable file names (lone surrogates) are written as ``\\udcNN``
    escapes, which JSON readers accept.
    """
    text = json.dumps(json_ready(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write(path, text.encode("utf-8", "backslashreplace"))


def json_ready(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    return obj


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save ``array`` in ``.npy`` format at exactly ``path`` atomically.

    ``np.save`` appends ".npy" to file names that lack it; saving to a buffer first avoids that
    and the temp-file name.  Object arrays are refused (``allow_pickle=False``): outputs must be
    loadable without unpickling.
    """
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write(path, buf.getvalue())
