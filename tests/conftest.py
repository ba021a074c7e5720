"""Shared fixtures: tiny ONNX classifiers exported in the test session (no downloads)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"


def export_classic(module, path: Path, shape, dynamic: bool = True, opset: int = 17) -> Path:
    """Export with the TorchScript exporter (classic opset ≤17 graphs)."""
    import torch

    module.eval()
    x = torch.randn(*shape)
    kwargs = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}} if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["logits"], **kwargs)
    return path


def tiny_cnn(seed: int = 0):
    """Conv+BN+ReLU, max-pool, a residual block, a ReLU6, global pooling, linear head: 4 classes."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
            self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
            self.act = nn.ReLU6()
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            h = self.stem(x)
            h = self.act(h + self.branch(h))
            return self.head(h.mean(dim=(2, 3)))

    model = Tiny()
    with torch.no_grad():  # non-trivial BatchNorm statistics so folding matters
        bn = model.stem[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_cnn_path(tmp_path_factory) -> Path:
    return export_classic(tiny_cnn(), tmp_path_factory.mktemp("tiny") / "tiny.onnx", (2, 3, 16, 16))


@pytest.fixture(scope="session")
def tiny_model(tiny_cnn_path):
    import xplain

    return xplain.load_model(tiny_cnn_path, device="cpu")


@pytest.fixture(scope="session")
def rgb_image(tmp_path_factory) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray((rng.random((40, 30, 3)) * 255).astype("uint8")).save(path)
    return path


def fit_for_tests(model, method, root) -> None:
    """Fit ``method`` on 16 example inputs whose labels cycle over the classes (two batches,
    through the same ``fit(model, batches, params, console)`` contract as ``xplain fit``), save
    the state under ``root`` and point the model at it."""
    import torch

    import xplain
    from xplain.run.fitting import FitConsole
    from xplain.run.state import save_state

    x = model.example_input(16, seed=11)
    ys = torch.arange(16) % model.num_classes

    def batches(labels=False):
        for i in range(0, 16, 8):
            yield (x[i:i + 8], ys[i:i + 8]) if labels else x[i:i + 8]

    params = xplain.validate_params(method.params, {}, method.name)
    tensors, meta = method.fit(model, batches, params, FitConsole())
    save_state(model.digest, method.name, tensors, meta, root=root)
    model.state_dir = root


def interrupt_on_call(monkeypatch, module, name: str, n: int = 2) -> None:
    """Make ``module.name`` raise KeyboardInterrupt on its ``n``-th call (Ctrl-C mid-run)."""
    real = getattr(module, name)
    calls = {"n": 0}

    def interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupt)
