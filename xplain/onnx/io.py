"""Reading ONNX files safely.

A model file is untrusted input. We parse the protobuf ourselves with external data *off*,
then materialise every external tensor from files that must lie inside the model's own
folder (relative location, no ``..``, no absolute path, no symlink anywhere on the way),
with bounds-checked offsets. onnx's own loader is never asked to follow paths, so a crafted
``external_data.location`` cannot read ``/etc/passwd`` or a file outside the folder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import ModelError
from ..untrusted import printable, require_regular_file

#: protobuf cannot hold more than 2 GiB in one message; larger models must use external data.
MAX_PROTO_BYTES = 2**31 - 1
#: cap on the total bytes of external data one model may pull in.
MAX_EXTERNAL_BYTES = 16 * 2**30
#: how many bytes may be materialised beyond the distinct bytes referenced: an exporter never
#: points two tensors at the same range, while 120 tensors on one 8 MiB range would cost ~1 GB
#: per copy of the model for a file of a few KB
MAX_EXTERNAL_REUSE = 64 * 2**20


#: bytes per element of the fixed-size ONNX tensor types (string and packed 4-bit types are not
#: checked against their external length)
_ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def _all_tensors(graph) -> Iterator:
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_tensors(sub)


def _check_path(path: Path) -> int:
    if not path.exists() and not path.is_symlink():
        raise ModelError("no such file", path=path)
    if path.is_dir():
        raise ModelError("is a directory, not an ONNX file", path=path)
    size = require_regular_file(path, ModelError, "model")
    if size == 0:
        raise ModelError("empty file, not an ONNX model", path=path)
    if size > MAX_PROTO_BYTES:
        raise ModelError(
            "file larger than 2 GiB; such models must keep weights as external data", path=path
        )
    return size


def resolve_external_location(model_path: Path, location: str) -> Path:
    """The file an external tensor points at, refusing anything outside the model's folder."""
    folder = model_path.resolve().parent
    bad = f"external data location {location!r} is not allowed"
    if not location or "\x00" in location or "\\" in location or ":" in location:
        raise ModelError(f"{bad} (must be a plain relative path)", path=model_path)
    rel = Path(location)
    if (
        rel.is_absolute()
        or any(part in ("..", "") for part in rel.parts)
        or location.startswith("/")
    ):
        raise ModelError(f"{bad} (absolute paths and '..' are refused)", path=model_path)
    candidate = folder
    for part in rel.parts:
        if part == ".":
            continue
        candidate = candidate / part
        if candidate.is_symlink():
            raise ModelError(f"{bad} (symbolic links are refused)", path=model_path)
    if not candidate.exists() or candidate.is_dir():
        what = " (a folder)" if candidate.is_dir() else ""
        raise ModelError(
            f"external data file {location!r} not found beside the model{what}", path=model_path
        )
    if os.path.commonpath([candidate.resolve(), folder]) != str(folder):
        raise ModelError(f"{bad} (it leaves the model's folder)", path=model_path)
    try:
        require_regular_file(candidate, ModelError, f"external data file {location!r}")
    except ModelError as e:  # name the model, like every other external-data error
        raise ModelError(e.message, path=model_path) from None
    return candidate


def _union_bytes(ranges: list[tuple[int, int]]) -> int:
    """Bytes covered by a set of (offset, length) ranges of one file."""
    total, reach = 0, 0
    for offset, length in sorted(ranges):
        end = offset + length
        if end > reach:
            total += end - max(offset, reach)
            reach = end
    return total


def _load_external(model, model_path: Path, digest) -> int:
    """Materialise external tensors in place; returns how many there were.

    Two passes: every reference is validated and the bytes it would cost are counted *before*
    anything is read (distinct byte ranges per file, so reuse of the same bytes by many tensors
    is seen and capped), then each distinct range is read once."""
    import onnx

    plan = []  # (tensor, file, offset, length)
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        name = printable(repr(tensor.name))
        info = {e.key: e.value for e in tensor.external_data}
        unknown = set(info) - {"location", "offset", "length", "checksum", "basepath"}
        if unknown:
            raise ModelError(
                f"tensor {name} has unknown external data keys {printable(sorted(unknown))}",
                path=model_path,
            )
        file = resolve_external_location(model_path, info.get("location", ""))
        try:
            if len(info.get("offset", "")) > 20 or len(info.get("length", "")) > 20:
                raise ValueError
            offset = int(info.get("offset", 0))
            size = file.stat().st_size
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError:
            raise ModelError(
                f"tensor {name} has a non-numeric external offset/length", path=model_path
            ) from None
        if offset < 0 or offset > size:
            raise ModelError(
                f"tensor {name}: external offset {offset} exceeds the size of {file.name} "
                f"({size} bytes)",
                path=model_path,
            )
        if length < 0 or offset + length > size:
            raise ModelError(
                f"tensor {name}: external range {offset}+{length} exceeds {file.name} ({size} bytes)",
                path=model_path,
            )
        item = _ITEM_BYTES.get(tensor.data_type)
        if item is not None:
            need = item
            for d in tensor.dims:
                need *= int(d)
            if need != length:  # checked before a byte is read: a 3 GB file for a [4] tensor
                raise ModelError(
                    f"tensor {name}: external data holds {length} bytes but its shape "
                    f"{printable(list(tensor.dims)[:8])} needs {need}",
                    path=model_path,
                )
        plan.append((tensor, file, offset, length))
    if not plan:
        return 0
    total = sum(length for *_, length in plan)
    per_file: dict[Path, list[tuple[int, int]]] = {}
    for _, file, offset, length in plan:
        per_file.setdefault(file, []).append((offset, length))
    distinct = sum(_union_bytes(ranges) for ranges in per_file.values())
    if total > MAX_EXTERNAL_BYTES:
        raise ModelError(f"external data exceeds the 16 GiB limit ({total} bytes)", path=model_path)
    if total - distinct > MAX_EXTERNAL_REUSE:
        raise ModelError(
            f"external data reuses the same bytes: {total / 2**20:.0f} MiB referenced from "
            f"{distinct / 2**20:.0f} MiB of distinct ranges (more than "
            f"{MAX_EXTERNAL_REUSE // 2**20} MiB of reuse is refused)",
            path=model_path,
        )
    handles: dict[Path, BinaryIO] = {}
    cache: dict[tuple, bytes] = {}
    try:
        for tensor, file, offset, length in plan:
            key = (file, offset, length)
            data = cache.get(key)
            if data is None:
                fh = handles.get(file)
                if fh is None:
                    fh = handles[file] = open(file, "rb")  # noqa: SIM115 - closed below
                fh.seek(offset)
                data = cache[key] = fh.read(length)
            digest.update(data)
            tensor.raw_data = data
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
    finally:
        for fh in handles.values():
            fh.close()
    return len(plan)


def _varint(chunk: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(chunk) or shift > 63:
            raise ValueError("truncated varint")
        byte = chunk[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _scan_model_fields(path: Path, size: int) -> str | None:
    """Walk the top-level fields of a ModelProto without reading the file: a problem, or None.

    Only each field's tag and length are read (20 bytes per field, seeking over the payloads),
    so a 1.9 GB file of zeros or of random bytes is refused after a few reads instead of being
    read whole (and held twice, as bytes and as the parsed message) before protobuf says no.
    Field numbers and wire types come from ``onnx.ModelProto``'s own descriptor."""
    import onnx

    wire = {}
    for field in onnx.ModelProto.DESCRIPTOR.fields:
        wire[field.number] = 2 if field.type in (9, 11, 12) else 0  # string/message/bytes: LEN
    try:
        with open(path, "rb") as fh:
            pos, seen_graph, fields = 0, False, 0
            while pos < size:
                fields += 1
                if fields > 100_000:
                    return "more than 100,000 top-level fields"
                fh.seek(pos)
                chunk = fh.read(20)
                tag, used = _varint(chunk, 0)
                number, kind = tag >> 3, tag & 7
                if number == 0 or (number in wire and wire[number] != kind) or kind in (3, 4, 6, 7):
                    return (
                        f"byte {pos}: field {number} wire type {kind} is not part of an ONNX model"
                    )
                length = 0
                if kind == 0:
                    _, used = _varint(chunk, used)
                elif kind in (1, 5):
                    length = 8 if kind == 1 else 4
                else:
                    length, used = _varint(chunk, used)
                pos += used + length
                seen_graph = seen_graph or number == 7
                if pos > size:
                    return f"a field of {length} bytes runs past the end"
            return None if seen_graph else "no graph"
    except ValueError as err:  # a truncated varint
        return str(err)
    except OSError:
        return None  # the read below reports it


def read_model(path: str | os.PathLike):
    """Parse ``path`` into a fully materialised ``onnx.ModelProto``, its sha256 digest, and the
    file's bytes when they are the whole model (no external data) — onnxruntime can take those
    as they are instead of a re-serialised copy.

    Raises :class:`ModelError` with one line for every way a file can be unusable."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    size = _check_path(path)
    if size > 2**20 and (problem := _scan_model_fields(path, size)) is not None:
        raise ModelError(
            f"not an ONNX model, or the file is truncated ({problem}); refused without reading "
            f"its {size} bytes",
            path=path,
        )
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelError(f"cannot read: {err.strerror}", path=path) from None
    digest = hashlib.sha256(data)
    try:
        model = onnx.ModelProto()
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise ModelError(
            "not an ONNX model, or the file is truncated (protobuf parse failed)", path=path
        ) from None
    if not model.HasField("graph") or not model.graph.node or model.ir_version <= 0:
        raise ModelError(
            "not an ONNX model, or the file is truncated (no graph or IR version)", path=path
        )
    if _has_sparse(model.graph):
        raise ModelError("sparse initializers are not supported", path=path)
    external = _load_external(model, path, digest)
    return model, digest.hexdigest(), (None if external else data)


def _has_sparse(graph) -> bool:
    """Sparse tensors anywhere (their external data would escape our path checks)."""
    import onnx

    if graph.sparse_initializer:
        return True
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS):
                return True
            if attr.type == onnx.AttributeProto.GRAPH and _has_sparse(attr.g):
                return True
            if attr.type == onnx.AttributeProto.GRAPHS and any(_has_sparse(g) for g in attr.graphs):
                return True
    return False


def check_model(model, path) -> None:
    """onnx's structural checker; its first line becomes our one-line error."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, RuntimeError, ValueError) as err:
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        first = " ".join(lines[:2]) if lines else type(err).__name__
        raise ModelError(f"ONNX checker failed: {first}", path=path) from None
