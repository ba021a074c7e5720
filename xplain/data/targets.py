"""Turning a ``--target`` value (an index, a label, ``top5``) into class indices.

Separate from label *files* (:mod:`.sidecar`): this is the matching of user text against the
labels a model has, with suggestions for near misses.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from ..errors import UsageError

_TOPK = re.compile(r"top(\d+)", re.IGNORECASE)
_INT = re.compile(r"[+-]?\d+")


def resolve_target(spec: str, labels: list[str] | None, num_classes: int) -> list[int] | str:
    """Turn a ``--target`` value into class indices, or a "topK" string for the caller.

    ``top1``/``top5``/``topK`` are returned normalised (lower case) because they depend on the
    predictions, which only the caller has.  Otherwise the spec is a class index, a label name
    (exact match first, then case-insensitive), or several of those separated by commas; the
    whole spec is tried as one label first so names that contain commas still work.
    """
    text = str(spec).strip()
    if not text:
        raise UsageError("empty target; use top1, top5, a class index or a label name")
    m = _TOPK.fullmatch(text)
    if m:
        k = int(m.group(1))
        if k < 1:
            raise UsageError(f"target {text!r}: k must be at least 1")
        return f"top{min(k, num_classes)}"  # top5 of a 4-class model is every class
    single = _resolve_one(text, labels, num_classes, raise_error=False)
    if single is not None:
        return [single]
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1:
        if any(_TOPK.fullmatch(p) for p in parts):
            raise UsageError(f"target {text!r}: topK cannot be combined with other targets")
        return [_resolve_one(p, labels, num_classes, raise_error=True) for p in parts]  # type: ignore[misc]
    _resolve_one(text, labels, num_classes, raise_error=True)
    raise AssertionError("unreachable")  # pragma: no cover


def match_label(text: str, names: Sequence[str] | None) -> int | list[int] | None:
    """The one label matcher (``--target``, manifests, label files, box names): ``text`` as a
    class index (an int, not range-checked), else the index of the class name it equals (exact
    first, then case-insensitive), a list of indices when it names several, None when none."""
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text)
    if not names:
        return None
    hits = [i for i, n in enumerate(names) if n == text] or [
        i for i, n in enumerate(names) if n.casefold() == text.casefold()
    ]
    return hits[0] if len(hits) == 1 else hits or None


def _resolve_one(
    text: str, labels: list[str] | None, num_classes: int, *, raise_error: bool
) -> int | None:
    if _INT.fullmatch(text):
        if len(text) > 20:  # int() refuses more than 4300 digits; no class index needs 20
            raise UsageError(
                f"target index {text[:20]}… ({len(text)} digits) is out of range; the model has "
                f"{num_classes} classes"
            )
        i = int(text)
        if not 0 <= i < num_classes:
            raise UsageError(
                f"target index {i} is out of range; the model has {num_classes} "
                f"classes (0..{num_classes - 1})"
            )
        return i
    found = match_label(text, labels)
    if isinstance(found, int):
        return _check_index(found, text, num_classes)
    if found:
        raise UsageError(
            f"target {text!r} is ambiguous: it names classes "
            f"{', '.join(map(str, found))}; use an index"
        )
    if not raise_error:
        return None
    if not labels:
        raise UsageError(
            f"unknown target {text!r}: no class labels are known, so use a class "
            f"index (0..{num_classes - 1}), top1 or top5"
        )
    close = difflib.get_close_matches(text, labels, n=5, cutoff=0.6)
    if not close:  # case differences defeat get_close_matches; retry folded
        folded = {lab.casefold(): lab for lab in labels}
        close = [folded[c] for c in difflib.get_close_matches(text.casefold(), list(folded), n=5)]
    hint = (
        ("did you mean: " + ", ".join(repr(c) for c in close))
        if close
        else f"use top1, top5, a class index 0..{num_classes - 1} or a label name"
    )
    raise UsageError(f"unknown target {text!r}", hint=hint)


def _check_index(i: int, text: str, num_classes: int) -> int:
    if i >= num_classes:
        raise UsageError(
            f"target {text!r} is label {i}, but the model has only {num_classes} "
            "classes (do the labels match the model?)"
        )
    return i
