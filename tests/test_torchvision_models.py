"""Full-size torchvision classifiers through the loader, ``inspect`` and ``explain``.

vgg11, resnet18, mobilenet_v2, squeezenet1_1 and efficientnet_b0 (``weights=None``: nothing is
downloaded), each exported twice: the classic TorchScript exporter at opset 17, and torch's
default dynamo exporter (opset 18+, weights in an external ``PATH.data`` file).

Untrained torchvision models answer with near-constant, near-zero logits (identity BatchNorm,
tiny classifier init), which makes "matches onnxruntime within 1e-4 · max(1, |logits|)" say
nothing. So the biases and BatchNorm affines are randomised and the BN statistics recomputed on
random batches first: activations are O(1) all the way and logits vary per class and input.

Marked ``slow`` but part of the default run (``-m "not slow"`` skips it). Inputs are 3×64×64
except VGG's 224×224 (the classic exporter cannot export VGG's adaptive 7×7 pool from a 2×2
map). Each (model, exporter) is exported and loaded once (a module-scoped fixture); the CLI
tests reuse that load for the big models and load from the file again for SqueezeNet only, to
keep the file under about four minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import xplain
import xplain.run.api
from xplain.cli.app import main as cli
from xplain.graph.model import RECTIFIERS
from xplain.onnx.export import export_classifier
from xplain.run.reference_networks import make_source

pytestmark = pytest.mark.slow

TOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Expect:
    size: int  #: input height and width
    kinds: frozenset  #: activation kinds inspect must report
    feature: tuple  #: default feature layer C×H×W
    feature_module: str  #: class name of the default feature layer's module


MODELS = {
    "vgg11": Expect(224, frozenset({"relu"}), (512, 7, 7), "AvgPool2d"),
    "resnet18": Expect(64, frozenset({"relu"}), (512, 2, 2), "ReLU"),  # the last post-add ReLU
    "mobilenet_v2": Expect(64, frozenset({"relu6"}), (1280, 2, 2), "ReLU6"),
    "squeezenet1_1": Expect(64, frozenset({"relu"}), (1000, 3, 3), "ReLU"),
    # SiLU reaches onnx2torch as Sigmoid and Mul: no rectifier anywhere
    "efficientnet_b0": Expect(64, frozenset({"sigmoid"}), (1280, 2, 2), "OnnxBinaryMathOperation"),
}
EXPORTERS = ("classic17", "dynamo")
#: models whose CLI tests load the file again (cheap); the others reuse the fixture's load
RELOAD_IN_CLI = {"squeezenet1_1"}


@dataclasses.dataclass
class Case:
    name: str
    exporter: str
    expect: Expect
    source: nn.Module
    path: Path
    model: xplain.Model
    seconds: dict


@pytest.fixture(scope="module", params=[(n, e) for n in MODELS for e in EXPORTERS], ids="-".join)
def case(request, tmp_path_factory):
    name, exporter = request.param
    expect = MODELS[name]
    root = tmp_path_factory.mktemp(f"{name}-{exporter}")
    path = root / f"{name}.onnx"
    began = time.perf_counter()
    source = make_source(name, expect.size)
    export_classifier(
        source, path, (3, expect.size, expect.size), "dynamo" if exporter == "dynamo" else "classic"
    )
    exported = time.perf_counter()
    model = xplain.load_model(path, device="cpu")
    loaded = time.perf_counter()
    yield Case(
        name,
        exporter,
        expect,
        source,
        path,
        model,
        {"export": exported - began, "load": loaded - exported},
    )
    for file in root.iterdir():  # VGG writes 0.5 GB per export
        file.unlink()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture()
def cli_load(case, monkeypatch):
    """Let the CLI reuse the fixture's verified load of a big model (the load itself is
    tested by :func:`test_load_verifies`); SqueezeNet is loaded from the file for real."""
    if case.name in RELOAD_IN_CLI:
        return
    real = xplain.run.api.load_model

    def cached(path, device="cpu", **kwargs):
        if Path(path) != case.path or str(device) != "cpu":
            return real(path, device=device, **kwargs)
        assert (
            kwargs.get("verify") is not False and kwargs.get("labels") is None
        )  # None: the cache decides
        return case.model

    monkeypatch.setattr(xplain.run.api, "load_model", cached)


def test_load_verifies(case):
    model, report = case.model, case.model.report
    assert report.verified and report.batch_checked
    assert model.num_classes == 1000 and not model.spec.fixed_batch
    assert (model.spec.channels, model.spec.height, model.spec.width) == (
        3,
        case.expect.size,
        case.expect.size,
    )
    if case.exporter == "dynamo":
        assert Path(f"{case.path}.data").exists()  # weights in external data
        assert report.opset >= 18 and report.opset_used == 17
        assert any(f"converted opset {report.opset} -> 17" in n for n in report.notes), report.notes
    else:
        assert report.opset == report.opset_used == 17
    x = torch.randn(
        2, 3, case.expect.size, case.expect.size, generator=torch.Generator().manual_seed(7)
    )
    with torch.no_grad():
        got, ref = model(x).double(), case.source(x).double()
    assert ref.std() > 1e-2  # logits that vary: the comparison below means something
    diff = float((got - ref).abs().max())
    assert diff <= TOL * float(ref.abs().max()), (
        f"max |diff| {diff:.3g} vs max |logit| {float(ref.abs().max()):.3g}"
    )
    print(
        f"{case.name} {case.exporter}: export {case.seconds['export']:.1f}s, load {case.seconds['load']:.1f}s"
    )


def test_graph_knowledge(case):
    model = case.model
    kinds = {a.kind for a in model.activations()}
    assert kinds == case.expect.kinds
    if case.name == "efficientnet_b0":
        assert not kinds & RECTIFIERS
        # the Sigmoid·Mul pairs are SiLU (and the SE blocks' gates): rectifier methods refuse it
        census = model.nonlinearities()
        assert len(census["silu"]) == 49 and len(census["gate"]) == 16 and "sigmoid" not in census
        assert "SiLU (49)" in model.requirement_problem("rectifiers")
    else:
        assert model.requirement_problem("rectifiers") is None
    default = model.default_feature_layer()
    assert default.shape == case.expect.feature
    assert type(model.module(default.name)).__name__ == case.expect.feature_module
    if case.name == "resnet18":  # the post-add ReLU, not a node inside the last block's branch
        (source,) = model.node(default.name).all_input_nodes
        assert type(model.graph.get_submodule(source.target)).__name__ == "OnnxBinaryMathOperation"
    assert model.bias_layers() and all(torch.isfinite(b.bias).all() for b in model.bias_layers())
    maps = xplain.explain(model, model.example_input(2), method="saliency").maps
    assert maps.shape == (2, case.expect.size, case.expect.size) and maps.abs().sum() > 0


def test_inspect_json(case, cli_load, capsys):
    assert cli(["inspect", str(case.path), "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verified"] is True and data["num_classes"] == 1000 and data["fixed_batch"] is False
    assert data["input"]["shape"] == [None, 3, case.expect.size, case.expect.size]
    assert data["opset_used"] == 17
    assert {a["kind"] for a in data["activations"]} == case.expect.kinds
    shapes = {f["layer"]: tuple(f["shape"]) for f in data["feature_layers"]}
    assert shapes[data["default_feature_layer"]] == case.expect.feature
    assert data["bias_layers"] and data["op_counts"].get("Conv", 0) > 0
    if case.exporter == "dynamo":
        assert any("converted opset" in n for n in data["notes"])


def test_explain_cli_writes_four_files(case, cli_load, image, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli(
        [
            "explain",
            str(case.path),
            str(image),
            "--method",
            "saliency",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 4, files
    suffixes = sorted(name.split(".", 3)[-1] for name in files)
    assert suffixes == ["heatmap.png", "json", "npy", "overlay.png"]
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["method"] == "saliency" and record["model"]["digest"] == case.model.digest
    assert 0 <= record["target"] < 1000
    saliency = np.load(next(out.glob("*.npy")))
    assert saliency.ndim == 2 and np.isfinite(saliency).all() and (saliency >= 0).all()
