"""The one image-batching loop of the verbs (explain, eval, fit, bench): paths → decoded,
preprocessed float32 batches on the model's device.

Every verb used to decode and stack images in its own loop; they differ only in what they keep
(the original images for overlays, the geometry for boxes, labels) and in whether one unusable
image ends the run (``explain``, ``fit``) or becomes an error record (``eval``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import Geometry, Preprocess, load_image
from ..errors import XplainError


@dataclasses.dataclass
class ImageBatch:
    """One batch: ``x`` (N×C×H×W float32 on the device) holds the images at ``indices`` (their
    positions in the whole list) in order; ``errors`` maps the index of each image that could
    not be used to a one-line reason (only with ``keep_going``)."""

    start: int
    indices: list[int]
    x: torch.Tensor | None
    images: list[Any]  #: the decoded originals (Pillow images), for overlays
    geometries: list[Geometry]  #: resize/crop geometry, to map boxes and maps back
    errors: dict[int, str] = dataclasses.field(default_factory=dict)


def load_batch(
    paths: Sequence[str | Path],
    preprocess: Preprocess,
    device: torch.device | str,
    *,
    start: int = 0,
    keep_going: bool = False,
    skip: Sequence[int] = (),
) -> ImageBatch:
    """Decode and preprocess ``paths`` (whose first one has index ``start``) into one batch.

    Without ``keep_going`` an unusable image raises its :class:`XplainError`; with it, the image
    is left out and its reason recorded (any exception: one broken file must not end a long run).
    Indices in ``skip`` are not loaded at all (already done, or known bad)."""
    indices: list[int] = []
    arrays: list[np.ndarray] = []
    images: list[Any] = []
    geometries: list[Geometry] = []
    errors: dict[int, str] = {}
    skipped = set(skip)
    for offset, path in enumerate(paths):
        index = start + offset
        if index in skipped:
            continue
        try:
            image = load_image(path)
            array, geometry = preprocess(image)
        except XplainError as err:
            if not keep_going:
                raise
            errors[index] = str(err)
            continue
        except Exception as err:  # noqa: BLE001 - recorded, the run goes on
            if not keep_going:
                raise
            errors[index] = f"{path}: cannot load: {type(err).__name__}: {err}"
            continue
        indices.append(index)
        arrays.append(array)
        images.append(image)
        geometries.append(geometry)
    x = torch.from_numpy(np.stack(arrays)).to(device, torch.float32) if arrays else None
    return ImageBatch(start, indices, x, images, geometries, errors)


def iter_batches(
    paths: Sequence[str | Path],
    preprocess: Preprocess,
    batch_size: int,
    device: torch.device | str,
    *,
    keep_going: bool = False,
) -> Iterator[ImageBatch]:
    """:func:`load_batch` over ``paths`` in chunks of ``batch_size``."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    for start in range(0, len(paths), batch_size):
        yield load_batch(
            paths[start : start + batch_size],
            preprocess,
            device,
            start=start,
            keep_going=keep_going,
        )
