"""Shared fixtures: tiny ONNX classifiers exported in the test session (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"


def export_classic(module, path: Path, shape, dynamic: bool = True, opset: int = 17) -> Path:
    """Export with the TorchScript exporter (classic opset ≤17 graphs)."""
    from xplain.testing import export_classic

    return export_classic(module, path, shape, dynamic=dynamic, opset=opset)


def tiny_cnn(seed: int = 0):
    """The example classifier of :mod:`xplain.testing` (conv+BN+ReLU, max-pool, residual, ReLU6)."""
    from xplain.testing import tiny_cnn

    return tiny_cnn(seed)


@pytest.fixture(scope="session")
def tiny_cnn_path(tmp_path_factory) -> Path:
    return export_classic(tiny_cnn(), tmp_path_factory.mktemp("tiny") / "tiny.onnx", (2, 3, 16, 16))


@pytest.fixture(scope="session")
def tiny_transformer(tmp_path_factory):
    """A DeiT-like ViT (class + distillation token, 2 blocks, 32×32 input, 5 classes), for methods
    whose requirements the CNN does not meet (attention)."""
    import xplain

    from .tiny_transformers import TinyDeiT

    path = export_classic(TinyDeiT(), tmp_path_factory.mktemp("deit") / "deit.onnx", (1, 3, 32, 32))
    return xplain.load_model(path, device="cpu")


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
    """Fit ``method`` on 16 example inputs and point the model at the state (see
    :func:`xplain.testing.fit_example_state`)."""
    from xplain.testing import fit_example_state

    fit_example_state(model, method, root)


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


@pytest.fixture(autouse=True)
def _own_verification_cache(tmp_path_factory, monkeypatch):
    """Each test gets an empty verification cache (``xplain.onnx.verified``), so a model verified
    by one test is verified again by the next, as before the cache existed."""
    monkeypatch.setenv("XPLAIN_CACHE_DIR", str(tmp_path_factory.mktemp("xplain-cache")))
    monkeypatch.delenv("XPLAIN_VERIFY", raising=False)
