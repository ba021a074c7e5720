"""Bad input to ``eval``, ``fit``, ``explain`` and Ctrl-C: one line naming the file, a documented exit code."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import xplain
from xplain.cli.app import main

from .conftest import interrupt_on_call

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SHAPES = str(SAMPLES / "shapes_cnn.onnx")
MLP = str(SAMPLES / "digits_mlp.onnx")
IMAGE = SAMPLES / "shapes_eval" / "images" / "shapes_000.png"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and err[0].startswith("xplain: error: "), err
    return err[0]


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(IMAGE, folder / "a.png")
    return folder


def _eval(data, out, *extra):
    return main(
        [
            "eval",
            SHAPES,
            str(data),
            "--methods",
            "gradient",
            "--metrics",
            "ebpg",
            "--device",
            "cpu",
            "--no-plots",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_eval_out_is_a_file(images, tmp_path, capsys):
    out = tmp_path / "taken.txt"
    out.write_text("mine")
    assert _eval(images, out) == xplain.ExitCode.USAGE
    line = _one_line_error(capsys)
    assert str(out) in line and "is a file, not a folder" in line
    assert out.read_text() == "mine"


def test_eval_out_below_a_file(images, tmp_path, capsys):
    blocker = tmp_path / "taken.txt"
    blocker.write_text("mine")
    out = blocker / "sub"
    assert _eval(images, out) == xplain.ExitCode.USAGE
    line = _one_line_error(capsys)
    assert str(out) in line and "cannot create the folder" in line


def test_explain_out_is_a_file(tmp_path, capsys):
    out = tmp_path / "taken.txt"
    out.write_text("mine")
    code = main(
        ["explain", SHAPES, str(IMAGE), "--method", "tr-gbp", "--device", "cpu", "--out", str(out)]
    )
    assert code == xplain.ExitCode.USAGE
    assert str(out) in _one_line_error(capsys)
    assert out.read_text() == "mine"


def test_fit_state_dir_is_a_file(tmp_path, capsys, monkeypatch):
    state = tmp_path / "state.txt"
    state.write_text("mine")
    args = [
        "fit",
        "mip-in",
        MLP,
        str(SAMPLES / "digits_data"),
        "--device",
        "cpu",
        "--classes",
        "0",
        "--samples",
        "2",
    ]
    assert main([*args, "--state-dir", str(state)]) == xplain.ExitCode.USAGE
    line = _one_line_error(capsys)
    assert str(state) in line and "--state-dir is a file" in line
    monkeypatch.setenv("XPLAIN_STATE_DIR", str(state))
    assert main(args) == xplain.ExitCode.USAGE
    line = _one_line_error(capsys)
    assert str(state) in line and "XPLAIN_STATE_DIR is a file" in line
    assert state.read_text() == "mine"


def test_fit_class_without_images_names_the_data(tmp_path, capsys):
    data = tmp_path / "digits"
    (data / "0").mkdir(parents=True)
    (data / "1").mkdir()
    for name in sorted(p.name for p in (SAMPLES / "digits_data" / "0").iterdir())[:2]:
        shutil.copy(SAMPLES / "digits_data" / "0" / name, data / "0" / name)
    (data / "1" / "readme.txt").write_text("no images here")
    state = tmp_path / "state"
    code = main(
        [
            "fit",
            "mip-in",
            MLP,
            str(data),
            "--device",
            "cpu",
            "--classes",
            "0,1",
            "--state-dir",
            str(state),
        ]
    )
    assert code == xplain.ExitCode.INPUT
    line = _one_line_error(capsys)
    assert f"{data}: mip-in needs at least 2 samples" in line and "[1]" in line
    assert not list(state.rglob("*.safetensors"))


@pytest.mark.parametrize(
    "text, problem",
    [
        (b"", "the manifest is empty"),
        (b"images/a.png,square\n", "needs a header with a 'path' column"),
        (b"\xff\xfe\x00garbage\x81", "cannot read the manifest"),
    ],
)
def test_eval_unusable_manifest(tmp_path, capsys, text, problem):
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(text)
    out = tmp_path / "out"
    assert _eval(manifest, out) == xplain.ExitCode.INPUT
    line = _one_line_error(capsys)
    assert str(manifest) in line and problem in line
    assert not (out / "results.jsonl").exists()


def test_eval_ctrl_c_exits_130_with_results_intact(tmp_path, capsys, monkeypatch):
    import xplain.run.scoring as scoring

    data = tmp_path / "images"
    data.mkdir()
    for k in range(4):
        shutil.copy(IMAGE, data / f"{k}.png")
    real = scoring._score_method
    interrupt_on_call(monkeypatch, scoring, "_score_method")
    out = tmp_path / "out"
    assert _eval(data, out, "--batch-size", "2") == xplain.ExitCode.INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines() == ["xplain: interrupted"]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all("scores" in json.loads(line) for line in lines)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    monkeypatch.setattr(scoring, "_score_method", real)
    assert _eval(data, out, "--batch-size", "2") == 0  # resumes: the two done images are skipped
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(line)["image"] for line in lines}) == 4


def test_manifest_row_naming_a_folder_says_so(tmp_path):
    from xplain.data.datasets import read_dataset

    (tmp_path / "adir").mkdir()
    shutil.copy(IMAGE, tmp_path / "a.png")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\nadir,square\na.png,square\n")
    bad, good = read_dataset(manifest, class_names=["circle", "square", "triangle", "cross"])
    assert bad.error == "line 2: a folder, not an image: adir"
    assert good.error is None and good.label == 1


def test_mip_in_state_of_another_version_names_the_model(tmp_path, capsys):
    state = tmp_path / "state"
    data = str(SAMPLES / "digits_data")
    assert (
        main(
            [
                "fit",
                "mip-in",
                MLP,
                data,
                "--device",
                "cpu",
                "--classes",
                "0",
                "--samples",
                "2",
                "--state-dir",
                str(state),
            ]
        )
        == 0
    )
    capsys.readouterr()
    (meta_path,) = state.rglob("mip-in.json")
    meta = json.loads(meta_path.read_text())
    meta["state_version"] = -1
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            MLP,
            str(SAMPLES / "images" / "digit_3.png"),
            "--method",
            "mip-in",
            "--target",
            "0",
            "--device",
            "cpu",
            "--state-dir",
            str(state),
            "--out",
            str(out),
        ]
    )
    assert code == xplain.ExitCode.INPUT
    line = _one_line_error(capsys)
    assert f"{MLP}: mip-in state was written by another version" in line
    assert not out.exists()  # nothing left behind, not even an empty folder


def _digits_manifest(tmp_path, extra_rows: list[str]) -> Path:
    rows = ["path,label"]
    for c in ("0", "1"):
        for name in sorted(p.name for p in (SAMPLES / "digits_data" / c).iterdir())[:2]:
            rows.append(f"{SAMPLES / 'digits_data' / c / name},{c}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows + extra_rows) + "\n")
    return manifest


def test_fit_with_only_bad_rows_says_why(tmp_path, capsys):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(f"path,label\n{SAMPLES / 'digits_data' / '0' / '004.png'},99\n")
    code = main(
        [
            "fit",
            "mip-in",
            MLP,
            str(manifest),
            "--device",
            "cpu",
            "--state-dir",
            str(tmp_path / "state"),
        ]
    )
    assert code == xplain.ExitCode.INPUT
    line = _one_line_error(capsys)
    assert (
        f"{manifest}: no usable images (1 unusable row(s), e.g. line 2: label index 99 is out of range"
        in line
    )


def test_fit_skipping_bad_rows_warns(tmp_path, capsys):
    manifest = _digits_manifest(tmp_path, ["missing.png,0"])
    state = tmp_path / "state"
    code = main(
        [
            "fit",
            "mip-in",
            MLP,
            str(manifest),
            "--device",
            "cpu",
            "--classes",
            "0,1",
            "--state-dir",
            str(state),
        ]
    )
    assert code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"xplain: warning: {manifest}: skipped 1 unusable row(s), e.g. line 6: image not found: missing.png"
    ]
    assert json.loads(next(state.rglob("mip-in.json")).read_text())["samples"] == 4


def test_eval_out_not_writable(images, tmp_path, capsys, monkeypatch):
    import xplain.cli.app as cli

    out = tmp_path / "readonly"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(
        cli.os,
        "access",  # root may write anywhere: pretend it may not write here
        lambda path, mode: real(path, mode) and not (Path(path) == out and mode & os.W_OK),
    )
    assert _eval(images, out) == xplain.ExitCode.USAGE
    assert _one_line_error(capsys) == f"xplain: error: {out}: --out is not writable"
    assert not list(out.iterdir())
