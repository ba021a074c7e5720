"""``xplain explain`` on files: images in, heatmaps, overlays, raw maps and JSON records out."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import time
from pathlib import Path

import torch

from .api import run_method
from ..errors import PluginError, UsageError
from ..output.fileio import save_npy, write_json
from ..data.images import Preprocess, load_image, resolve_target
from ..graph.model import Model
from ..plugins.plugin_api import Attribution
from ..plugins.registry import Registry, validate_params
from ..output.render import save_heatmap, save_overlay


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
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = path.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def explain_files(model: Model, images: list[Path], method_name: str, *, registry: Registry, out_dir: Path,
                  preprocess: Preprocess, target: str = "top1", params: dict | None = None, seed: int = 0,
                  batch_size: int = 16, progress=None) -> list[dict]:
    """Explain every image for its target(s) and write the outputs; returns the JSON records.

    Images are read and preprocessed in batches of ``batch_size``; the (image, target) pairs
    of a batch are explained together. Each output file is written atomically."""
    method = registry.method(method_name)
    values = validate_params(method.params, params or {}, f"method {method.name!r}")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    resolved = resolve_target(target, model.labels, model.num_classes)
    stems = _unique_stems(images)
    records: list[dict] = []
    device = model.device
    common = {
        "model": {"path": model.report.path, "digest": model.digest},
        "method": method.name, "params": values, "seed": seed, "device": str(device),
        "preprocess": preprocess.to_dict(), "versions": versions(),
    }
    for start in range(0, len(images), batch_size):
        chunk = list(range(start, min(start + batch_size, len(images))))
        originals, geometries, arrays = [], [], []
        for i in chunk:
            image = load_image(images[i])
            array, geometry = preprocess(image)
            originals.append(image)
            geometries.append(geometry)
            arrays.append(torch.from_numpy(array))
        x = torch.stack(arrays).to(device)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)
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
            attribution = _run_halving(model, method, x[rows], targets, values, seed)
            seconds = (time.perf_counter() - began) / len(group)
            maps = attribution.maps.cpu().numpy()
            for j, item in enumerate(group):
                record = _write_outputs(model, item, maps[j], attribution, j, images[item.index],
                                        originals[item.index - start], geometries[item.index - start], out_dir,
                                        method.name)
                record.update(common, seconds=round(seconds, 6))
                write_json(record["files"]["json"], record)
                records.append(record)
        if progress is not None:
            progress(len(chunk))
    return records


def _run_halving(model, method, x, targets, values, seed):
    """Run a method; on CUDA out-of-memory, split the batch in halves and retry.

    Valid because maps are per-sample (batch consistency, invariant 4)."""
    try:
        return run_method(model, method, x, targets, values, seed)
    except torch.cuda.OutOfMemoryError:
        if x.shape[0] == 1:
            raise PluginError(f"method {method.name!r} ran out of GPU memory even for one image") from None
        torch.cuda.empty_cache()
        half = x.shape[0] // 2
        first = _run_halving(model, method, x[:half], targets[:half], values, seed)
        second = _run_halving(model, method, x[half:], targets[half:], values, seed)
        extras = {k: torch.cat([v, second.extras[k]]) for k, v in first.extras.items()}
        per_sample = [first.record_info(i) for i in range(half)] + \
                     [second.record_info(i) for i in range(x.shape[0] - half)]
        return Attribution(torch.cat([first.maps, second.maps]), extras, {}, per_sample)


def _write_outputs(model, item: _Item, map_hw, attribution, j, image_path, original, geometry, out_dir, method):
    label = model.label(item.target)
    base = out_dir / f"{item.stem}.{method}.{item.target}"
    files = {
        "heatmap": str(base) + ".heatmap.png",
        "overlay": str(base) + ".overlay.png",
        "npy": str(base) + ".npy",
        "json": str(base) + ".json",
    }
    save_npy(files["npy"], map_hw)
    save_heatmap(files["heatmap"], map_hw)
    save_overlay(files["overlay"], original, map_hw, geometry)
    for name, tensor in attribution.extras.items():
        files[name] = str(base) + f".{name}.npy"
        save_npy(files[name], tensor[j].detach().cpu().numpy())
    return {
        "image": str(image_path),
        "target": item.target,
        "target_label": label,
        "probability": round(item.probability, 6),
        "files": files,
        "geometry": geometry.to_dict(),
        "info": attribution.record_info(j),
    }
