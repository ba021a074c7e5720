"""``xplain explain`` and ``xplain inspect`` end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xplain
from xplain.cli.app import main
from xplain.data.images import Preprocess, load_image

from .conftest import interrupt_on_call


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_explain_writes_outputs_and_json(tiny_cnn_path, rgb_image, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            str(tiny_cnn_path),
            str(rgb_image),
            "--method",
            "saliency",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--json",
            "--preset",
            "unit",
        ]
    )
    assert code == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 1
    rec = records[0]
    for key in ("image", "method", "target", "target_label", "probability", "seconds", "files"):
        assert key in rec
    for kind in ("heatmap", "overlay", "npy", "json"):
        assert (out / rec["files"][kind].split("/")[-1]).exists()
    saved = np.load(rec["files"]["npy"])
    assert saved.shape == (16, 16) and saved.dtype == np.float32
    assert json.loads(Path(rec["files"]["json"]).read_text())["target"] == rec["target"]
    # the saved map is the saliency of the preprocessed image for the top-1 class
    model = xplain.load_model(tiny_cnn_path)
    array, _ = Preprocess.from_options((3, 16, 16), preset="unit")(load_image(rgb_image))
    x = torch.from_numpy(array)[None]
    top = int(model(x).argmax())
    assert rec["target"] == top
    np.testing.assert_allclose(
        saved, xplain.explain(model, x, [top], "saliency").maps[0].numpy(), rtol=1e-5
    )
    assert Image.open(rec["files"]["overlay"]).size == (30, 40)  # the original image size
    assert Image.open(rec["files"]["heatmap"]).size == (16, 16)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_explain_top5_and_several_images(tiny_cnn_path, rgb_image, tmp_path, capsys):
    other = tmp_path / "b.png"
    Image.open(rgb_image).rotate(90).save(other)
    code = main(
        [
            "explain",
            str(tiny_cnn_path),
            str(rgb_image),
            str(other),
            "--target",
            "top5",
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--json",
            "--batch-size",
            "3",
        ]
    )
    assert code == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 8  # 4 classes: top5 is every class, for two images
    for image in (str(rgb_image), str(other)):
        probs = [r["probability"] for r in records if r["image"] == image]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4


def test_explain_target_by_index_and_label(tiny_cnn_path, rgb_image, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("ant\nbee\ncat\ndog\n")
    assert (
        main(
            [
                "explain",
                str(tiny_cnn_path),
                str(rgb_image),
                "--target",
                "cat",
                "--labels",
                str(labels),
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    rec = json.loads(capsys.readouterr().out)[0]
    assert rec["target"] == 2 and rec["target_label"] == "cat"
    assert (
        main(
            [
                "explain",
                str(tiny_cnn_path),
                str(rgb_image),
                "--target",
                "7",
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
            ]
        )
        == xplain.ExitCode.USAGE
    )
    assert "7" in _one_line_error(capsys)


def test_interrupted_explain_leaves_only_whole_files(
    tiny_cnn_path, rgb_image, tmp_path, monkeypatch, capsys
):
    import xplain.run.explaining as explaining

    interrupt_on_call(monkeypatch, explaining, "save_overlay")
    second = tmp_path / "second.png"
    Image.open(rgb_image).save(second)
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            str(tiny_cnn_path),
            str(rgb_image),
            str(second),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--batch-size",
            "1",
        ]
    )
    assert code == xplain.ExitCode.INTERRUPTED
    names = sorted(p.name for p in out.iterdir())
    assert all(not n.startswith(".") and not n.endswith(".tmp") for n in names)
    assert any(
        n.startswith("photo.") and n.endswith(".json") for n in names
    )  # the first image is complete
    assert not any(n.startswith("second.") and n.endswith(".json") for n in names)


def test_inspect_json(tiny_cnn_path, capsys):
    assert main(["inspect", str(tiny_cnn_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (
        data["num_classes"] == 4 and data["verified"] is True and data["softmax_stripped"] is None
    )
    assert data["input"]["shape"] == [None, 3, 16, 16]
    kinds = [a["kind"] for a in data["activations"]]
    assert kinds.count("relu") == 2 and kinds.count("relu6") == 1
    assert data["default_feature_layer"] == data["feature_layers"][-1]["layer"]
    assert data["feature_layers"][-1]["shape"] == [8, 8, 8]
    # IBA's default: the last layer on the coarsest grid >= 1/8 of the input (16 → 2): here 8×8
    assert data["bottleneck_layer"] == data["feature_layers"][-1]["layer"]
    assert {b["kind"] for b in data["bias_layers"]} == {"conv", "linear"}
    assert main(["inspect", str(tiny_cnn_path)]) == 0
    text = capsys.readouterr().out
    assert "verified" in text and "iba" in text


def test_inspect_reports_the_difference_relative_to_the_logits_scale(tmp_path, capsys):
    """Verification bounds max |diff| by 1e-4 × max(1, max |logit|); with logits near 1e9 (as
    random-weight Inception v3 has, near 1e12) float32 alone differs by a large absolute amount,
    so the report carries the relative figure too, and it is the absolute one over the scale."""
    from onnx import numpy_helper

    from . import onnx_factory as f

    model = f.classifier()
    for init in model.graph.initializer:
        if init.name in ("fc_w", "fc_b"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1e9, init.name))
    path = f.save(model, tmp_path / "huge_logits.onnx")
    report = xplain.load_model(path).report
    assert report.verified and report.max_rel_diff is not None
    assert report.max_rel_diff <= report.max_abs_diff / 1e7 + 1e-12
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["max_rel_diff"] == report.max_rel_diff
    small = xplain.load_model(f.save(f.classifier(), tmp_path / "small.onnx")).report
    # logits near 1 (the scale floor): relative and absolute are (nearly) the same number
    assert small.max_rel_diff == pytest.approx(small.max_abs_diff, rel=0.1)


@pytest.mark.parametrize(
    "argv, code",
    [
        (["explain"], 2),
        (["bogus-command"], 2),
        (["inspect", "--no-such-flag", "x"], 2),
    ],
)
def test_usage_errors_exit_2(argv, code):
    assert main(argv) == code


def test_out_of_memory_halves_the_batch(tiny_model, monkeypatch):
    """A CUDA OOM on a batch is retried on halves (simulated: no GPU needed)."""
    import xplain.run.explaining as explaining

    real = explaining.run_method
    sizes = []

    def flaky(model, method, x, targets, values, seed):
        sizes.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(model, method, x, targets, values, seed)

    monkeypatch.setattr(explaining, "run_method", flaky)
    method = xplain.get_registry().method("saliency")
    x = tiny_model.example_input(3)
    out = explaining._run_halving(tiny_model, method, x, torch.tensor([0, 1, 2]), {}, 0)
    assert sizes == [3, 1, 2, 1, 1]
    torch.testing.assert_close(out.maps, xplain.explain(tiny_model, x, [0, 1, 2], "saliency").maps)


def test_each_record_carries_its_own_samples_facts(tiny_cnn_path, rgb_image, tmp_path, capsys):
    """Per-sample facts (FullGrad's completeness terms) are split per record, not copied whole."""
    other = tmp_path / "other.png"
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(other)
    assert (
        main(
            [
                "explain",
                str(tiny_cnn_path),
                str(rgb_image),
                str(other),
                "--method",
                "fullgrad",
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cpu",
                "--json",
                "--preset",
                "unit",
            ]
        )
        == 0
    )
    records = json.loads(capsys.readouterr().out)
    model = xplain.load_model(tiny_cnn_path)
    pre = Preprocess.from_options((3, 16, 16), preset="unit")
    for rec in records:
        x = torch.from_numpy(pre(load_image(rec["image"]))[0])[None]
        logit = float(model(x)[0, rec["target"]])
        assert isinstance(rec["info"]["logit"], float)
        assert rec["info"]["logit"] == pytest.approx(logit, rel=1e-4, abs=1e-5)
        assert all(isinstance(v, float) for v in rec["info"]["bias_terms"].values())
    assert records[0]["info"]["logit"] != records[1]["info"]["logit"]


def test_explain_no_verify_skips_the_onnxruntime_check(
    tiny_cnn_path, rgb_image, tmp_path, capsys, monkeypatch
):
    import xplain.onnx.loader

    def refuse(*args, **kwargs):
        raise xplain.ModelError("verification ran")

    monkeypatch.setattr(xplain.onnx.loader, "_verify", refuse)
    args = ["explain", str(tiny_cnn_path), str(rgb_image), "-m", "gradient", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) != 0  # verified by default
    assert "verification ran" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--no-verify"]) == 0
    assert list((tmp_path / "b").glob("*.png"))
