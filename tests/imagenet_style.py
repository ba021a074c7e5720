"""A generated ImageNet-style validation folder and a tiny 1000-class model (test data for the
scale features of ``xplain eval``: shards, Ray, WordNet-id folders and VOC boxes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")  # ImageNet classes 0, 1, 2, 3


def make_imagenet_folder(
    root: Path, per_class: int = 50, size: int = 24, seed: int = 0
) -> tuple[Path, Path]:
    """``root/val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG`` and ``root/boxes/<stem>.xml`` (Pascal VOC,
    one object named by WordNet id, a few images without annotation); returns (val, boxes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    val, boxes = root / "val", root / "boxes"
    boxes.mkdir(parents=True, exist_ok=True)
    n = 0
    for c, wnid in enumerate(WNIDS):
        (val / wnid).mkdir(parents=True, exist_ok=True)
        for _ in range(per_class):
            n += 1
            stem = f"ILSVRC2012_val_{n:08d}"
            w, h = int(rng.integers(size, 2 * size)), int(rng.integers(size, 2 * size))
            img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            x1, y1 = x0 + w // 3, y0 + h // 3
            img[y0:y1, x0:x1, c % 3] = 230  # a bright patch in a class colour: the "object"
            Image.fromarray(img).save(val / wnid / f"{stem}.JPEG", quality=90)
            if n % 10:
                (boxes / f"{stem}.xml").write_text(
                    f"<annotation><filename>{stem}</filename><size><width>{w}</width><height>{h}</height>"
                    f"<depth>3</depth></size><object><name>{wnid}</name><bndbox><xmin>{x0 + 1}</xmin>"
                    f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>"
                )
    return val, boxes


def tiny_imagenet_model(path: Path, size: int = 16) -> Path:
    """A conv + linear classifier with 1000 outputs at ``size`` x ``size`` (no labels sidecar)."""
    import torch
    from torch import nn

    from .conftest import export_classic

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(96, 1000),
    )
    with torch.no_grad():
        model[4].weight[:4] *= 8  # the four classes of the folder dominate, so predictions vary
    return export_classic(model, path, (1, 3, size, size))
