"""Resume, shards and Ray with ``--protocol`` (issue 23), on the shipped shapes data: a small
protocol (2 methods × 3 metrics, one of them the dataset-scope ``sufficiency``) gives the same
protocol.json uninterrupted, interrupted and resumed, as two shards merged by ``eval summarize``,
and on two local Ray workers; sufficiency does not depend on the batch size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import xplain.run.evaluation as evaluation
from xplain.cli.app import main

from .conftest import SAMPLES, interrupt_on_call

DATA = SAMPLES / "shapes_eval" / "manifest.csv"
MODEL = SAMPLES / "shapes_cnn.onnx"
PROTOCOL = {
    "name": "small-scale",
    "criteria": ["faithfulness", "complexity"],
    "methods": [{"method": "gradient"}, {"method": "random"}],
    "metrics": [
        {
            "metric": "sufficiency",
            "criterion": "faithfulness",
            "params": {"group": 0, "threshold": 0.95},
        },
        {"metric": "deletion", "criterion": "faithfulness", "params": {"step": 256}},
        {"metric": "sparseness", "criterion": "complexity"},
    ],
}


@pytest.fixture(scope="module")
def protocol(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("protocol") / "small.json"
    f.write_text(json.dumps(PROTOCOL))
    return f


def _eval(protocol: Path, out: Path, *extra: str) -> int:
    args = ["eval", str(MODEL), str(DATA), "--protocol", str(protocol), "--out", str(out)]
    opts = ["--limit", "9", "--no-plots", "--report-images", "0", "--device", "cpu"]
    return main([*args, *opts, "--batch-size", "3", "--workers", "0", *extra])


def _ranking(out: Path) -> str:
    """protocol.json as text (it holds NaN agreements, which compare unequal as floats)."""
    return json.dumps(json.loads((out / "protocol.json").read_text()), sort_keys=True)


def _sufficiency(out: Path) -> dict:
    got = json.loads((out / "dataset-scores.json").read_text())["scores"]
    return {k: v["sufficiency"] for k, v in got.items()}


@pytest.fixture(scope="module")
def reference(protocol, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    assert _eval(protocol, out) == 0
    return out


def test_reference_scores_sufficiency_over_every_image(reference):
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["table"]["gradient"]["sufficiency"]["count"] == 9
    assert len(_sufficiency(reference)) == 18  # 9 images × 2 methods
    assert json.loads(_ranking(reference))["count"]["sufficiency"] == {"gradient": 9, "random": 9}
    assert 0 < summary["table"]["gradient"]["sufficiency"]["mean"] < 1


def test_interrupted_protocol_run_resumes_to_the_same_protocol_json(
    protocol, reference, tmp_path, monkeypatch
):
    out = tmp_path / "resumed"
    interrupt_on_call(monkeypatch, evaluation, "append_records", n=2)  # after one batch
    assert _eval(protocol, out) != 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert 0 < len(lines) < 18
    monkeypatch.undo()
    assert _eval(protocol, out, "--resume", "--batch-size", "4") == 0  # other batches too
    assert _ranking(out) == _ranking(reference)
    assert _sufficiency(out) == pytest.approx(_sufficiency(reference), abs=1e-7)


def test_two_shards_and_summarize_give_the_same_aggregation(protocol, reference, tmp_path):
    out = tmp_path / "sharded"
    for i in range(2):
        assert _eval(protocol, out, "--shard", f"{i}/2") == 0
    assert not (out / "protocol.json").exists()  # a shard does not aggregate the run
    assert main(["eval", "summarize", str(out), "--no-plots"]) == 0
    assert _ranking(out) == _ranking(reference)
    assert _sufficiency(out) == pytest.approx(_sufficiency(reference), abs=1e-7)


def test_ray_two_local_workers_with_a_protocol(protocol, reference, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        out = tmp_path / "ray"
        assert _eval(protocol, out, "--ray", "local", "--ray-workers", "2") == 0
    finally:
        ray.shutdown()
    assert _ranking(out) == _ranking(reference)
