"""Crash-safe file writing.

Every output xplain produces goes through here so that an interrupted run (Ctrl-C, a crash, a full
disk) never leaves a half-written file behind: the bytes go to a temporary file in the *same*
directory (so the final ``os.replace`` is an atomic rename on one file system), are flushed and
fsync'ed, and only then replace the target.  A reader therefore sees either the old file or the
complete new one, and ``xplain eval`` can trust every file it finds when it resumes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_write", "atomic_open", "append_line", "write_json", "save_npy"]


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
    target.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    tmp = _temp_path(target)
    f = open(tmp, mode.replace("w", "x"), **kwargs)  # "x": never clobber another writer's temp file
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
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
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON (keys in insertion order, trailing newline) atomically.

    Serialisation happens before the file is opened, so an unserialisable object raises without
    touching anything on disk.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, text.encode("utf-8"))


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save ``array`` in ``.npy`` format at exactly ``path`` atomically.

    ``np.save`` appends ".npy" to file names that lack it; saving to a buffer first avoids that
    and the temp-file name.  Object arrays are refused (``allow_pickle=False``): outputs must be
    loadable without unpickling.
    """
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write(path, buf.getvalue())
