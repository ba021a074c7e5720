"""``xplain fit``: stream a data set through a method's ``fit`` and save the state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from .errors import InputDataError
from .images import Preprocess, load_image
from .model import Model
from .plugin_api import Method
from .registry import validate_params
from .state import save_state

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(data: Path) -> list[Path]:
    """Images in a folder, or in its class sub-folders (sorted, so runs are repeatable)."""
    if not data.exists():
        raise InputDataError("no such file or folder", path=data)
    if data.is_file():
        return [data]
    found = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise InputDataError("no images found (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")", path=data)
    return found


def iter_batches(model: Model, paths: list[Path], preprocess: Preprocess, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(paths), batch_size):
        arrays = [torch.from_numpy(preprocess(load_image(p))[0]) for p in paths[start:start + batch_size]]
        yield torch.stack(arrays).to(model.device)


def fit_method(model: Model, method: Method, data: Path, *, params: dict, state_dir=None, batch_size: int = 32,
               preset: str | None = None, console=None) -> Path:
    values = validate_params(method.params, params, f"method {method.name!r}")
    paths = list_images(Path(data))
    preprocess = Preprocess.from_options((model.spec.channels, model.spec.height, model.spec.width),
                                         preset=preset, sidecar=model.sidecar)

    def batches() -> Iterator[torch.Tensor]:  # a fresh stream for each epoch a method needs
        return iter_batches(model, paths, preprocess, batch_size)

    tensors, meta = method.fit(model, batches, values, console)
    meta = {**meta, "params": values, "samples": len(paths), "data": str(data), "preprocess": preprocess.to_dict()}
    return save_state(model.digest, method.name, tensors, meta, root=state_dir)
