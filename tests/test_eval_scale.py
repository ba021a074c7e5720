"""``xplain eval`` at scale: ImageNet layout, background decoding, shards, summarize, and Ray.

One generated ImageNet-style folder (WordNet-id class folders, VOC boxes named by WordNet id,
200 small JPEGs) and a tiny 1000-class model. The unsharded single-process run is the reference:
sharded runs (one after the other, and at the same time as two processes) and a Ray run with two
workers must give exactly its records; a Ray worker dying mid-batch and a driver killed mid-run
must lose nothing and write nothing twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from xplain.cli.app import main
from xplain.data.datasets import read_dataset
from xplain.run.shards import Shard, parse_shard, shard_of

from .imagenet_style import WNIDS, make_imagenet_folder, tiny_imagenet_model

ARGS = [
    "--methods",
    "saliency,random",
    "--metrics",
    "deletion,ebpg,bbox-accuracy",
    "--metric-param",
    "deletion.step=48",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--preset",
    "unit",
    "--no-plots",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    val, boxes = make_imagenet_folder(root, per_class=25)
    model = tiny_imagenet_model(root / "tiny1k.onnx")
    return model, val, boxes


def _records(path: Path | list[Path]) -> dict[str, dict]:
    paths = [path] if isinstance(path, Path) else path
    lines = [json.loads(line) for p in paths for line in p.read_text().splitlines()]
    keyed = {r["key"]: r for r in lines}
    assert len(keyed) == len(lines), "a key was written twice"
    return keyed


def _same(a: dict[str, dict], b: dict[str, dict], tol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k, ra in a.items():
        rb = b[k]
        assert (ra["image"], ra["method"], ra["target"]) == (
            rb["image"],
            rb["method"],
            rb["target"],
        )
        assert ra["scores"].keys() == rb["scores"].keys()
        for name, va in ra["scores"].items():
            vb = rb["scores"][name]
            assert (va is None) == (vb is None)
            if va is not None:
                assert abs(va - vb) <= tol, (k, name, va, vb)


@pytest.fixture(scope="module")
def reference(inet, tmp_path_factory):
    """The unsharded single-process run (two decoding threads)."""
    model, val, boxes = inet
    out = tmp_path_factory.mktemp("reference")
    assert (
        main(
            [
                "eval",
                str(model),
                str(val),
                "--boxes",
                str(boxes),
                "--out",
                str(out),
                "--workers",
                "2",
                *ARGS,
            ]
        )
        == 0
    )
    return out


def test_imagenet_folder_wordnet_ids_and_voc_boxes(inet):
    _, val, boxes = inet
    samples = read_dataset(val, boxes=boxes)
    assert len(samples) == 100
    assert [s.label for s in samples[::25]] == [0, 1, 2, 3]  # sorted WordNet ids = class order
    boxed = [s for s in samples if s.boxes]
    assert len(boxed) == 90 and all(b.label == s.label for s in boxed for b in s.boxes)
    assert all(s.boxes is None for s in samples if s not in boxed)
    # a model with other class names does not read WordNet ids as ImageNet's classes
    assert all(
        s.label is None for s in read_dataset(val, class_names=["circle", "square", "star", "ring"])
    )
    assert [s.label for s in read_dataset(val, class_names=list(WNIDS[::-1]))[::25]] == [3, 2, 1, 0]


def test_prefetch_yields_the_batches_in_order_whatever_the_workers(inet, tmp_path):
    import numpy as np

    from xplain.data.images import Preprocess
    from xplain.data.pipeline import prefetch

    _, val, _ = inet
    samples = read_dataset(val)[:18]
    broken = tmp_path / "broken.JPEG"
    broken.write_bytes(b"not a jpeg")
    samples[5] = dataclasses.replace(samples[5], path=broken)
    batches = [list(enumerate(samples))[k : k + 4] for k in range(0, 18, 4)]
    pre = Preprocess.from_options((3, 16, 16), preset="unit")
    plain = list(prefetch(batches, pre, workers=0))
    threads = list(prefetch(batches, pre, workers=3, depth=2))
    assert [[p.index for p in b] for b in threads] == [[i for i, _ in b] for b in batches]
    for a, b in zip(sum(plain, []), sum(threads, [])):
        assert (a.error is None) == (b.error is None) and (
            a.array is None or np.array_equal(a.array, b.array)
        )
    assert "broken.JPEG" in sum(threads, [])[5].error


def test_shards_partition_by_key_and_read_the_environment():
    keys = [f"n0/{i}.JPEG" for i in range(400)]
    parts = [[k for k in keys if Shard(i, 3).owns(k)] for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(keys) and all(len(p) > 100 for p in parts)
    assert [shard_of(k, 3) for k in keys[:20]] == [shard_of(k, 3) for k in keys[:20]]  # stable
    assert [k for k in keys[::-1] if Shard(1, 3).owns(k)] == parts[1][::-1]  # not by position
    assert parse_shard("2/4", {}) == Shard(2, 4)
    assert parse_shard(None, {"RANK": "1", "WORLD_SIZE": "3"}) == Shard(1, 3)  # torchrun
    assert parse_shard(None, {}) == Shard(0, 1)
    assert parse_shard(
        "env",
        {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"},
    ) == Shard(3, 4)
    from xplain.errors import UsageError

    for bad in ("4/4", "1/0", "a/b", "1-2"):
        with pytest.raises(UsageError):
            parse_shard(bad, {})
    with pytest.raises(UsageError):
        parse_shard("env", {})


def test_shards_sequential_and_concurrent_merge_into_the_unsharded_records(
    inet, reference, tmp_path, capsys
):
    model, val, boxes = inet
    ref = _records(reference / "results.jsonl")
    assert len(ref) == 200 and not any("error" in r for r in ref.values())
    common = [str(model), str(val), "--boxes", str(boxes), *ARGS]
    seq = tmp_path / "sequential"
    for i in range(2):
        assert (
            main(["eval", *common, "--out", str(seq), "--shard", f"{i}/2", "--workers", "0"]) == 0
        )
    files = sorted(seq.glob("results.shard-*-of-2.jsonl"))
    assert [p.name for p in files] == ["results.shard-0-of-2.jsonl", "results.shard-1-of-2.jsonl"]
    assert not (seq / "summary.json").exists()  # a shard does not summarise the run
    _same(_records(files), ref)
    conc = tmp_path / "concurrent"
    cmd = [sys.executable, "-m", "xplain", "eval", *common, "--out", str(conc)]
    procs = [
        subprocess.Popen(
            cmd,
            env={**ENV, "RANK": str(i), "WORLD_SIZE": "2"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    _same(_records(sorted(conc.glob("results.shard-*.jsonl"))), ref)

    capsys.readouterr()
    assert main(["eval", "summarize", str(conc), "--no-plots"]) == 0
    merged = json.loads((conc / "summary.json").read_text())
    reference_summary = json.loads((reference / "summary.json").read_text())
    assert merged["missing"] == 0 and merged["table"].keys() == reference_summary["table"].keys()
    for method, cells in reference_summary["table"].items():
        for score, cell in cells.items():
            assert merged["table"][method][score] == pytest.approx(cell, rel=1e-9)
    # a shard that lost its results: summarize names the missing images
    (conc / "results.shard-1-of-2.jsonl").unlink()
    assert main(["eval", "summarize", str(conc), "--no-plots"]) == 0
    merged = json.loads((conc / "summary.json").read_text())
    gone = {r["image"] for r in _records(files[1]).values()}
    assert merged["missing"] == len(gone) > 25
    assert "have no result in any results file" in capsys.readouterr().out


def test_summarize_needs_an_eval_folder(tmp_path, capsys):
    assert main(["eval", "summarize", str(tmp_path)]) == 5
    assert "run.json" in capsys.readouterr().err


def test_ray_two_workers_give_the_single_process_records_through_a_driver_and_a_worker_dying(
    inet, reference, tmp_path, monkeypatch
):
    """One local cluster (ray.init(num_cpus=2)) for two runs: the first driver is interrupted after
    two batches; the second resumes it, adds a method whose first call kills its worker process,
    and must end with exactly the single-process records, each once."""
    ray = pytest.importorskip("ray")
    import xplain
    import xplain.run.evaluation as evaluation
    from xplain.data.images import Preprocess

    from .conftest import interrupt_on_call

    model_path, val, boxes = inet
    saliency = xplain.get_registry().method("saliency")
    marker = str(tmp_path / "died-once")

    def dies_once(request):  # the first call kills its worker process
        if not os.path.exists(marker):
            Path(marker).write_text("x")
            # os._exit inside a plugin is a plugin error now (issue 25): die as the OOM killer does
            os.kill(os.getpid(), signal.SIGKILL)
        return saliency.run(request)

    flaky = dataclasses.replace(saliency, name="flaky-saliency", explain=dies_once)
    model = xplain.load_model(model_path, "cpu")
    out = tmp_path / "ray"
    common = dict(
        boxes=boxes,
        metrics=["deletion", "ebpg", "bbox-accuracy"],
        out_dir=out,
        batch_size=8,
        metric_params={"deletion": {"step": "48"}},
        preprocess=Preprocess.from_options((3, 16, 16), preset="unit"),
        plots=False,
        ray={"address": "local", "workers": 2},
    )
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        real = evaluation.append_records
        interrupt_on_call(monkeypatch, evaluation, "append_records", n=3)
        with pytest.raises(KeyboardInterrupt):
            xplain.evaluate(model, val, methods=[saliency, "random"], **common)
        monkeypatch.setattr(evaluation, "append_records", real)
        partial = _records(out / "results.jsonl")
        assert 0 < len(partial) < 200
        xplain.evaluate(model, val, methods=[saliency, flaky, "random"], **common)
    finally:
        ray.shutdown()
    assert os.path.exists(marker)  # a worker did die mid-batch
    got = _records(out / "results.jsonl")  # asserts every key is there once
    assert len(got) == 300
    assert all(
        got[k] == r for k, r in partial.items()
    )  # the first driver's lines are kept as written
    _same(
        {k: r for k, r in got.items() if r["method"] != "flaky-saliency"},
        _records(reference / "results.jsonl"),
        tol=1e-6,
    )
    by_image = {r["image"]: r for r in got.values() if r["method"] == "saliency"}
    flaky_records = [r for r in got.values() if r["method"] == "flaky-saliency"]
    assert len(flaky_records) == 100
    for r in flaky_records:  # the retried batches score exactly as saliency does
        assert r["scores"] == pytest.approx(by_image[r["image"]]["scores"], abs=1e-6)
