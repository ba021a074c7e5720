"""A second model's run into the same --out never replaces the first model's files (29.4)."""

from __future__ import annotations

import json

from tests.conftest import export_classic, tiny_cnn
from xplain.cli.app import main


def _explain(model, image, out, capsys):
    argv = ["explain", str(model), str(image), "--out", str(out), "--device", "cpu"]
    code = main([*argv, "--preset", "unit", "--json", "--no-verify"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)[0], captured.err


def test_two_models_one_folder(tiny_cnn_path, rgb_image, tmp_path, capsys):
    other = export_classic(tiny_cnn(seed=1), tmp_path / "other.onnx", (1, 3, 16, 16))
    out = tmp_path / "out"
    first, err = _explain(tiny_cnn_path, rgb_image, out, capsys)
    assert "another model" not in err
    again, _ = _explain(tiny_cnn_path, rgb_image, out, capsys)  # same model: same files
    assert again["files"] == first["files"]
    second, err = _explain(other, rgb_image, out, capsys)
    assert "another model" in err and str(out / "other") in err
    assert second["files"]["npy"].startswith(str(out / "other"))
    kept = json.loads((out / first["files"]["json"].split("/")[-1]).read_text())
    assert kept["model"]["digest"] == first["model"]["digest"]  # the first model's files kept
    third, _ = _explain(other, rgb_image, out, capsys)  # the second model again: its folder
    assert third["files"] == second["files"]
