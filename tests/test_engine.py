"""The forward engine (issue 21): ``Model.infer`` on onnxruntime gives torch's numbers.

Each test compares the two engines on the same file: logits, occlusion maps and deletion /
insertion scores agree to 1e-5 (relative to the largest value), on the sample models and a tiny
ViT from both exporters; a seeded run repeats byte for byte within an engine; and every case where
only the torch graph computes the right thing (a live swap, insert or tap, weights edited in place)
runs on torch.
"""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
import torch

import xplain
from xplain.cli.app import main
from xplain.onnx.engine import describe, forward_counts

from .conftest import SAMPLES, export_classic

REL = 1e-5
SAMPLE_FILES = (
    "shapes_cnn.onnx",
    "shapes_cnn.dynamo.onnx",
    "digits_cnn.onnx",
    "digits_cnn.dynamo.onnx",
    "digits_mlp_softmax.onnx",
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _pair(path):
    return (
        xplain.load_model(path, engine="onnxruntime"),
        xplain.load_model(path, engine="torch"),
    )


def _served(model) -> dict:
    return dict(forward_counts(model))


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_logits_and_occlusion_agree_on_sample_models(name):
    ort_model, torch_model = _pair(SAMPLES / name)
    x = ort_model.example_input(3, seed=2)
    logits = ort_model.infer(x)
    assert _served(ort_model) == {"onnxruntime": 1}
    assert _rel(logits, torch_model.infer(x)) <= REL
    assert _served(torch_model) == {"torch": 1}
    if name == "digits_mlp_softmax.onnx":  # the stripped softmax is stripped on both engines
        assert ort_model.report.softmax_stripped == "Softmax"
        assert not torch.allclose(logits.sum(1), torch.ones(3), atol=1e-3)
    targets = logits.argmax(1)
    a = xplain.explain(ort_model, x, targets, "occlusion").maps
    b = xplain.explain(torch_model, x, targets, "occlusion").maps
    assert _rel(a, b) <= REL and b.abs().max() > 0
    assert _served(ort_model)["onnxruntime"] > 2 and set(_served(ort_model)) == {"onnxruntime"}


@pytest.mark.parametrize("exporter", ["classic", "dynamo"])
def test_tiny_vit_agrees_between_engines(exporter):
    from .modern_models import export_model

    ort_model, torch_model = _pair(export_model("vit", exporter))
    x = ort_model.example_input(2, seed=4)
    assert _rel(ort_model.infer(x), torch_model.infer(x)) <= REL
    targets = torch.tensor([0, 1])
    params = {"patch": 8, "stride": 8}
    a = xplain.explain(ort_model, x, targets, "occlusion", params).maps
    b = xplain.explain(torch_model, x, targets, "occlusion", params).maps
    assert _rel(a, b) <= REL
    assert "onnxruntime" in _served(ort_model) and "onnxruntime" not in _served(torch_model)


def _eval(model, out, engine):
    return xplain.evaluate(
        model,
        SAMPLES / "shapes_eval",
        methods=["occlusion", "saliency"],
        metrics=["deletion", "insertion"],
        metric_params={"deletion": {"step": 256}, "insertion": {"step": 256}},
        out_dir=out,
        limit=3,
        plots=False,
        report_images=0,
        montage=0,
        workers=0,
        engine=engine,
    )


def _records(out) -> dict:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {(r["image"], r["method"]): r for r in map(json.loads, lines)}


def test_eval_scores_agree_and_repeat_byte_for_byte(tmp_path):
    model = xplain.load_model(SAMPLES / "shapes_cnn.onnx")
    _eval(model, tmp_path / "ort", "onnxruntime")
    _eval(model, tmp_path / "ort2", "onnxruntime")
    _eval(model, tmp_path / "torch", "torch")
    ort, again, eager = (_records(tmp_path / d) for d in ("ort", "ort2", "torch"))
    assert ort.keys() == eager.keys() and len(ort) == 6
    for key, r in ort.items():
        # occlusion and both metrics ask model.infer; saliency's gradient is plain torch autograd
        assert r["engine"] == "onnxruntime"
        assert eager[key]["engine"] == "torch"
        assert r["scores"] == again[key]["scores"] and r["curves"] == again[key]["curves"]
        for metric in ("deletion", "insertion"):
            a, b = r["scores"][metric], eager[key]["scores"][metric]
            assert abs(a - b) <= REL * max(abs(b), 1e-6), (key, metric, a, b)
            curve_a, curve_b = (
                torch.tensor(r["curves"][f"{metric}-curve"]),
                torch.tensor(eager[key]["curves"][f"{metric}-curve"]),
            )
            assert _rel(curve_a, curve_b) <= REL
    run = json.loads((tmp_path / "ort" / "run.json").read_text())
    assert run["engine"]["requested"] == "onnxruntime" and run["engine"]["forward"] == "onnxruntime"
    assert json.loads((tmp_path / "torch" / "run.json").read_text())["engine"]["forward"] == "torch"


def test_modified_graph_runs_on_torch(tiny_cnn_path):
    model = xplain.load_model(tiny_cnn_path, engine="auto")
    x = model.example_input(2)
    clean = model.infer(x)
    assert _served(model) == {"onnxruntime": 1}
    relu = next(a for a in model.activations() if a.kind == "relu")
    with model.swap_modules({relu.name: torch.nn.Identity()}):
        assert model.graph_modified
        swapped = model.infer(x)
    assert _served(model) == {"onnxruntime": 1, "torch": 1}
    assert not torch.allclose(swapped, clean)  # the swap took effect: torch ran it
    with model.tap([relu.name], gradients=False) as tap:
        model.infer(x)
        assert tap.activations[relu.name].shape[0] == 2  # the hook fired: torch ran it
    with model.insert_after({relu.name: torch.nn.Identity()}):
        model.infer(x)
    assert _served(model)["torch"] == 3 and not model.graph_modified
    assert torch.equal(model.infer(x), clean) and _served(model)["onnxruntime"] == 2


def test_weights_edited_in_place_run_on_torch(tiny_cnn_path):
    model = xplain.load_model(tiny_cnn_path)
    x = model.example_input(2)
    model.infer(x)
    with torch.no_grad():
        next(model.graph.parameters()).mul_(2.0)
    edited = model.infer(x)
    assert _served(model) == {"onnxruntime": 1, "torch": 1}
    with torch.no_grad():
        assert torch.equal(edited, model(x))


def test_fixed_batch_graph_runs_sample_by_sample(tmp_path):
    from xplain.testing import tiny_cnn

    path = export_classic(tiny_cnn(), tmp_path / "fixed.onnx", (1, 3, 16, 16), dynamic=False)
    ort_model, torch_model = _pair(path)
    assert ort_model.spec.fixed_batch
    x = ort_model.example_input(3, seed=5)
    assert _rel(ort_model.infer(x), torch_model.infer(x)) <= REL
    assert _served(ort_model) == {"onnxruntime": 1}


def test_pickled_model_rebuilds_its_session(tiny_cnn_path):
    model = xplain.load_model(tiny_cnn_path)
    x = model.example_input(2)
    first = model.infer(x)
    copy = pickle.loads(pickle.dumps(model))  # Ray ships models this way
    assert torch.equal(copy.infer(x), first) and copy.engine._session is not None


def test_a_session_that_disagrees_is_dropped(tiny_cnn_path):
    model = xplain.load_model(tiny_cnn_path)
    with torch.no_grad():  # before the session exists: the torch graph no longer is the file
        for p in model.graph.parameters():
            p.add_(0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.infer(model.example_input(2))
        model.infer(model.example_input(2))
    assert sum("differ from torch" in str(w.message) for w in caught) == 1
    assert describe(model)["forward"] == "torch" and _served(model) == {"torch": 2}
    strict = xplain.load_model(tiny_cnn_path, engine="onnxruntime")
    with torch.no_grad():
        next(strict.graph.parameters()).add_(0.5)
    with pytest.raises(xplain.UsageError, match="differ from torch"):
        strict.infer(strict.example_input(2))


def test_engine_choices_and_refusals(tiny_cnn_path):
    with pytest.raises(xplain.UsageError, match="unknown engine"):
        xplain.load_model(tiny_cnn_path, engine="tensorrt")
    model = xplain.load_model(tiny_cnn_path, engine="torch")
    model.infer(model.example_input(1))
    assert _served(model) == {"torch": 1} and describe(model)["forward"] == "torch"
    model.engine = None  # a plugin loader's model: no ONNX graph to run
    with pytest.raises(xplain.UsageError, match="onnxruntime"):
        xplain.explain(model, model.example_input(1), [0], "occlusion", engine="onnxruntime")
    assert describe(model)["forward"] == "torch"


def test_cli_engine_option(tmp_path, capsys):
    image = SAMPLES / "images" / "shapes_square_cross.png"
    args = ["explain", str(SAMPLES / "shapes_cnn.onnx"), str(image), "-m", "occlusion"]
    assert main([*args, "--engine", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown engine" in err[0]
    assert main([*args, "--engine", "onnxruntime", "--json", "-o", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["engine"] == "onnxruntime"
