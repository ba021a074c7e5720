"""Stage 3 of an evaluation: the records — ``results.jsonl``, one JSON line per (image, method).

Why a module of its own: the file format is the contract between a run, its resume, the shards'
merge (:func:`xplain.run.evaluation.summarize`) and the report (:mod:`xplain.output.report`),
so exactly one module reads and writes it. Appends are flushed and fsynced per batch and a torn
line (disk full) is truncated away; a torn last line of a killed run is cut before the next
append (:func:`repair_tail`); a damaged line is skipped on reading and its work redone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ..fileio import write_failed

RESULTS = "results.jsonl"


def repair_tail(path: Path) -> None:
    """Cut a torn last line (a run killed mid-write) so the next append starts a fresh line."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos = size
        block = 1 << 16
        while pos > 0:  # find the last newline
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                f.truncate(start + i + 1)
                break
            pos = start
        else:
            f.truncate(0)
        f.flush()
        os.fsync(f.fileno())


def read_results(path: Path, damaged: list[int] | None = None):
    """Yield the records of a results file, skipping lines that cannot be used.

    A damaged line — invalid UTF-8, not JSON, nested absurdly deep, a huge integer, not an
    object, a key that is not a string — is skipped and its line number appended to ``damaged``
    (when given), so resume goes on and the caller can report them."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw.decode("utf-8"))
                ok = _well_formed(record)
            except (UnicodeDecodeError, ValueError, RecursionError):
                ok = False
            if ok:
                yield record
            elif damaged is not None:
                damaged.append(number)


def _number(v: Any) -> bool:
    return v is None or (
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    )


def _well_formed(record: Any) -> bool:
    """A results line is used only when every field the summary reads has the right type."""
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("key"), str)
        or not isinstance(record.get("method", ""), str)
        or not isinstance(record.get("error", ""), str)
    ):
        return False
    scores, curves, xs = (
        record.get("scores", {}),
        record.get("curves", {}),
        record.get("curve_x", {}),
    )
    if not isinstance(scores, dict) or not isinstance(curves, dict) or not isinstance(xs, dict):
        return False
    return (
        all(_number(v) for v in scores.values())
        and all(isinstance(c, list) and all(_number(v) for v in c) for c in curves.values())
        and all(isinstance(c, list) and all(_number(v) for v in c) for c in xs.values())
    )


def append_records(path: Path, records: list[dict]) -> None:
    """Append ``records`` as lines, flushed and fsynced; nothing of them is left on failure."""
    if not records:
        return
    text = "".join(json.dumps(r, allow_nan=False, separators=(",", ":")) + "\n" for r in records)
    data = text.encode("utf-8", "backslashreplace")  # undecodable file names as \udcNN escapes
    try:
        with open(path, "ab") as f:
            start = f.tell()
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):  # no torn line left behind (disk full)
                    f.truncate(start)
                raise
    except OSError as e:
        raise write_failed(path, e) from None


def finite_or_none(v: float) -> float | None:
    """A score as a JSON line can hold it: NaN and ±Inf become null."""
    return v if math.isfinite(v) else None
