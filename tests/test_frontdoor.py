"""The Python front door: images and PIL in, overlays and the CLI's files out; torch modules
through the hardened loader; Captum-style targets and baselines; scoring maps made elsewhere;
ImageNet names by default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import xplain
from xplain.cli.app import main
from xplain.data.images import Preprocess, load_image

from .conftest import export_classic


def test_explain_a_path_equals_the_cli(tiny_cnn_path, rgb_image, tmp_path, capsys):
    """A path through xplain.explain gives the CLI's map, and .save/.overlay its very files."""
    cli = tmp_path / "cli"
    code = main(["explain", str(tiny_cnn_path), str(rgb_image), "--out", str(cli)])
    assert code == 0
    model = xplain.load_model(tiny_cnn_path)
    result = xplain.explain(model, rgb_image, method="saliency")
    (record,) = [json.loads(p.read_text()) for p in cli.glob("*.json")]
    assert int(result.targets[0]) == record["target"]
    np.testing.assert_allclose(result.maps[0].numpy(), np.load(record["files"]["npy"]), rtol=1e-6)
    py = tmp_path / "py"
    saved = result.save(py)
    assert sorted(p.name for p in py.iterdir()) == sorted(p.name for p in cli.iterdir())
    for kind in ("overlay", "heatmap"):
        a = np.asarray(Image.open(record["files"][kind]))
        b = np.asarray(Image.open(saved[0]["files"][kind]))
        assert np.array_equal(a, b), kind
    assert np.array_equal(
        np.asarray(result.overlay()), np.asarray(Image.open(record["files"]["overlay"]))
    )
    assert saved[0]["geometry"] == record["geometry"]
    # a PIL image explains the same; the panel is a figure with the photo and one overlay
    again = xplain.explain(model, Image.open(rgb_image), method="saliency")
    torch.testing.assert_close(again.maps, result.maps)
    assert len(again.panel().axes) >= 2


def test_preprocess_follows_the_cli_rules(tiny_model, rgb_image):
    x, geometry = tiny_model.preprocess(rgb_image, preset="unit", resize=20)
    array, expected = Preprocess.for_model(tiny_model, preset="unit", resize=20)(
        load_image(rgb_image)
    )
    assert x.shape == (1, 3, 16, 16) and x.device == tiny_model.device
    np.testing.assert_array_equal(x[0].numpy(), array)
    assert geometry == expected and geometry.resized_size == (20, 26)
    # the default for a 16-pixel 3-channel input is the unit preset: pixels in [0, 1]
    x, _ = tiny_model.preprocess(load_image(rgb_image))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with pytest.raises(xplain.UsageError):
        tiny_model.preprocess(42)


def test_integer_target_broadcasts_and_target_conflicts(tiny_model):
    x = tiny_model.example_input(3)
    one = xplain.explain(tiny_model, x, target=2, method="gradient")
    each = xplain.explain(tiny_model, x, [2, 2, 2], method="gradient")
    assert one.targets.tolist() == [2, 2, 2]
    torch.testing.assert_close(one.maps, each.maps)
    with pytest.raises(xplain.UsageError):
        xplain.explain(tiny_model, x, [1, 2, 3], method="gradient", target=2)
    with pytest.raises(xplain.UsageError):
        xplain.explain(tiny_model, x, [1, 2], method="gradient")


def test_baselines_tensor_is_captums_integrated_gradients(tiny_model):
    from captum.attr import IntegratedGradients

    x = tiny_model.example_input(2, seed=1)
    base = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(5))  # broadcast over B
    ours = xplain.explain(
        tiny_model, x, target=1, method="integrated-gradients", params={"steps": 8}, baselines=base
    )
    theirs = IntegratedGradients(tiny_model.graph).attribute(
        x, baselines=base.expand_as(x), target=1, n_steps=8
    )
    torch.testing.assert_close(ours.maps, theirs.sum(dim=1), rtol=1e-4, atol=1e-6)
    assert ours.info["baseline"] == "tensor"
    with pytest.raises(xplain.UsageError, match="takes no baseline"):
        xplain.explain(tiny_model, x, method="saliency", baselines=base)
    with pytest.raises(xplain.UsageError, match="do not fit"):
        xplain.explain(tiny_model, x, method="integrated-gradients", baselines=torch.zeros(5))


def test_score_maps_made_elsewhere(tiny_model):
    """EBPG by hand: a map with 3 units of positive energy inside the box and 1 outside."""
    x = tiny_model.example_input(2)
    maps = torch.zeros(2, 3, 16, 16)  # channels are summed
    maps[:, 0, 2, 2] = 1.0
    maps[:, 1, 2, 3] = 2.0
    maps[:, 0, 10, 10] = 1.0
    maps[:, 2, 12, 12] = -5.0  # negative energy is not counted (energy = positive part)
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    scores = xplain.score("ebpg", tiny_model, x, 0, maps, boxes=[box, box])
    torch.testing.assert_close(scores["ebpg"], torch.tensor([0.75, 0.75]))
    with pytest.raises(xplain.UsageError):
        xplain.score("ebpg", tiny_model, x, 0, torch.zeros(2, 8, 8), boxes=[box, box])


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, image):  # not named x: torch.export keys dynamic shapes by the name
        return self.fc(torch.relu(self.conv(image)).mean(dim=(2, 3)))


def test_torch_module_through_the_front_door():
    net = _Net().eval()
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    model = xplain.load_model(net, x)
    assert "dynamo exporter" in model.report.producer
    torch.testing.assert_close(model(x), net(x), rtol=1e-5, atol=1e-6)
    # explain(module, ...) exports on the fly; the map is the module's own input gradient
    result = xplain.explain(net, x, target=3, method="gradient")
    leaf = x.clone().requires_grad_(True)
    net(leaf)[:, 3].sum().backward()
    torch.testing.assert_close(result.maps, leaf.grad.sum(dim=1), rtol=1e-5, atol=1e-7)
    assert not net.training  # left as found
    with pytest.raises(xplain.UsageError):
        xplain.load_model(net)  # no example input


def test_torch_module_falls_back_to_the_classic_exporter(monkeypatch):
    from xplain.run import torch_models

    real = torch_models.export_classifier

    def dynamo_fails(module, path, shape, exporter="classic", **kw):
        if exporter == "dynamo":
            raise RuntimeError("torch.export cannot trace this")
        return real(module, path, shape, exporter=exporter, **kw)

    monkeypatch.setattr(torch_models, "export_classifier", dynamo_fails)
    net = _Net().eval()
    x = torch.randn(1, 3, 12, 12)
    model = xplain.load_model(net, x[0])
    assert "classic exporter" in model.report.producer
    torch.testing.assert_close(model(x), net(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(xplain.ModelError, match="dynamo: RuntimeError: torch.export cannot"):
        xplain.load_model(net, x, exporter="dynamo")


def _classifier(tmp_path, classes: int):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, classes)).eval()
    return export_classic(net, tmp_path / f"c{classes}.onnx", (1, 3, 8, 8))


def test_imagenet_names_by_default(tmp_path, rgb_image, capsys):
    path = _classifier(tmp_path, 1000)
    model = xplain.load_model(path, verify=False)
    assert model.labels[0] == "tench" and model.labels_source.startswith("imagenet (default")
    assert xplain.load_model(path, verify=False, labels="none").labels is None
    wider = xplain.load_model(_classifier(tmp_path, 1001), verify=False)
    assert wider.labels[:2] == ["background", "tench"]
    assert xplain.load_model(_classifier(tmp_path, 7), verify=False).labels is None
    out = tmp_path / "out"
    assert (
        main(["explain", str(path), str(rgb_image), "--out", str(out), "--no-verify", "--json"])
        == 0
    )
    captured = capsys.readouterr()
    record = json.loads(captured.out)[0]
    assert record["target_label"] == model.labels[record["target"]]
    assert record["labels"] == "imagenet (default for 1000 classes)"
    assert "ImageNet class names" in captured.err and "--labels none" in captured.err
    args = ["explain", str(path), str(rgb_image), "--out", str(out), "--no-verify", "--json"]
    assert main([*args, "--labels", "none"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["target_label"] is None
    assert "ImageNet" not in captured.err
