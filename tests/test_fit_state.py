"""``xplain fit`` streams data into a method's ``fit``; ``explain`` finds the saved state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import xplain
from xplain.cli.app import main
from xplain.data.images import Preprocess, load_image
from xplain.plugins.registry import get_registry


def _fit(model, batches, params, console):
    total, count = None, 0
    for epoch in range(params["epochs"]):  # a fresh stream per epoch
        for x in batches():
            if epoch == 0:
                total = x.sum(0) if total is None else total + x.sum(0)
                count += x.shape[0]
    return {"mean": total / count}, {"count": count}


def _explain(request):
    mean = request.model.fitted_state("test-mean")[0]["mean"]
    return (request.x - mean).sum(dim=1)


class _Plugin:
    @xplain.hookimpl
    def register_methods(self, register):
        register(
            xplain.Method(
                name="test-mean",
                summary="distance to the fitted mean image",
                explain=_explain,
                fit=_fit,
                params=[xplain.Param("epochs", "int", 2, "passes over the data")],
                capabilities=xplain.Capabilities(needs_fitting=True, needs_gradients=False),
            )
        )


@pytest.fixture()
def registry_with_fit_method():
    registry = get_registry()
    if "test-mean" not in registry.methods:
        registry.register_plugin(_Plugin(), "test-fit-plugin")
    return registry


def test_fit_saves_safetensors_state_that_explain_finds(
    registry_with_fit_method, tiny_cnn_path, tmp_path, capsys
):
    data = tmp_path / "data" / "class_a"
    data.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(data / f"{i}.png")
    state = tmp_path / "state"
    img = data / "0.png"
    # explain before fitting: a clear error that names the fit command
    code = main(
        [
            "explain",
            str(tiny_cnn_path),
            str(img),
            "--method",
            "test-mean",
            "--state-dir",
            str(state),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == xplain.ExitCode.INPUT
    assert "xplain fit test-mean" in capsys.readouterr().err
    assert (
        main(
            [
                "fit",
                "test-mean",
                str(tiny_cnn_path),
                str(tmp_path / "data"),
                "--state-dir",
                str(state),
                "--device",
                "cpu",
                "--batch-size",
                "2",
                "--preset",
                "unit",
            ]
        )
        == 0
    )
    saved = list(state.rglob("test-mean.safetensors"))
    assert len(saved) == 1
    meta = json.loads(saved[0].with_suffix(".json").read_text())
    assert meta["count"] == 5 and meta["samples"] == 5 and meta["params"] == {"epochs": 2}
    model = xplain.load_model(tiny_cnn_path)
    model.state_dir = state
    tensors, _ = model.fitted_state("test-mean")
    pre = Preprocess.from_options((3, 16, 16), preset="unit")
    expected = torch.stack(
        [torch.from_numpy(pre(load_image(data / f"{i}.png"))[0]) for i in range(5)]
    ).mean(0)
    torch.testing.assert_close(tensors["mean"], expected)
    capsys.readouterr()
    assert (
        main(
            [
                "explain",
                str(tiny_cnn_path),
                str(img),
                "--method",
                "test-mean",
                "--state-dir",
                str(state),
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "o"),
                "--json",
                "--preset",
                "unit",
            ]
        )
        == 0
    )
    rec = json.loads(capsys.readouterr().out)[0]
    x = torch.from_numpy(pre(load_image(img))[0])
    np.testing.assert_allclose(
        np.load(rec["files"]["npy"]), (x - expected).sum(0).numpy(), rtol=1e-5, atol=1e-6
    )


def test_fit_refuses_methods_without_fit(tiny_cnn_path, tmp_path, capsys):
    assert main(["fit", "saliency", str(tiny_cnn_path), str(tmp_path)]) == xplain.ExitCode.USAGE
    assert "does not learn from data" in capsys.readouterr().err
