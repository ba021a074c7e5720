"""``xplain explain`` on files: images in, heatmaps, overlays, raw maps and JSON records out."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import time
from glob import escape as glob_escape
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import IMAGE_SUFFIXES
from ..data.images import Preprocess, load_image, resolve_target
from ..errors import InputDataError, PluginError, UsageError, XplainError
from ..fileio import atomic_group, save_npy, write_json
from ..graph.model import Model
from ..onnx.engine import engines_between, forward_counts
from ..output import render as _render
from ..output.panel import PanelRow, save_panel
from ..output.render import (
    RenderOptions,
    grey_for,
    save_heatmap,
    save_overlay,
    save_overlay_figure,
)
from ..output.schemes import Schemes
from ..plugins.plugin_api import Attribution, Method
from ..plugins.registry import Registry, validate_params
from ..untrusted import path_text, safe_stem
from .api import check_requirements, run_method
from .guards import ModelGuard, check_unchanged
from .out_folder import folder_for


def versions() -> dict[str, str]:
    out = {}
    for dist in ("xplain", "torch", "onnx", "onnx2torch", "onnxruntime", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


@dataclasses.dataclass
class _Item:
    """One (image, target) pair to explain."""

    index: int  #: image position
    target: int
    probability: float
    stem: str


def _unique_stems(stems: list[str]) -> list[str]:
    """Make output stems unique across a run: a repeat gets ``-2``, ``-3``, … (skipping any name
    already taken, also by another input's own stem). Compared case-insensitively, so two
    inputs never write the same file on case-insensitive file systems (macOS, Windows). Stems
    are first made safe for file names (:func:`~xplain.untrusted.safe_stem`: no separators, no
    control characters, undecodable bytes as ``_xNN``)."""
    stems = [safe_stem(s) for s in stems]
    taken = {s.casefold() for s in stems}
    seen: set[str] = set()
    out = []
    for stem in stems:
        name, n = stem, 1
        while name.casefold() in seen or (n > 1 and name.casefold() in taken):
            n += 1
            name = f"{stem}-{n}"
        seen.add(name.casefold())
        out.append(name)
    return out


def expand_images(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Files stay as given; a folder becomes its images (recursively, sorted by relative path,
    hidden files and folders skipped) with the sub-folder names kept in the stem
    (``cats/tabby/a.jpg`` under the folder → ``cats__tabby__a``). Returns (images, stems), the
    stems unique (:func:`_unique_stems`). A folder without images is an input error."""
    images: list[Path] = []
    stems: list[str] = []
    for path in paths:
        if not path.exists():
            raise InputDataError("no such file or folder", path=path)
        if not path.is_dir():
            images.append(path)
            stems.append(path.stem)
            continue
        found = _folder_images(path)
        if not found:
            raise InputDataError(
                "no images found in the folder (looked for "
                + ", ".join(sorted(IMAGE_SUFFIXES))
                + ")",
                path=path,
            )
        for image in found:
            rel = image.relative_to(path)
            images.append(image)
            stems.append("__".join((*rel.parts[:-1], rel.stem)))
    return images, _unique_stems(stems)


def _folder_images(folder: Path) -> list[Path]:
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not _own_output(p)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


_OUTPUT_KINDS = (".heatmap.png", ".overlay.png")


def _own_output(path: Path) -> bool:
    """An earlier ``explain`` wrote this picture (``--out`` was the image folder): a heatmap or
    overlay with its record ``BASE.json`` beside it, or a panel ``STEM.panel.png`` beside records
    ``STEM.*.json``. Explaining it would explain xplain's own colours."""
    name = path.name
    for kind in _OUTPUT_KINDS:
        if name.endswith(kind):
            return path.with_name(name[: -len(kind)] + ".json").is_file()
    if name.endswith(".panel.png"):
        stem = name[: -len(".panel.png")]
        return any(path.parent.glob(f"{glob_escape(stem)}.*.json"))
    return False


def _method_values(
    registry: Registry, names: list[str], params: dict | None, method_params: dict | None
) -> list[tuple[Method, dict]]:
    """Validated parameters per method: ``params`` (flat) for a single method, or
    ``method_params`` ({method: {key: value}})."""
    if len(set(names)) != len(names):
        raise UsageError("a method is listed twice")
    if params and len(names) != 1:
        raise UsageError("with several methods give parameters as METHOD.KEY=VALUE")
    scoped = dict(method_params or {})
    unknown = set(scoped) - set(names)
    if unknown:
        raise UsageError(
            f"parameters given for method {', '.join(sorted(unknown))}, which is not run"
        )
    if params:
        scoped[names[0]] = {**scoped.get(names[0], {}), **params}
    out = []
    for name in names:
        method = registry.method(name)
        values = validate_params(method.params, scoped.get(name, {}), f"method {method.name!r}")
        out.append((method, values))
    return out


@dataclasses.dataclass
class _Job:
    """What every batch of one ``explain_files`` call shares."""

    model: Model
    images: list[Path]
    stems: list[str]
    out_dir: Path
    render: RenderOptions
    seed: int
    batch_size: int
    timeout: float | None = None  #: seconds per method call (``api.time_limit``)
    guard: ModelGuard | None = None  #: checked after every method call (nothing written if changed)
    #: each method's colour scheme, decided once per call (``output.schemes``)
    schemes: Schemes = dataclasses.field(default_factory=Schemes)


@dataclasses.dataclass
class _Batch:
    """One batch of images: the originals, their geometry, the model input and probabilities.

    ``originals`` are copies no larger than the overlays drawn from them (``drawn`` is their
    geometry): a batch of 16 photos of 89 megapixels would otherwise hold 4 GB. ``geometries``
    keep the true sizes for the records."""

    start: int  #: position of the first image
    originals: list
    geometries: list
    x: torch.Tensor
    probs: torch.Tensor
    drawn: list = dataclasses.field(default_factory=list)


def explain_files(
    model: Model,
    images: list[Path],
    methods: str | list[str],
    *,
    registry: Registry,
    out_dir: Path,
    preprocess: Preprocess,
    target: str = "top1",
    params: dict | None = None,
    method_params: dict | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress=None,
    on_method=None,
    render: RenderOptions | None = None,
    panel: bool | None = None,
    stems: list[str] | None = None,
    timeout: float | None = None,
) -> list[dict]:
    """Explain every image for its target(s) with every method and write the outputs; returns
    the JSON records (one per image, method and target).

    Images are read and preprocessed once per batch of ``batch_size`` and the model's
    probabilities computed once; the (image, target) pairs of a batch are explained together by
    each method in turn. ``panel`` (default: when there are several methods) also writes
    ``STEM.panel.png`` per image: the photo, one overlay per method, one row per target. Each
    output file is written atomically, and a record's JSON file only after every picture of
    its image, so a JSON file on disk means the image is complete; the files of a batch land
    together or not at all (``fileio.atomic_group``: a full disk leaves no image half-written).
    ``timeout`` bounds each method call (seconds, ``api.time_limit``). ``progress(n)`` is told
    after each batch how many images it held; ``on_method(name, first, count)`` before each
    method runs on a batch (a progress display names what is running: a single InputIBA map
    takes minutes)."""
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise UsageError("no methods given")
    chosen = _method_values(registry, names, params, method_params)
    for method, _ in chosen:  # refuse before reading any image
        check_requirements(model, method)
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    render = render or RenderOptions()
    panel = len(chosen) > 1 if panel is None else panel
    resolved = resolve_target(target, model.labels, model.num_classes)
    stems = _unique_stems([p.stem for p in images]) if stems is None else stems
    out_dir = folder_for(Path(out_dir), model.digest, model.report.path)  # never mix models
    job = _Job(model, images, stems, out_dir, render, seed, batch_size, timeout, ModelGuard(model))
    records: list[dict] = []
    common = {
        "model": {"path": path_text(model.report.path), "digest": model.digest},
        "seed": seed,
        "device": str(model.device),
        "preprocess": preprocess.to_dict(),
        "labels": model.labels_source,  # e.g. "imagenet (default for 1000 classes)"
        "render": render.to_dict(),
        "versions": versions(),
    }
    for start in range(0, len(images), batch_size):
        batch = _load_batch(job, start, preprocess)
        items = _items(job, batch, resolved)
        pending: list[dict] = []
        maps: dict[tuple[int, int, str], np.ndarray] = {}
        with atomic_group():  # every file of this batch, or none of them
            for method, values in chosen:
                if on_method is not None:
                    on_method(method.name, start, len(batch.originals))
                for record, m in _explain_items(job, method, values, items, batch):
                    record.update(common, method=method.name, params=values)
                    pending.append(record)
                    maps[(record["_index"], record["target"], method.name)] = m
            if panel:
                _write_panels(job, [m.name for m, _ in chosen], items, batch, maps, pending)
            for record in pending:
                del record["_index"]
                write_json(record.pop("_json"), record)
        records += pending
        if progress is not None:
            progress(len(batch.originals))
    return records


def _load_batch(job: _Job, start: int, preprocess: Preprocess) -> _Batch:
    originals, geometries, drawn, arrays = [], [], [], []
    paths = job.images[start : start + job.batch_size]
    for path in paths:
        image = load_image(path)
        try:
            array, geometry = preprocess(image)
        except XplainError as e:  # e.g. an extreme aspect ratio: name the image
            raise InputDataError(e.message, path=path, hint=e.hint) from None
        small, small_geometry = _drawable(image, geometry)
        originals.append(small)
        geometries.append(geometry)
        drawn.append(small_geometry)
        arrays.append(torch.from_numpy(array))
    x = torch.stack(arrays).to(job.model.device)
    with torch.no_grad():
        probs = torch.softmax(job.model(x).float(), dim=1)
    for row, path in enumerate(paths):
        if not bool(torch.isfinite(probs[row]).all()):
            raise InputDataError(
                "the model's output for this image is not finite (NaN/Inf); the "
                "preprocessing (mean/std, sidecar) or the model overflows",
                path=path,
            )
    return _Batch(start, originals, geometries, x, probs, drawn)


def _drawable(image, geometry):
    """A copy of ``image`` no larger than the overlays drawn from it (``render.OVERLAY_MAX_SIDE``),
    with the geometry that maps a map onto it (only ``original_size`` changes)."""
    size = _render.bounded_size(tuple(image.size), int(_render.OVERLAY_MAX_SIDE))
    if size == tuple(image.size):
        return image, geometry
    from PIL import Image

    return image.resize(size, Image.Resampling.BILINEAR), dataclasses.replace(
        geometry, original_size=size
    )


def _items(job: _Job, batch: _Batch, resolved) -> list[_Item]:
    """The (image, target) pairs of a batch: the top-k classes, or the given targets."""
    items: list[_Item] = []
    for row in range(len(batch.originals)):
        i = batch.start + row
        if isinstance(resolved, str):  # "top1", "top5", …
            k = min(int(resolved[3:]), job.model.num_classes)
            targets = batch.probs[row].topk(k).indices.tolist()
        else:
            targets = resolved
        items += [_Item(i, t, float(batch.probs[row, t]), job.stems[i]) for t in targets]
    return items


def _explain_items(job: _Job, method: Method, values: dict, items: list[_Item], batch: _Batch):
    """Yield (record, map) for every item, running ``method`` on groups of ``batch_size``; the
    outputs are drawn once all of the batch's maps are known, in the method's one scheme."""
    device = job.model.device
    done = []
    for offset in range(0, len(items), job.batch_size):
        group = items[offset : offset + job.batch_size]
        rows = torch.tensor([it.index - batch.start for it in group], device=device)
        targets = torch.tensor([it.target for it in group], device=device)
        began, forwards = time.perf_counter(), forward_counts(job.model)
        attribution = _run_halving(
            job.model, method, batch.x[rows], targets, values, job.seed, job.timeout
        )
        check_unchanged(job.guard, f"method {method.name!r}")
        seconds = (time.perf_counter() - began) / len(group)
        engine = engines_between(forwards, forward_counts(job.model))  # who served model.infer
        maps = attribution.maps.detach().float().cpu().numpy()
        done.append((group, attribution, maps, seconds, engine))
    signed = job.schemes.signed(method.name, [m for _, _, maps, _, _ in done for m in maps])
    for group, attribution, maps, seconds, engine in done:
        for j, item in enumerate(group):
            record = _write_outputs(job, item, maps[j], attribution, j, batch, method.name, signed)
            record.update(seconds=round(seconds, 6), engine=engine, _index=item.index)
            yield record, maps[j]


def _write_panels(
    job: _Job, names: list[str], items: list[_Item], batch: _Batch, maps: dict, pending: list[dict]
) -> None:
    """``STEM.panel.png`` for every image of the batch; its path goes into the records."""
    for i in sorted({it.index for it in items}):
        rows = [
            PanelRow(
                it.target,
                job.model.label(it.target),
                it.probability,
                {n: maps[(i, it.target, n)] for n in names if (i, it.target, n) in maps},
            )
            for it in items
            if it.index == i
        ]
        path = job.out_dir / f"{job.stems[i]}.panel.png"
        k = i - batch.start
        save_panel(
            path,
            batch.originals[k],
            batch.drawn[k],
            rows,
            names,
            title=path_text(job.images[i].name),
            percentile=job.render.percentile,
            grey=job.render.grey,
            alpha=job.render.alpha,
            signed=job.schemes.as_dict(),
        )
        for record in pending:
            if record["_index"] == i:
                record["files"]["panel"] = path_text(path)


def _run_halving(model, method, x, targets, values, seed, timeout=None):
    """Run a method; on CUDA out-of-memory, split the batch in halves and retry.

    Valid because maps are per-sample (batch consistency, invariant 4)."""
    try:
        limit = {"timeout": timeout} if timeout else {}
        return run_method(model, method, x, targets, values, seed, **limit)
    except torch.cuda.OutOfMemoryError:
        if x.shape[0] == 1:
            raise PluginError(
                f"method {method.name!r} ran out of GPU memory even for one image"
            ) from None
        torch.cuda.empty_cache()
        half = x.shape[0] // 2
        first = _run_halving(model, method, x[:half], targets[:half], values, seed, timeout)
        second = _run_halving(model, method, x[half:], targets[half:], values, seed, timeout)
        extras = {k: torch.cat([v, second.extras[k]]) for k, v in first.extras.items()}
        per_sample = [first.record_info(i) for i in range(half)] + [
            second.record_info(i) for i in range(x.shape[0] - half)
        ]
        return Attribution(torch.cat([first.maps, second.maps]), extras, {}, per_sample)


def _write_outputs(
    job: _Job,
    item: _Item,
    map_hw,
    attribution,
    j: int,
    batch: _Batch,
    method: str,
    signed: bool,
) -> dict:
    """Write one map's .npy, heatmap and overlay (and the method's extras); the record."""
    label = job.model.label(item.target)
    k = item.index - batch.start
    original, geometry, drawn = batch.originals[k], batch.geometries[k], batch.drawn[k]
    render = job.render
    base = job.out_dir / f"{item.stem}.{method}.{item.target}"
    paths = {
        "heatmap": Path(f"{base}.heatmap.png"),
        "overlay": Path(f"{base}.overlay.png"),
        "npy": Path(f"{base}.npy"),
        "json": Path(f"{base}.json"),
    }
    save_npy(paths["npy"], map_hw)
    save_heatmap(
        paths["heatmap"], map_hw, signed, percentile=render.percentile, colorbar=render.colorbar
    )
    (save_overlay_figure if render.colorbar else save_overlay)(
        paths["overlay"],
        original,
        map_hw,
        drawn,
        signed,
        alpha=render.alpha,
        percentile=render.percentile,
        grey=render.grey,
    )
    for name, tensor in attribution.extras.items():  # names checked by run_method: no separators
        paths[name] = Path(f"{base}.{name}.npy")
        save_npy(paths[name], tensor[j].detach().cpu().numpy())
    # file names as text that always encodes (undecodable bytes escaped); the caller writes the
    # JSON to the real path kept under "_json"
    files = {name: path_text(p) for name, p in paths.items()}
    return {
        "_json": paths["json"],
        "image": path_text(job.images[item.index]),
        "target": item.target,
        "target_label": label,
        "probability": round(item.probability, 6),
        "files": files,
        "geometry": geometry.to_dict(),
        "info": attribution.record_info(j),
        "scheme": {
            "signed": bool(signed),
            "colormap": _render.SIGNED_CMAP if signed else _render.UNSIGNED_CMAP,
            "grey_photo": grey_for(render.grey, signed),
        },
    }
