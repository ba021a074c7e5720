"""Reading evaluation data: images, their labels and their bounding boxes.

One reader for every command that streams a data set (``xplain eval``, fitting, MIP-IN's
helpers), so "a folder", "class sub-folders" and "a CSV manifest" mean the same everywhere.

Reading never loads pixels: a :class:`Sample` names the file, so memory does not grow with the
data set and a broken image surfaces only when it is loaded (``eval`` records it and goes on).
Problems with a single manifest row (missing image, unknown label, unreadable box file) are
recorded in ``Sample.error`` for the same reason; only a manifest that cannot be read at all is
an :class:`~xplain.errors.InputDataError`.

Box convention: coordinates are kept exactly as the annotation writes them, in the ORIGINAL
image's pixels, Pascal VOC style — 1-based and inclusive, so a box covers the 0-based array
slice ``img[ymin-1:ymax, xmin-1:xmax]``, i.e. the continuous interval ``[xmin-1, xmax)``.
JSON box files use the same convention (see :func:`read_boxes_json`).
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import dataclasses
import functools
import io
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputDataError
from ..untrusted import parse_json, path_text, printable, require_regular_file
from .targets import match_label

if TYPE_CHECKING:  # the data layer itself needs no torch
    from ..graph.model import Model

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_MAX_TEXT_BYTES = 64 * 1024 * 1024  # a manifest/label/box file larger than this is refused
_INT = re.compile(r"[+-]?\d+")


@dataclasses.dataclass(frozen=True)
class Box:
    """An annotated box in ORIGINAL image pixels (VOC: 1-based, inclusive)."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    label: int | None  #: class index when ``name`` names a known class
    name: str  #: class name as written in the annotation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Sample:
    path: Path  #: the image file
    label: int | None  #: class index into the model's logits; None when unknown
    boxes: tuple[Box, ...] | None  #: None = not annotated; () = annotated but empty
    error: str | None = None  #: the row itself is bad; eval records it and skips the sample


# ---------------------------------------------------------------------------------------------
# helpers


def _read_text(path: Path, what: str) -> str:
    size = require_regular_file(path, InputDataError, what)  # FIFOs and devices refused unopened
    if size > _MAX_TEXT_BYTES:
        raise InputDataError(f"{what} is larger than {_MAX_TEXT_BYTES // 2**20} MiB", path=path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputDataError(f"cannot read the {what}: not UTF-8 text", path=path) from None
    except OSError as e:
        raise InputDataError(f"cannot read the {what}: {e.strerror}", path=path) from None
    if "\x00" in text:
        raise InputDataError(
            f"the {what} contains a NUL byte (line {text[: text.index(chr(0))].count(chr(10)) + 1}); "
            "not a text file",
            path=path,
        )
    return text


def _row_file_problem(path: Path) -> str | None:
    """Why a manifest row's file cannot be used, or None: missing, a folder, not a regular file."""
    try:
        require_regular_file(path, InputDataError, "file")
    except InputDataError as e:
        return e.message
    return None


def resolve_label(text: str, class_names: list[str] | None) -> int:
    """A label written as a class index or a class name (exact, then case-insensitive).

    Raises ``ValueError`` with a short reason; callers turn it into a row error or an
    ``InputDataError`` naming their file.
    """
    text = text.strip()
    if _INT.fullmatch(text):
        if len(text) > 20:  # int() refuses 4300+ digits; no class index needs 20
            raise ValueError(f"label index {text[:20]}… ({len(text)} digits) is out of range")
        i = int(text)
        if i < 0 or (class_names is not None and i >= len(class_names)):
            raise ValueError(
                f"label index {i} is out of range"
                + (f" (0..{len(class_names) - 1})" if class_names else "")
            )
        return i
    found = match_label(text, class_names)
    if isinstance(found, int):
        return found
    if found:
        raise ValueError(f"label {text!r} is ambiguous (classes {found})")
    wnid = _wordnet_index(text)
    if wnid is not None and (not class_names or len(class_names) == len(imagenet_wnids())):
        return wnid
    if class_names:
        raise ValueError(f"unknown label {text!r}")
    raise ValueError(f"label {text!r} is not an index and the model has no class names")


_WNID = re.compile(r"n\d{8}")


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in class order (sorted, as torchvision's and timm's heads)."""
    text = (Path(__file__).parent / "imagenet_wnids.txt").read_text(encoding="ascii")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _wordnet_index(text: str) -> int | None:
    """The ImageNet-1k class of a WordNet id (``n01440764`` -> 0), or None.

    ImageNet's folders and its validation boxes name classes by WordNet id; a 1000-class model
    (or one without class names) reads them in the standard order."""
    if not _WNID.fullmatch(text):
        return None
    wnids = imagenet_wnids()
    i = bisect.bisect_left(wnids, text)
    return i if i < len(wnids) and wnids[i] == text else None


def _box_label(name: str, class_names: list[str] | None) -> int | None:
    try:
        return resolve_label(name, class_names)
    except ValueError:
        return None


def read_voc(path: Path, class_names: list[str] | None = None) -> tuple[Box, ...]:
    """The boxes of one Pascal VOC XML file (``()`` when it has no ``<object>``)."""
    text = _read_text(path, "box annotation")
    # ElementTree expands internal entities; refusing DTDs rules out entity-expansion bombs.
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise InputDataError("XML with a DOCTYPE/ENTITY declaration is refused", path=path)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise InputDataError(f"invalid XML: {e}", path=path) from e
    boxes = []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        try:
            if bb is None:
                raise ValueError("no <bndbox>")
            xmin, ymin, xmax, ymax = (
                float((bb.findtext(t) or "").strip()) for t in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError as e:
            raise InputDataError(f"object {k + 1}: bad box ({e})", path=path) from None
        _check_box((xmin, ymin, xmax, ymax), path, k)
        boxes.append(Box(xmin, ymin, xmax, ymax, _box_label(name, class_names), name))
    return tuple(boxes)


def _check_box(coords, path, k) -> None:
    xmin, ymin, xmax, ymax = coords
    if not all(v == v and abs(v) < 1e9 for v in coords):
        raise InputDataError(f"object {k + 1}: box coordinates must be finite", path=path)
    if xmax < xmin or ymax < ymin:
        raise InputDataError(f"object {k + 1}: box has xmax < xmin or ymax < ymin", path=path)


def _json_box(entry: Any, path: Path, k: int, class_names: list[str] | None) -> Box:
    if isinstance(entry, dict):
        try:
            coords = tuple(float(entry[t]) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (KeyError, TypeError, ValueError, OverflowError):
            raise InputDataError(
                f"box {k + 1}: needs numeric xmin, ymin, xmax, ymax", path=path
            ) from None
        raw = entry.get("label", entry.get("name", ""))
        name = str(raw) if raw is not None else ""
    elif isinstance(entry, (list, tuple)) and len(entry) in (4, 5):
        try:
            coords = tuple(float(v) for v in entry[:4])
        except (TypeError, ValueError, OverflowError):
            raise InputDataError(f"box {k + 1}: coordinates must be numbers", path=path) from None
        name = str(entry[4]) if len(entry) == 5 else ""
    else:
        raise InputDataError(
            f"box {k + 1}: expected an object or [xmin, ymin, xmax, ymax(, name)]", path=path
        )
    _check_box(coords, path, k)
    xmin, ymin, xmax, ymax = coords
    return Box(
        xmin, ymin, xmax, ymax, label=_box_label(name, class_names) if name else None, name=name
    )


def read_boxes_json(path: Path, class_names: list[str] | None = None) -> dict[str, tuple[Box, ...]]:
    """Boxes for many images from one JSON file.

    Format: ``{"IMAGE": [BOX, ...], ...}`` where IMAGE is the image's path relative to the data
    folder, its file name or its stem, and BOX is ``{"xmin":…, "ymin":…, "xmax":…, "ymax":…,
    "label": NAME_OR_INDEX}`` or ``[xmin, ymin, xmax, ymax(, NAME)]`` — VOC convention.
    """
    data = parse_json(_read_text(path, "box file"), path, InputDataError, "JSON")
    if not isinstance(data, dict):
        raise InputDataError("box JSON must be an object mapping image -> list of boxes", path=path)
    out = {}
    for key, entries in data.items():
        if not isinstance(entries, list):
            raise InputDataError(f"{key!r}: expected a list of boxes", path=path)
        out[str(key)] = tuple(_json_box(e, path, k, class_names) for k, e in enumerate(entries))
    return out


def _box_file(path: Path, class_names: list[str] | None, image: Path) -> tuple[Box, ...]:
    """One image's box file from a manifest: VOC XML or JSON (a list, or a dict keyed by image)."""
    if path.suffix.lower() == ".json":
        data = parse_json(_read_text(path, "box file"), path, InputDataError, "JSON")
        if isinstance(data, list):
            return tuple(_json_box(e, path, k, class_names) for k, e in enumerate(data))
        table = read_boxes_json(path, class_names)
        found = _lookup(table, image, image.parent)
        return found if found is not None else ()
    return read_voc(path, class_names)


def _keys(image: Path, root: Path) -> list[str]:
    keys = []
    with contextlib.suppress(ValueError):  # not under root: match by name only
        keys.append(image.relative_to(root).as_posix())
    keys += [image.name, image.stem]
    return keys


def _lookup(table: dict, image: Path, root: Path):
    for k in _keys(image, root):
        if k in table:
            return table[k]
    return None


def read_labels_file(path: Path, class_names: list[str] | None) -> dict[str, int]:
    """``image -> label`` from a CSV (``path,label`` with or without header) or whitespace TXT.

    Keys are compared with the image's path relative to the data folder, its name, or its stem.
    """
    text = _read_text(path, "labels file")
    out: dict[str, int] = {}
    if path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
        if rows and [c.strip().lower() for c in rows[0][:2]] in (
            ["path", "label"],
            ["image", "label"],
        ):
            rows = rows[1:]
        start = 2
    else:
        rows = [line.rsplit(None, 1) for line in text.splitlines() if line.strip()]
        start = 1
    for n, row in enumerate(rows, start):
        if len(row) < 2:
            raise InputDataError(f"line {n}: expected IMAGE and LABEL", path=path)
        try:
            out[row[0].strip()] = resolve_label(row[1], class_names)
        except ValueError as e:
            raise InputDataError(f"line {n}: {e}", path=path) from None
    return out


# ---------------------------------------------------------------------------------------------
# the layouts


def _check_repeat(
    csv_path: Path, line_no: int, rel: str, text: str, first: tuple, class_names
) -> None:
    """A row naming an image listed before: the same label is a harmless repeat (skipped),
    another label is an error — an image has one label, and which row wins would be arbitrary."""
    line0, label0, text0 = first
    try:
        again = label0 if text == text0 else resolve_label(text, class_names) if text else None
    except ValueError:
        again = None
    if again != label0:
        raise InputDataError(
            f"line {line_no} lists {printable(rel)} again with label {printable(text or 'none')} "
            f"(line {line0}: label {'none' if label0 is None else label0}); an image has one label",
            path=csv_path,
        )


def _read_manifest(csv_path: Path, class_names: list[str] | None) -> list[Sample]:
    text = _read_text(csv_path, "manifest")
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise InputDataError("the manifest is empty", path=csv_path) from None
    except csv.Error as e:
        raise InputDataError(f"invalid CSV: {e}", path=csv_path) from None
    if "path" not in header:
        raise InputDataError(
            "the manifest needs a header with a 'path' column (path,label[,boxes])", path=csv_path
        )
    col: dict[str, int] = {
        name: header.index(name) for name in ("path", "label", "boxes") if name in header
    }
    base = csv_path.parent
    samples = []
    base_text = str(base)
    first_line: dict[
        str, tuple[int, int | None, str]
    ] = {}  # image -> (line, label) of its first row
    repeats: list[tuple[int, int]] = []  # (line, first line) of rows dropped as duplicates
    try:
        for line_no, row in enumerate(reader, 2):
            if not row or not any(c.strip() for c in row):
                continue

            def cell(name: str, row: list[str] = row) -> str:
                i = col.get(name)
                return row[i].strip() if i is not None and i < len(row) else ""

            rel = cell("path")
            key = os.path.normpath(os.path.join(base_text, rel)) if rel else ""
            if rel and key in first_line:  # the same image again: never scored twice
                _check_repeat(csv_path, line_no, rel, cell("label"), first_line[key], class_names)
                repeats.append((line_no, first_line[key][0]))
                continue
            path = base / rel if rel else base / f"<line {line_no}>"
            label: int | None = None
            boxes: tuple[Box, ...] | None = None
            errors = []
            if not rel:
                errors.append(f"line {line_no}: empty path")
            elif path.is_dir():
                errors.append(f"line {line_no}: a folder, not an image: {rel}")
            elif (problem := _row_file_problem(path)) is not None:
                errors.append(f"line {line_no}: image {problem.replace('file ', '', 1)}: {rel}")
            if cell("label"):
                try:
                    label = resolve_label(cell("label"), class_names)
                except ValueError as e:
                    errors.append(f"line {line_no}: {e}")
            if cell("boxes"):
                try:
                    boxes = _box_file(base / cell("boxes"), class_names, path)
                except InputDataError as e:
                    errors.append(f"line {line_no}: {e}")
            samples.append(Sample(path, label, boxes, "; ".join(errors) or None))
            if rel:
                first_line[key] = (line_no, label, cell("label"))
    except csv.Error as e:
        raise InputDataError(f"invalid CSV: {e}", path=csv_path) from None
    if repeats:
        import warnings

        line, line0 = repeats[0]
        warnings.warn(
            f"{path_text(csv_path)}: {len(repeats)} duplicate row(s) skipped, each image is "
            f"scored once (first: line {line} repeats line {line0})",
            stacklevel=3,
        )
    if not samples:
        raise InputDataError("the manifest lists no images", path=csv_path)
    return samples


def _folder_images(folder: Path, exclude: Path | None = None) -> list[Path]:
    found = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return sorted(p for p in found if exclude is None or not _inside(p, exclude))


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def output_exclusion(data: Path, out: Path | None) -> Path | None:
    """The folder whose images a data set read must skip because xplain writes there.

    ``--out`` inside a DATA folder would otherwise feed a run's own plots back in as data on the
    next run. When DATA itself lies inside (or is) ``--out``, only the outputs xplain writes
    (``OUT/plots``) are skipped."""
    if out is None:
        return None
    out_r = Path(out).resolve()
    data_r = Path(data).resolve()
    if data_r == out_r or _inside(data_r, out_r):
        return out_r / "plots"
    return out_r


def _class_folder_labels(
    folder: Path, images: list[Path], class_names: list[str] | None
) -> list[int | None] | None:
    """Labels from class sub-folders, or None when the folder is not laid out that way.

    The layout counts as class folders when every image sits exactly one level down and at
    least one folder name is a class (a name in ``class_names`` or an integer index). A folder
    that then names no class is an error rather than silently unlabelled.
    """
    if not images or any(len(p.relative_to(folder).parts) != 2 for p in images):
        return None
    names = sorted({p.parent.name for p in images})
    resolved: dict[str, int | None] = {}
    for name in names:
        try:
            resolved[name] = resolve_label(name, class_names)
        except ValueError:
            resolved[name] = None
    if all(v is None for v in resolved.values()):
        return None
    bad = [n for n, v in resolved.items() if v is None]
    if bad:
        raise InputDataError(
            f"sub-folder {bad[0]!r} names no class of the model", path=folder / bad[0]
        )
    return [resolved[p.parent.name] for p in images]


def read_dataset(
    data: Path,
    *,
    class_names: list[str] | None = None,
    labels: str | Path | None = None,
    boxes: str | Path | None = None,
    limit: int | None = None,
    exclude: Path | None = None,
) -> list[Sample]:
    """Read a data set description into samples (no pixels are loaded).

    ``data``: an image file; a folder of images (recursive, sorted by path; unlabelled unless
    ``labels`` is given); a folder of class sub-folders (folder name = a name in
    ``class_names`` or an integer index); or a CSV manifest with header ``path,label[,boxes]``
    (paths relative to the CSV, label by index or name, boxes a VOC XML or JSON file; rows
    keep the manifest's order). ``labels`` (CSV/TXT, image -> label) and ``boxes`` (a folder
    of VOC XML with the image's stem, or one JSON file) override what the layout gives.
    ``limit`` keeps the first N samples. Images under ``exclude`` (see :func:`output_exclusion`)
    are skipped.
    """
    data = Path(data)
    if not data.exists() and not data.is_symlink():
        raise InputDataError("no such file or folder", path=data)
    if not data.is_dir():
        require_regular_file(data, InputDataError, "data")
    if data.is_file() and data.suffix.lower() == ".csv":
        samples = _read_manifest(data, class_names)
        root = data.parent
    elif data.is_file():
        if data.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputDataError("not an image, a folder or a .csv manifest", path=data)
        samples = [Sample(data, None, None)]
        root = data.parent
    else:
        images = _folder_images(data, exclude)
        if not images:
            raise InputDataError(
                "no images found (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")", path=data
            )
        found = _class_folder_labels(data, images, class_names)
        samples = [
            Sample(p, None if found is None else found[i], None) for i, p in enumerate(images)
        ]
        root = data
    if exclude is not None:
        samples = [s for s in samples if not _inside(s.path, exclude)]
        if not samples:
            raise InputDataError(f"every image lies in the output folder {exclude}", path=data)
    if limit is not None:
        if limit < 0:
            raise InputDataError(f"limit must be at least 0, got {limit}")
        samples = samples[:limit]
    if labels is not None:
        table = read_labels_file(Path(labels), class_names)
        samples = [dataclasses.replace(s, label=_lookup(table, s.path, root)) for s in samples]
    if boxes is not None:
        boxes = Path(boxes)
        if boxes.is_dir():

            def from_dir(s: Sample) -> Sample:
                xml = boxes / (s.path.stem + ".xml")
                if not xml.is_file():
                    return dataclasses.replace(s, boxes=None)
                try:
                    return dataclasses.replace(s, boxes=read_voc(xml, class_names))
                except InputDataError as e:  # one bad annotation skips one image, not the run
                    return dataclasses.replace(
                        s, boxes=None, error="; ".join(filter(None, [s.error, str(e)]))
                    )

            samples = [from_dir(s) for s in samples]
        else:
            boxes_table = read_boxes_json(boxes, class_names)
            samples = [
                dataclasses.replace(s, boxes=_lookup(boxes_table, s.path, root)) for s in samples
            ]
    return samples


def class_names_of(model: Model) -> list[str] | None:
    """The model's class names when known (from its sidecar or ``--labels``), else None."""
    return list(model.labels) if model.labels else None
