"""``xplain eval`` / ``xplain.evaluate``: results, summary, plots, resume after a kill, bad images."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xplain.cli.app import main
from xplain.data.images import Geometry

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MODEL = str(SAMPLES / "shapes_cnn.onnx")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Six shapes_eval images with boxes, one row naming a missing file and one corrupt PNG."""
    root = tmp_path_factory.mktemp("evaldata")
    src = SAMPLES / "shapes_eval"
    rows = []
    with open(src / "manifest.csv") as f:
        for row in list(csv.DictReader(f))[:6]:
            for col in ("path", "boxes"):
                (root / row[col]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src / row[col], root / row[col])
            rows.append(row)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows += [
        {"path": "images/missing.png", "label": "circle", "boxes": ""},
        {"path": "images/broken.png", "label": "square", "boxes": ""},
    ]
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "boxes"])
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


ARGS = [
    "--methods",
    "saliency,random",
    "--metrics",
    "ebpg,bbox-accuracy,ehr,deletion",
    "--metric-param",
    "deletion.step=256",
    "--batch-size",
    "4",
    "--device",
    "cpu",
    "--montage",
    "2",
]


def test_eval_results_summary_plots_resume_and_errors(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", MODEL, str(data), "--out", str(out), *ARGS]) == 0
    lines = _lines(out / "results.jsonl")
    assert len(lines) == 16  # 8 rows x 2 methods, errors included
    errors = [r for r in lines if "error" in r]
    assert len(errors) == 4 and any("not found" in r["error"] for r in errors)
    good = [r for r in lines if "error" not in r]
    assert {"image", "method", "target", "scores"} <= set(good[0])
    assert all(r["target"] == r["label"] for r in good)  # the manifest's label is the target
    assert len(good[0]["curves"]["deletion-curve"]) == 17  # ceil(4096 / 256) + 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == {"saliency": 2, "random": 2}
    for key in ("ebpg", "bbox-accuracy", "ehr"):  # random ranks last on localisation
        assert summary["best"][key] == "saliency"
        assert summary["table"]["random"][key]["mean"] < summary["table"]["saliency"][key]["mean"]
        assert summary["table"]["saliency"][key]["count"] == 6
    assert summary["higher_is_better"]["deletion"] is False
    rows = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    assert {r["method"] for r in rows} == {"saliency", "random"} and len(rows) == 8
    mean = [float(r["mean"]) for r in rows if r["method"] == "saliency" and r["score"] == "ebpg"][0]
    assert mean == pytest.approx(summary["table"]["saliency"]["ebpg"]["mean"], rel=1e-5)
    assert (out / "plots" / "deletion-curve.png").stat().st_size > 1000
    assert (out / "plots" / "montage.png").stat().st_size > 1000
    first = capsys.readouterr().out
    assert "*" in first and "ebpg" in first

    # re-running skips everything; a torn last line (a kill mid-write) is cut and redone
    before = (out / "results.jsonl").read_text()
    assert main(["eval", MODEL, str(data), "--out", str(out), *ARGS]) == 0
    assert (out / "results.jsonl").read_text() == before
    keep = before.splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(keep[:5]) + keep[5][:40])
    capsys.readouterr()
    assert main(["eval", MODEL, str(data), "--out", str(out), *ARGS, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    again = _lines(out / "results.jsonl")
    assert len(again) == 16 and len({r["key"] for r in again}) == 16
    assert {r["key"] for r in again} == {r["key"] for r in lines}
    assert printed["table"]["saliency"]["ebpg"]["mean"] == pytest.approx(
        summary["table"]["saliency"]["ebpg"]["mean"]
    )

    # --no-resume starts over; another seed is another configuration (not skipped)
    assert main(["eval", MODEL, str(data), "--out", str(out), *ARGS, "--no-resume"]) == 0
    assert len(_lines(out / "results.jsonl")) == 16
    assert (
        main(["eval", MODEL, str(data), "--out", str(out), *ARGS, "--seed", "1", "--limit", "2"])
        == 0
    )
    assert len(_lines(out / "results.jsonl")) == 20


def test_eval_resumes_after_being_killed(data, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "xplain",
        "eval",
        MODEL,
        str(data),
        "--out",
        str(out),
        "--methods",
        "saliency",
        "--metrics",
        "sensitivity-n,ebpg",
        "--metric-param",
        "sensitivity-n.subsets=40",
        "--batch-size",
        "1",
        "--device",
        "cpu",
        "--no-plots",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if results.exists() and results.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = results.read_text().count("\n") if results.exists() else 0
    assert partial < 8, "the run finished before it could be killed"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = _lines(results)
    assert len(lines) == 8 and len({r["key"] for r in lines}) == 8
    assert sum("error" in r for r in lines) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["table"]["saliency"]["sensitivity-n"]["count"] == 6


def test_eval_usage_and_input_errors(data, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                MODEL,
                str(data),
                "--methods",
                "saliency",
                "--metrics",
                "nope",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                MODEL,
                str(tmp_path / "none.csv"),
                "--methods",
                "saliency",
                "--metrics",
                "ebpg",
            ]
        )
        == 5
    )
    assert (
        main(
            [
                "eval",
                MODEL,
                str(data),
                "--methods",
                "saliency",
                "--metrics",
                "ebpg",
                "--metric-param",
                "ebpg.energy=loud",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )


def test_box_to_input_through_resize_and_crop():
    # 100x50 image, shorter side resized to 64 (128x64), centre crop 64x64 at left 32
    geo = Geometry((100, 50), (128, 64), (32, 0, 96, 64))
    x0, y0, x1, y1 = geo.box_to_input(11, 6, 30, 25)  # VOC: continuous [10, 30] x [5, 25]
    assert (x0, x1) == pytest.approx((0.0, 30 * 1.28 - 32))
    assert (y0, y1) == pytest.approx((5 * 1.28, 25 * 1.28))
    assert geo.box_to_input(1, 1, 5, 5)[2] == 0.0  # left of the crop: empty after clipping
    ident = Geometry((64, 64), (64, 64), (0, 0, 64, 64))
    assert ident.box_to_input(14, 22, 34, 42) == (13.0, 21.0, 34.0, 42.0)


def test_example_plugin_metric_runs_in_eval(data, tmp_path):
    import xplain
    from xplain.plugins.registry import Registry

    registry = Registry().discover()
    if "example-map-mean" not in registry.metrics:  # not pip-installed here: register it in-process
        sys.path.insert(0, str(SAMPLES.parent / "plugins" / "example-plugin"))
        try:
            import xplain_example
        finally:
            sys.path.pop(0)
        registry.register_plugin(xplain_example, "example")
    model = xplain.load_model(MODEL, device="cpu")
    summary = xplain.evaluate(
        model,
        data,
        methods=["random"],
        metrics=["example-map-mean"],
        out_dir=tmp_path,
        limit=3,
        registry=registry,
        plots=False,
    )
    assert summary["table"]["random"]["example-map-mean"]["count"] == 3
    assert 0.4 < summary["table"]["random"]["example-map-mean"]["mean"] < 0.6  # U[0, 1) noise


def test_eval_where_every_image_fails_exits_5(tmp_path, capsys):
    """Bad images are skipped, but a run that evaluated nothing must not look like a success."""
    (tmp_path / "broken.png").write_bytes(b"not a png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nmissing.png,circle\nbroken.png,square\n")
    code = main(
        [
            "eval",
            MODEL,
            str(manifest),
            "--methods",
            "saliency",
            "--metrics",
            "deletion",  # a box metric without boxes now stops before any work (exit 2)
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
            "--no-plots",
        ]
    )
    assert code == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"xplain: error: {manifest}: nothing could be evaluated: 2 error(s)")
    lines = _lines(tmp_path / "out" / "results.jsonl")
    assert len(lines) == 2 and all(
        "error" in line for line in lines
    )  # the errors are still recorded
