"""``xplain bench`` and ``xplain.run.timing``: output shape, errors, and the Captum mapping.

No timing assertions here: speed goals are measured with ``xplain bench`` (bench/README.md),
never asserted in timed tests.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import xplain
from xplain.cli.app import main
from xplain.run.captum_counterparts import CAPTUM_ADAPTERS, captum_counterpart
from xplain.run.timing import bench

from .conftest import REPO, export_classic

#: the methods bench/README.md and issue 3 name as having a Captum counterpart
DOCUMENTED = {
    "deeplift",
    "lime",
    "kernel-shap",
    "expected-gradients",
    "saliency",
    "gradient",
    "input-x-gradient",
    "integrated-gradients",
    "smoothgrad",
    "guided-backprop",
    "deconvnet",
    "grad-cam",
    "occlusion",
    "lrp-epsilon",
}

FAST = ["--repeats", "1", "--warmup", "0", "--device", "cpu"]


def _one_line_error(capsys):
    err = [
        line
        for line in capsys.readouterr().err.strip().splitlines()
        if not line.startswith("warning: plugin")
    ]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_bench_json(tiny_cnn_path, capsys):
    code = main(
        [
            "bench",
            str(tiny_cnn_path),
            "--methods",
            "saliency,random",
            "--batch-size",
            "2",
            "--json",
            *FAST,
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("model", "device", "batch_size", "forward_seconds", "methods"):
        assert key in data
    assert data["device"] == "cpu" and data["batch_size"] == 2 and data["forward_seconds"] > 0
    rows = {row["name"]: row for row in data["methods"]}
    assert list(rows) == ["saliency", "random"]
    for row in rows.values():
        for key in (
            "name",
            "seconds_per_image",
            "ratio_to_forward",
            "peak_memory_mb",
            "captum_seconds_per_image",
            "ratio_to_captum",
        ):
            assert key in row
        assert (
            row["seconds_per_image"] > 0
            and row["ratio_to_forward"] > 0
            and (row["peak_memory_mb"] or 0) >= 0
        )
    assert rows["saliency"]["captum_status"] == "ok"
    assert (
        rows["saliency"]["captum_seconds_per_image"] > 0 and rows["saliency"]["ratio_to_captum"] > 0
    )
    assert (
        rows["random"]["captum_seconds_per_image"] is None
        and rows["random"]["ratio_to_captum"] is None
    )
    assert rows["random"]["captum"] is None


def test_bench_table_and_images(tiny_cnn_path, rgb_image, capsys):
    code = main(
        [
            "bench",
            str(tiny_cnn_path),
            str(rgb_image),
            "--methods",
            "saliency",
            "--batch-size",
            "3",
            "--no-captum",
            "--preset",
            "unit",
            *FAST,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for column in ("method", "s/image", "×forward", "peak mem", "ours/captum"):
        assert column in out
    assert "saliency" in out and "skipped" in out


@pytest.mark.parametrize(
    "args",
    [
        ["--methods", "saliency,no-such-method"],
        ["--methods", ","],
        ["--methods", "saliency,random", "--param", "steps=3"],  # which method?
        ["--methods", "saliency", "--param", "random.x=1"],  # not benchmarked
        ["--methods", "saliency", "--param", "saliency.nope=1"],  # not a parameter of saliency
    ],
)
def test_bench_usage_errors(tiny_cnn_path, capsys, args):
    assert main(["bench", str(tiny_cnn_path), *args, *FAST]) == 2
    line = _one_line_error(capsys)
    if "no-such-method" in args[1]:
        assert "no-such-method" in line and "saliency" in line  # the installed methods are listed


def test_bench_python_api_leaves_graph_untouched(tiny_model):
    """Captum's LRP refuses onnx2torch modules: reported, not fatal, and no rules or hooks stay behind."""
    registry = xplain.get_registry()
    names = [
        n
        for n in ("saliency", "guided-backprop", "lrp-epsilon", "grad-cam")
        if n in registry.methods
    ]
    before = [(type(m), sorted(vars(m))) for m in tiny_model.graph.modules()]
    code = tiny_model.graph.code
    result = bench(tiny_model, tiny_model.example_input(2), names, registry, repeats=1, warmup=0)
    assert [row["name"] for row in result["methods"]] == names
    for row in result["methods"]:
        assert row["captum_status"] == "ok" or row["captum_status"].startswith("failed"), row
    assert [(type(m), sorted(vars(m))) for m in tiny_model.graph.modules()] == before
    assert tiny_model.graph.code == code
    for m in tiny_model.graph.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks


def test_captum_mapping_covers_the_documented_methods():
    registry = xplain.get_registry()  # methods declare their reference; bench knows the adapters
    with_counterpart = {n for n, m in registry.methods.items() if m.reference in CAPTUM_ADAPTERS}
    assert with_counterpart == DOCUMENTED
    assert {m.reference for m in registry.methods.values()} >= set(CAPTUM_ADAPTERS)
    readme = (REPO / "bench" / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Captum counterparts", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M))
    assert listed == DOCUMENTED


def _relu_cnn():
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    ).eval()


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory):
    return xplain.load_model(
        export_classic(_relu_cnn(), tmp_path_factory.mktemp("b") / "relu.onnx", (1, 3, 16, 16))
    )


# deterministic methods whose Captum counterpart runs on converted ReLU graphs
@pytest.mark.parametrize(
    "name, params",
    [
        ("saliency", {}),
        ("gradient", {}),
        ("input-x-gradient", {}),
        ("integrated-gradients", {"steps": 8}),
        ("guided-backprop", {}),
        ("deconvnet", {}),
        ("grad-cam", {}),
        ("occlusion", {"patch": 4, "stride": 2}),
        ("deeplift", {}),
    ],
)
def test_captum_counterpart_computes_our_map(relu_model, name, params):
    """The mapping runs the same algorithm: Captum's map equals ours on a ReLU network."""
    pytest.importorskip("captum")
    registry = xplain.get_registry()
    if name not in registry.methods:
        pytest.skip(f"method {name} is not installed")
    method = registry.method(name)
    values = xplain.validate_params(method.params, params, name)
    x = relu_model.example_input(3, seed=4)
    targets = torch.tensor([0, 4, 2])
    ours = xplain.explain(relu_model, x, targets, name, params=params).maps
    with captum_counterpart(name, relu_model, values, x) as captum_fn:
        ref = captum_fn(x.clone(), targets).detach()
    assert ref.shape == ours.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_stage_split_per_image_and_per_forward():
    from xplain.plugins.plugin_api import Attribution
    from xplain.run.timing import _stages

    got = _stages(
        Attribution(maps=None, info={"stage_seconds": {"feature": 0.4, "gan": 2.0}}),
        batch=4,
        forward_s=0.1,
    )
    assert got == {
        "feature": {"seconds_per_image": 0.1, "ratio_to_forward": pytest.approx(4.0)},
        "gan": {"seconds_per_image": 0.5, "ratio_to_forward": pytest.approx(20.0)},
    }
    assert _stages(Attribution(maps=None), batch=4, forward_s=0.1) is None


# ----------------------------------------------------------------------------- metric timing mode
def test_bench_metrics_counts_the_images_a_metric_forwards(tiny_model):
    """deletion with step = 16 px on a 16×16 input: 16 + 1 curve points, each one forwarded image."""
    from xplain.run.timing import bench_metrics

    x = tiny_model.example_input(2, seed=4)
    h, w = x.shape[2:]
    report = bench_metrics(
        tiny_model,
        x,
        ["deletion", "ebpg"],
        "gradient",
        params={"deletion": {"step": str(w)}},
        repeats=1,
        warmup=0,
    )
    rows = {row["name"]: row for row in report["metrics"]}
    assert report["method"] == "gradient" and report["forward_seconds_per_image"] > 0
    assert rows["deletion"]["forward_images"] == h + 1  # per explained image
    assert rows["deletion"]["seconds_per_step"] == pytest.approx(
        rows["deletion"]["seconds_per_image"] / (h + 1)
    )
    assert rows["deletion"]["ratio_to_forward"] > 0
    assert (
        rows["ebpg"]["forward_images"] == 0 and rows["ebpg"]["ratio_to_forward"] is None
    )  # boxes only


def test_bench_cli_metrics_table_and_errors(tiny_cnn_path, capsys):
    code = main(
        [
            "bench",
            str(tiny_cnn_path),
            "--methods",
            "gradient",
            "--metrics",
            "deletion",
            "--metric-param",
            "deletion.step=8",
            "--batch-size",
            "2",
            "--no-captum",
            "--json",
            *FAST,
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    (row,) = data["metric_bench"]["metrics"]
    assert row["name"] == "deletion" and row["params"]["step"] == 8 and row["forward_images"] > 0
    assert (
        main(
            [
                "bench",
                str(tiny_cnn_path),
                "--methods",
                "gradient",
                "--metrics",
                "no-such-metric",
                *FAST,
            ]
        )
        == 2
    )
    assert "no-such-metric" in _one_line_error(capsys)
    assert (
        main(
            [
                "bench",
                str(tiny_cnn_path),
                "--methods",
                "gradient",
                "--metric-param",
                "deletion.step=8",
                *FAST,
            ]
        )
        == 2
    )
    assert "without --metric" in _one_line_error(capsys)


def test_bench_model_names(capsys, tmp_path):
    from xplain.run.reference_networks import bench_model_path

    with pytest.raises(xplain.UsageError, match="unknown benchmark network"):
        bench_model_path("vgg99", root=tmp_path)
    with pytest.raises(xplain.UsageError, match="224"):
        bench_model_path("efficientnet_lite0", 160, root=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing exported on a refused request


def test_bench_cpu_clock(tiny_model):
    report = bench(
        tiny_model,
        tiny_model.example_input(2),
        ["gradient"],
        repeats=1,
        warmup=0,
        captum=False,
        clock="cpu",
    )
    assert report["clock"] == "cpu" and report["methods"][0]["seconds_per_image"] > 0
    with pytest.raises(xplain.UsageError, match="clock"):
        bench(
            tiny_model,
            tiny_model.example_input(2),
            ["gradient"],
            repeats=1,
            warmup=0,
            clock="sundial",
        )


@pytest.mark.parametrize("name", ["lime", "kernel-shap"])
def test_captum_surrogate_counterpart_uses_our_segments_target_and_baseline(relu_model, name):
    """Captum draws its own coalitions (timed, not compared map for map), but it must see our
    grid as its feature mask, our targets and baseline: its map is constant on each 4×4 cell, and
    Kernel SHAP's coefficients (both ours and Captum's) sum to f(x) − f(baseline)."""
    pytest.importorskip("captum")
    pytest.importorskip("sklearn")
    registry = xplain.get_registry()
    if name not in registry.methods:
        pytest.skip(f"method {name} is not installed")
    params = {"cell": 4, "n_samples": 40, "baseline": 0.5}
    values = xplain.validate_params(registry.method(name).params, params, name)
    x = relu_model.example_input(2, seed=7)
    targets = torch.tensor([1, 3])
    with captum_counterpart(name, relu_model, values, x) as captum_fn:
        ref = captum_fn(x.clone(), targets).detach()
    assert ref.shape == (2, 16, 16)
    cells = ref.reshape(2, 4, 4, 4, 4)  # image, cell row, row in cell, cell column, column in cell
    assert torch.equal(cells, cells[:, :, :1, :, :1].expand_as(cells))
    assert ref.abs().max() > 0
    if name == "kernel-shap":
        with torch.no_grad():
            full = relu_model(x).gather(1, targets[:, None])[:, 0]
            empty = relu_model(torch.full_like(x, 0.5)).gather(1, targets[:, None])[:, 0]
        ours = xplain.explain(relu_model, x, targets, name, params=params).maps
        for got in (ref, ours):
            torch.testing.assert_close(got.sum(dim=(1, 2)) / 16, full - empty, rtol=1e-3, atol=1e-3)
