"""``xplain explain`` on files: images in, heatmaps, overlays, raw maps and JSON records out."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import time
from pathlib import Path

import torch

from .api import run_method
from ..errors import InputDataError, PluginError, UsageError, XplainError
from ..output.fileio import atomic_group, save_npy, write_json
from ..data.images import Preprocess, load_image, resolve_target
from ..graph.model import Model
from ..plugins.plugin_api import Attribution
from ..plugins.registry import Registry, validate_params
from ..output.render import bound_overlay, save_heatmap, save_overlay
from ..untrusted import path_text, safe_stem


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


def _unique_stems(paths: list[Path]) -> list[str]:
    """One output stem per image, unique against *every* other stem of the run.

    ``a.png a.jpg a-2.png`` gives ``a``, ``a-2``, ``a-2-2``: a numbered stem is never handed out
    when it is (or will be) some image's own stem, so no two images write the same files. Stems
    are made safe for file names (:func:`~xplain.untrusted.safe_stem`); case-insensitive file
    systems are respected by comparing case-folded."""
    own = [safe_stem(path.stem) for path in paths]
    reserved = {s.casefold() for s in own}
    used: set[str] = set()
    stems = []
    for stem in own:
        candidate, n = stem, 1
        while candidate.casefold() in used or (candidate != stem and candidate.casefold() in reserved):
            n += 1
            candidate = f"{stem}-{n}"
        used.add(candidate.casefold())
        stems.append(candidate)
    return stems


def explain_files(model: Model, images: list[Path], method_name: str, *, registry: Registry, out_dir: Path,
                  preprocess: Preprocess, target: str = "top1", params: dict | None = None, seed: int = 0,
                  batch_size: int = 16, progress=None, timeout: float | None = None) -> list[dict]:
    """Explain every image for its target(s) and write the outputs; returns the JSON records.

    Images are read and preprocessed in batches of ``batch_size``; the (image, target) pairs
    of a batch are explained together. The files of one (image, target) — map, PNGs, extras,
    JSON record — are written as a group: all of them or none (``fileio.atomic_group``).
    ``timeout`` bounds each call of the method (seconds, see ``api.time_limit``)."""
    method = registry.method(method_name)
    values = validate_params(method.params, params or {}, f"method {method.name!r}")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    resolved = resolve_target(target, model.labels, model.num_classes)
    stems = _unique_stems(images)
    records: list[dict] = []
    device = model.device
    common = {
        "model": {"path": path_text(model.report.path), "digest": model.digest},
        "method": method.name, "params": values, "seed": seed, "device": str(device),
        "preprocess": preprocess.to_dict(), "versions": versions(),
    }
    for start in range(0, len(images), batch_size):
        chunk = list(range(start, min(start + batch_size, len(images))))
        originals, geometries, arrays = [], [], []
        for i in chunk:
            image = load_image(images[i])
            try:
                array, geometry = preprocess(image)
            except XplainError as e:
                raise InputDataError(e.message, path=images[i], hint=e.hint) from None
            # keep only an overlay-sized copy: a batch of 16 originals of 89 megapixels is 4 GB
            image, geometry = bound_overlay(image, geometry)
            originals.append(image)
            geometries.append(geometry)
            arrays.append(torch.from_numpy(array))
        x = torch.stack(arrays).to(device)
        with torch.no_grad():
            probs = torch.softmax(model(x).float(), dim=1)
        for row, i in enumerate(chunk):
            if not bool(torch.isfinite(probs[row]).all()):
                raise InputDataError("the model's output for this image is not finite (NaN/Inf); the "
                                     "preprocessing (mean/std, sidecar) or the model overflows", path=images[i])
        items: list[_Item] = []
        for row, i in enumerate(chunk):
            if isinstance(resolved, str):  # "top1", "top5", …
                k = min(int(resolved[3:]), model.num_classes)
                targets = probs[row].topk(k).indices.tolist()
            else:
                targets = resolved
            items += [_Item(i, t, float(probs[row, t]), stems[i]) for t in targets]
        for offset in range(0, len(items), batch_size):
            group = items[offset:offset + batch_size]
            rows = torch.tensor([it.index - start for it in group], device=device)
            targets = torch.tensor([it.target for it in group], device=device)
            began = time.perf_counter()
            attribution = _run_halving(model, method, x[rows], targets, values, seed, timeout)
            seconds = (time.perf_counter() - began) / len(group)
            maps = attribution.maps.cpu().numpy()
            for j, item in enumerate(group):
                with atomic_group():  # npy, PNGs, extras and JSON of this item: all or none
                    record = _write_outputs(model, item, maps[j], attribution, j, images[item.index],
                                            originals[item.index - start], geometries[item.index - start],
                                            out_dir, method.name)
                    record.update(common, seconds=round(seconds, 6))
                    json_path = record["files"]["json"]
                    record["files"]["json"] = path_text(json_path)
                    write_json(json_path, record)
                records.append(record)
        if progress is not None:
            progress(len(chunk))
    return records


def _run_halving(model, method, x, targets, values, seed, timeout=None):
    """Run a method; on CUDA out-of-memory, split the batch in halves and retry.

    Valid because maps are per-sample (batch consistency, invariant 4)."""
    try:
        limit = {"timeout": timeout} if timeout else {}
        return run_method(model, method, x, targets, values, seed, **limit)
    except torch.cuda.OutOfMemoryError:
        if x.shape[0] == 1:
            raise PluginError(f"method {method.name!r} ran out of GPU memory even for one image") from None
        torch.cuda.empty_cache()
        half = x.shape[0] // 2
        first = _run_halving(model, method, x[:half], targets[:half], values, seed, timeout)
        second = _run_halving(model, method, x[half:], targets[half:], values, seed, timeout)
        extras = {k: torch.cat([v, second.extras[k]]) for k, v in first.extras.items()}
        per_sample = [first.record_info(i) for i in range(half)] + \
                     [second.record_info(i) for i in range(x.shape[0] - half)]
        return Attribution(torch.cat([first.maps, second.maps]), extras, {}, per_sample)


def _write_outputs(model, item: _Item, map_hw, attribution, j, image_path, original, geometry, out_dir, method):
    label = model.label(item.target)
    base = Path(out_dir) / f"{item.stem}.{method}.{item.target}"
    paths = {"heatmap": Path(f"{base}.heatmap.png"), "overlay": Path(f"{base}.overlay.png"),
             "npy": Path(f"{base}.npy"), "json": Path(f"{base}.json")}
    save_npy(paths["npy"], map_hw)
    save_heatmap(paths["heatmap"], map_hw)
    save_overlay(paths["overlay"], original, map_hw, geometry)
    for name, tensor in attribution.extras.items():  # names checked by run_method: no separators
        paths[name] = Path(f"{base}.{name}.npy")
        save_npy(paths[name], tensor[j].detach().cpu().numpy())
    files = {name: path_text(p) for name, p in paths.items()}
    files["json"] = paths["json"]  # the writer's path; replaced by its text below
    return {
        "image": path_text(image_path),
        "target": item.target,
        "target_label": label,
        "probability": round(item.probability, 6),
        "files": files,
        "geometry": geometry.to_dict(),
        "info": attribution.record_info(j),
    }
