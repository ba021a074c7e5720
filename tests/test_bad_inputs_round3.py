"""Hostile and broken inputs, round three (issues 25 and 27): one test (or group) per class.

Plugins that change what comes after them, value-dependent memory and time, models that are not
classifiers, boxes, PNG CRCs, outputs read back as inputs, fitted state, the Python API, long
paths and huge manifests. Hostile files are built in ``tmp_path``; what could end or hang the
test process (a hard stop, a leftover thread) runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xplain
from xplain import ExitCode
from xplain.cli.app import main
from xplain.plugins.registry import clear_cache, get_registry

try:  # tests/ is a package in some checkouts and a plain folder in others
    from . import onnx_factory as factory
except ImportError:  # pragma: no cover
    import onnx_factory as factory

cli_error = factory.cli_error
USAGE, MODEL, PLUGIN, INPUT = (
    int(c) for c in (ExitCode.USAGE, ExitCode.MODEL, ExitCode.PLUGIN, ExitCode.INPUT)
)
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ helpers
@pytest.fixture()
def model(tmp_path) -> Path:
    return factory.save(factory.classifier(), tmp_path / "m" / "tiny.onnx")


def _image(path: Path, size=(12, 10), seed=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)) if seed is None else seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def registry():
    clear_cache()
    yield get_registry()
    clear_cache()


def _method_plugin(**methods) -> object:
    class Plugin:
        @staticmethod
        @xplain.hookimpl
        def register_methods(register):
            for name, fn in methods.items():
                register(
                    xplain.Method(
                        name=name.replace("_", "-"),
                        summary="test",
                        explain=lambda r, fn=fn: fn(r.model, r.x, r.targets, r.params, r.seed),
                        capabilities=xplain.Capabilities(needs_gradients=False),
                    )
                )

    return Plugin()


def _metric_plugin(**metrics) -> object:
    class Plugin:
        @staticmethod
        @xplain.hookimpl
        def register_metrics(register):
            for name, fn in metrics.items():
                register(xplain.Metric(name=name.replace("_", "-"), summary="t", score=fn))

    return Plugin()


def _ones(model, x, targets, params, seed):
    import torch

    return torch.ones(x.shape[0], model.spec.height, model.spec.width)


def _eval_args(model, data, out, methods, metrics="deletion") -> list[str]:
    return [
        "eval",
        str(model),
        str(data),
        "--methods",
        methods,
        "--metrics",
        metrics,
        "--device",
        "cpu",
        "--no-plots",
        "--out",
        str(out),
    ]


def _scores(out: Path, method: str) -> dict:
    return {
        r["image"]: r["scores"]
        for r in map(json.loads, (out / "results.jsonl").open())
        if r["method"] == method and "error" not in r
    }


# ============================================================================== 25.3 plugins that change what comes after
def _mutations():
    import torch
    import torch.nn.functional as F

    def weights(m):
        with torch.no_grad():
            next(m.graph.parameters()).mul_(3.0)

    def data_weights(m):  # through .data: the version counter does not see it
        next(m.graph.parameters()).data.mul_(-1.0)

    def train_mode(m):
        m.graph.train()

    def instance_forward(m):
        conv = next(mod for mod in m.graph.modules() if isinstance(mod, torch.nn.Conv2d))
        original = conv.forward
        conv.forward = lambda x: original(x) * 2.0

    def conv_attrs(m):
        conv = next(mod for mod in m.graph.modules() if isinstance(mod, torch.nn.Conv2d))
        conv.dilation = (2, 2)
        conv.padding = (2, 2)

    def class_forward(m):
        original = torch.nn.ReLU.forward
        torch.nn.ReLU.forward = lambda self, x: original(self, x) + 1.0

    def torch_relu(m):
        original = torch.relu
        torch.relu = lambda x: original(x) + 1.0

    def functional_relu(m):
        original = F.relu
        F.relu = lambda x, inplace=False: original(x) + 1.0

    def tensor_relu(m):
        original = torch.Tensor.relu
        torch.Tensor.relu = lambda self: original(self) + 1.0

    return {
        f.__name__: f
        for f in (
            weights,
            data_weights,
            train_mode,
            instance_forward,
            conv_attrs,
            class_forward,
            torch_relu,
            functional_relu,
            tensor_relu,
        )
    }


@pytest.fixture()
def torch_kept():
    """Whatever a vandal does to torch's functions is undone after the test, pass or fail."""
    import torch
    import torch.nn.functional as F

    saved = (torch.relu, F.relu, torch.Tensor.__dict__.get("relu"), torch.nn.ReLU.forward)
    yield
    torch.relu, F.relu = saved[0], saved[1]
    torch.nn.ReLU.forward = saved[3]
    if saved[2] is None:
        torch.Tensor.__dict__.get("relu") is not None and delattr(torch.Tensor, "relu")


@pytest.mark.parametrize("kind", list(_mutations()))
def test_eval_invalidates_a_method_that_changes_what_comes_after(
    tmp_path, model, registry, torch_kept, kind, capsys
):
    """Each way a method can change the model or torch: its records become errors marked
    invalid, the summary names it, the run exits 4, and the method after it scores exactly as in
    a clean run (the model and torch were restored)."""
    import torch

    mutate = _mutations()[kind]

    def vandal(m, x, targets, params, seed):
        mutate(m)
        return _ones(m, x, targets, params, seed)

    registry.register_plugin(_method_plugin(vandal=vandal), "vandal-plugin")
    data = tmp_path / "data"
    for k in range(2):
        _image(data / f"{k}.png")
    relu = (torch.relu, torch.Tensor.__dict__.get("relu"))
    assert main(_eval_args(model, data, tmp_path / "alone", "gradient")) == 0
    capsys.readouterr()
    rc = main(_eval_args(model, data, tmp_path / "both", "vandal,gradient"))
    err = capsys.readouterr().err
    assert rc == PLUGIN and "vandal" in err and "invalid" in err, err
    assert (torch.relu, torch.Tensor.__dict__.get("relu")) == relu  # torch put back
    summary = json.loads((tmp_path / "both" / "summary.json").read_text())
    assert "vandal" in summary["invalid"]
    assert _scores(tmp_path / "both", "gradient") == _scores(tmp_path / "alone", "gradient")
    both = [json.loads(line) for line in (tmp_path / "both" / "results.jsonl").open()]
    assert all(r.get("invalid") is True for r in both if r["method"] == "vandal")


@pytest.mark.parametrize("edits", ["maps", "x", "weights"])
def test_eval_restores_what_a_metric_edits_in_place(tmp_path, model, registry, edits, capsys):
    """A metric editing the maps, x or a weight in place: its scores are discarded and named,
    the next metric's scores equal a clean run's, and the run exits 4."""
    import torch

    def vandal_metric(ctx):
        with torch.no_grad():
            if edits == "maps":
                ctx.attribution.maps.mul_(-1.0)
            elif edits == "x":
                ctx.x.zero_()
            else:
                next(ctx.model.graph.parameters()).add_(1.0)
        return {"vandal-metric": torch.zeros(ctx.x.shape[0])}

    registry.register_plugin(_metric_plugin(vandal_metric=vandal_metric), "vandal-metric")
    data = tmp_path / "data"
    for k in range(2):
        _image(data / f"{k}.png")
    assert main(_eval_args(model, data, tmp_path / "alone", "gradient", "deletion")) == 0
    capsys.readouterr()
    rc = main(_eval_args(model, data, tmp_path / "both", "gradient", "vandal-metric,deletion"))
    err = capsys.readouterr().err
    assert rc == PLUGIN and "vandal-metric" in err, err
    alone, both = _scores(tmp_path / "alone", "gradient"), _scores(tmp_path / "both", "gradient")
    assert {k: v["deletion"] for k, v in both.items()} == {
        k: v["deletion"] for k, v in alone.items()
    }
    assert all(v["vandal-metric"] is None for v in both.values())
    summary = json.loads((tmp_path / "both" / "summary.json").read_text())
    assert edits.replace("x", "input") in summary["invalid"]["vandal-metric"]


def test_explain_refuses_a_method_that_changed_the_model(tmp_path, model, registry, capsys):
    import torch

    def vandal(m, x, targets, params, seed):
        m.graph.train()
        with torch.no_grad():
            next(m.graph.parameters()).mul_(3.0)
        return _ones(m, x, targets, params, seed)

    registry.register_plugin(_method_plugin(vandal=vandal), "vandal-plugin")
    image = _image(tmp_path / "img" / "a.png")
    out = tmp_path / "out"
    argv = ["explain", model, image, "--method", "vandal,gradient", "--out", out]
    cli_error(capsys, [*argv, "--device", "cpu"], PLUGIN, "vandal", "changed")
    assert not out.exists() or not list(out.rglob("*.json"))  # nothing of the batch written


@pytest.mark.parametrize("kind", ["meta", "sparse", "subclass"])
def test_maps_that_are_not_plain_tensors_are_a_plugin_error(
    tmp_path, model, registry, capsys, kind
):
    import torch

    class Odd(torch.Tensor):
        pass

    def odd(m, x, targets, params, seed):
        maps = torch.ones(x.shape[0], m.spec.height, m.spec.width)
        if kind == "meta":
            return maps.to("meta")
        if kind == "sparse":
            return maps.to_sparse()
        return maps.as_subclass(Odd)

    registry.register_plugin(_method_plugin(odd=odd), "odd-plugin")
    image = _image(tmp_path / "img" / "a.png")
    argv = ["explain", model, image, "--method", "odd", "--out", tmp_path / "o", "--device", "cpu"]
    cli_error(capsys, argv, PLUGIN, "odd", "expected a dense float tensor")


def test_os_exit_inside_a_plugin_is_a_plugin_error(tmp_path, model, registry, capsys):
    """``os._exit(0)`` in a method: explain exits 4 writing nothing; eval records an error (not a
    success) and a second run on the same --out resumes without redoing the good method."""

    def quitter(m, x, targets, params, seed):
        os._exit(0)

    registry.register_plugin(_method_plugin(quitter=quitter), "quitter-plugin")
    image = _image(tmp_path / "data" / "a.png")
    argv = ["explain", model, image, "--method", "quitter", "--out", tmp_path / "o"]
    cli_error(capsys, [*argv, "--device", "cpu"], PLUGIN, "quitter", "os._exit(0)")
    assert not list((tmp_path / "o").rglob("*.json")) if (tmp_path / "o").exists() else True
    out = tmp_path / "eval"
    assert main(_eval_args(model, image.parent, out, "quitter,gradient")) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").open()]
    assert [r["method"] for r in records if "error" in r] == ["quitter"]
    assert "os._exit(0)" in records[0]["error"] or "os._exit(0)" in records[1]["error"]
    assert main(_eval_args(model, image.parent, out, "quitter,gradient")) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 2  # resumed: nothing redone


_CHILD = textwrap.dedent("""
    import sys, threading, time
    import torch, xplain
    from xplain.plugins.registry import get_registry
    kind = sys.argv[1]
    def method(request):
        m, x = request.model, request.x
        if kind == "swallow":
            while True:
                try:
                    time.sleep(100)
                except BaseException:
                    pass
        threading.Thread(target=time.sleep, args=(600,)).start()  # not a daemon
        return torch.ones(x.shape[0], m.spec.height, m.spec.width)
    class Plugin:
        @staticmethod
        @xplain.hookimpl
        def register_methods(register):
            register(xplain.Method(name="stubborn", summary="t", explain=method,
                                   capabilities=xplain.Capabilities(needs_gradients=False)))
    get_registry().register_plugin(Plugin(), "stubborn")
    from xplain.cli.app import run
    sys.argv = ["xplain", *sys.argv[2:]]
    run()
""")


@pytest.mark.parametrize("kind", ["swallow", "thread"])
def test_a_plugin_cannot_keep_the_process_alive(tmp_path, model, kind):
    """A method that swallows the --timeout stop (``except BaseException`` around a sleep) is
    ended with one line and exit 4; one that leaves a non-daemon thread running does not keep
    the process from exiting after the command finished."""
    image = _image(tmp_path / "img" / "a.png")
    argv = ["explain", str(model), str(image), "--method", "stubborn", "--device", "cpu"]
    argv += ["--out", str(tmp_path / "out"), "--timeout", "1"]
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    took = time.monotonic() - began
    if kind == "swallow":
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == PLUGIN, proc.stderr[-2000:]
        assert len(lines) == 1 and "--timeout 1 s" in lines[0] and "stubborn" in lines[0], lines
        assert not list((tmp_path / "out").rglob("*.json")) if (tmp_path / "out").exists() else 1
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert list((tmp_path / "out").rglob("*.json"))
    assert took < 60, took


# ============================================================================== 25.1 memory and time that depend on values
def _trigger(kind: str, factor: float = 40000.0):
    """A classifier that is tiny on random verification inputs (their minimum is negative, so
    the computed size is 1) and allocates ~(factor · min(x))² elements on an image whose every
    preprocessed value is positive (a white photo): the size comes from the input's values."""
    from onnx import TensorProto, helper, numpy_helper

    model = factory.classifier()
    g = model.graph
    g.node[-1].output[0] = "y0"
    consts = {
        "k_factor": np.array(factor, np.float32),
        "k_one": np.array(1.0, np.float32),
        "k_zero": np.array(0.0, np.float32),
        "k_shape1": np.array([1], np.int64),
        "k_small": np.ones([1, 1], np.float32),
        "k_fill": np.ones([1], np.float32),
    }
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    nodes = [
        helper.make_node("ReduceMin", ["x"], ["mn"], keepdims=0),
        helper.make_node("Relu", ["mn"], ["mr"]),
        helper.make_node("Mul", ["mr", "k_factor"], ["ms"]),
        helper.make_node("Add", ["ms", "k_one"], ["mf"]),
        helper.make_node("Cast", ["mf"], ["mi"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["mi", "k_shape1"], ["d"]),
        helper.make_node("Concat", ["d", "d"], ["dd"], axis=0),
    ]
    if kind == "ConstantOfShape":
        nodes.append(
            helper.make_node(
                "ConstantOfShape",
                ["dd"],
                ["big"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
            )
        )
    elif kind == "Expand":
        nodes.append(helper.make_node("Expand", ["k_fill", "dd"], ["big"]))
    elif kind == "Tile":
        nodes.append(helper.make_node("Tile", ["k_small", "dd"], ["big"]))
    else:  # Range up to d² (float)
        nodes += [
            helper.make_node("Mul", ["mf", "mf"], ["sq"]),
            helper.make_node("Range", ["k_zero", "sq", "k_one"], ["big"]),
        ]
    nodes += [
        helper.make_node("ReduceSum", ["big"], ["bs"], keepdims=0),
        helper.make_node("Mul", ["bs", "k_zero"], ["b0"]),
        helper.make_node("Add", ["y0", "b0"], ["y"]),
    ]
    g.node.extend(nodes)
    return model


def _many_under_the_bound(count: int = 12, side: int = 7000):
    """Each ConstantOfShape is 196 MB, under the 256 MiB per-tensor bound; ``Sum`` keeps all of
    them alive at once (2.3 GB)."""
    from onnx import TensorProto, helper, numpy_helper

    model = factory.classifier()
    g = model.graph
    g.node[-1].output[0] = "y0"
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([side, side], np.int64), "k_side"),
            numpy_helper.from_array(np.array(0.0, np.float32), "k_zero"),
        ]
    )
    for k in range(count):
        value = helper.make_tensor("v", TensorProto.FLOAT, [1], [float(k)])
        g.node.append(helper.make_node("ConstantOfShape", ["k_side"], [f"c{k}"], value=value))
    g.node.extend(
        [
            helper.make_node("Sum", [f"c{k}" for k in range(count)], ["s"]),
            helper.make_node("ReduceSum", ["s"], ["ss"], keepdims=0),
            helper.make_node("Mul", ["ss", "k_zero"], ["s0"]),
            helper.make_node("Add", ["y0", "s0"], ["y"]),
        ]
    )
    return model


def _matmul_time_bomb(count: int = 300, side: int = 2000):
    """Hundreds of chained side² MatMuls on a constant (≈ 4.8 TFLOP per forward)."""
    from onnx import TensorProto, helper, numpy_helper

    model = factory.classifier()
    g = model.graph
    g.node[-1].output[0] = "y0"
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([side, side], np.int64), "k_side"),
            numpy_helper.from_array(np.array(0.0, np.float32), "k_zero"),
        ]
    )
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1e-3])
    g.node.append(helper.make_node("ConstantOfShape", ["k_side"], ["m0"], value=value))
    for k in range(count):
        g.node.append(helper.make_node("MatMul", [f"m{k}", "m0"], [f"m{k + 1}"]))
    g.node.extend(
        [
            helper.make_node("ReduceSum", [f"m{count}"], ["ms"], keepdims=0),
            helper.make_node("Mul", ["ms", "k_zero"], ["m_0"]),
            helper.make_node("Add", ["y0", "m_0"], ["y"]),
        ]
    )
    return model


_LIMITED_CHILD = textwrap.dedent("""
    import contextlib, io, json, os, resource, sys
    from xplain.cli.app import main
    main(["inspect", sys.argv[1]])  # warm up: lazy imports and thread pools exist now
    def vm():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize"):
                return int(line.split()[1]) * 1024
    limit = vm() + int(sys.argv[2]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results = []
    for argv in json.loads(sys.argv[3]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(argv)
        results.append([rc, err.getvalue()])
    print(json.dumps(results))
""")


def _run_limited(tmp_path, model, runs, extra_mb=1500, env=None):
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED_CHILD, str(model), str(extra_mb), json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _one_line(rc, err, code, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code and len(lines) == 1 and lines[0].startswith("xplain: error: "), (rc, err)
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_value_dependent_shapes_are_bounded_when_they_run(tmp_path, model):
    """Trigger models pass verification (random inputs stay small) and would allocate ~32 GB on a
    white photo; in a process allowed 1.5 GB more than it holds, explain exits 3 with one line
    naming the file and the node, and writes nothing."""
    white = tmp_path / "white.png"
    Image.new("RGB", (8, 8), (255, 255, 255)).save(white)
    runs, paths = [], []
    for kind in ("ConstantOfShape", "Expand", "Tile", "Range"):
        path = factory.save(_trigger(kind), tmp_path / f"trigger_{kind}.onnx")
        paths.append(path)
        runs.append(["inspect", str(path)])  # loads and verifies: the trigger is asleep
        out = tmp_path / f"out_{kind}"
        runs.append(["explain", str(path), str(white), "--out", str(out), "--device", "cpu"])
    results = _run_limited(tmp_path, model, runs)
    for k, kind in enumerate(("ConstantOfShape", "Expand", "Tile", "Range")):
        (rc_load, err_load), (rc, err) = results[2 * k], results[2 * k + 1]
        assert rc_load == 0, err_load
        _one_line(rc, err, MODEL, str(paths[k]), kind, "input's values")
        assert not list((tmp_path / f"out_{kind}").rglob("*.json"))


_WATCHED_CHILD = textwrap.dedent("""
    import resource, subprocess, sys
    proc = subprocess.run([sys.executable, "-m", "xplain", *sys.argv[1:]], capture_output=True,
                          text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(proc.returncode, peak)
    sys.stderr.write(proc.stderr)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")
def test_many_tensors_under_the_bound_are_stopped_by_the_memory_watchdog(tmp_path):
    """Twelve tensors of 196 MB each (every one under the static bound) alive at once: with
    XPLAIN_MAX_MEMORY=1G the watchdog ends the process with exit 3 and one line naming the
    file, at a peak below 2 GB."""
    path = factory.save(_many_under_the_bound(), tmp_path / "many.onnx")
    proc = subprocess.run(
        [sys.executable, "-c", _WATCHED_CHILD, "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "XPLAIN_MAX_MEMORY": "1G", "OMP_NUM_THREADS": "1"},
    )
    rc, peak = map(int, proc.stdout.split())
    _one_line(rc, proc.stderr, MODEL, str(path), "XPLAIN_MAX_MEMORY")
    assert peak < 2 * 2**30, peak


def test_a_matmul_time_bomb_is_refused_at_load(tmp_path, capsys):
    path = factory.save(_matmul_time_bomb(), tmp_path / "bomb.onnx")
    began = time.monotonic()
    cli_error(capsys, ["inspect", path], MODEL, path, "TFLOP", "MatMul")
    assert time.monotonic() - began < 60


def test_xplain_max_memory_must_be_a_size(tmp_path, model, capsys, monkeypatch):
    monkeypatch.setenv("XPLAIN_MAX_MEMORY", "lots")
    cli_error(capsys, ["inspect", model], USAGE, "XPLAIN_MAX_MEMORY")


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes that costs no disk: a hole, after ``head``."""
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_a_sparse_gigabyte_file_is_refused_without_reading_it(tmp_path, model):
    """1.5 GB of zeros or of random-looking bytes as the model, and a 1.5 GB external data file
    behind a 432-byte tensor: exit 3 with one line, in a process that may allocate only 300 MB
    more (reading either file whole would need 1.5 GB)."""
    size = 1536 * 2**20
    rng = np.random.default_rng(0)
    zeros = _sparse(tmp_path / "zeros.onnx", size)
    noise = _sparse(tmp_path / "noise.onnx", size, rng.integers(0, 256, 4096, np.uint8).tobytes())
    folder = tmp_path / "ext"
    folder.mkdir()
    _sparse(folder / "weights.bin", size)
    external = factory.save(factory.external_classifier("weights.bin"), folder / "ext.onnx")
    runs = [["inspect", str(p)] for p in (zeros, noise, external)]
    results = _run_limited(tmp_path, model, runs, extra_mb=300)
    for (rc, err), path in zip(results, (zeros, noise, external)):
        _one_line(rc, err, MODEL, str(path))
    assert "needs 432" in results[2][1]


# ============================================================================== 25.2 not a classifier
def _head(kind: str):
    """The tiny classifier with its logits ``y0`` turned into something that is not class scores."""
    from onnx import TensorProto, helper, numpy_helper

    model = factory.classifier()
    g = model.graph
    g.node[-1].output[0] = "y0"
    out = g.output[0]
    if kind == "argmax":
        g.node.append(helper.make_node("ArgMax", ["y0"], ["y"], axis=1, keepdims=1))
        out.CopyFrom(factory.tensor_info("y", ["N", 1], TensorProto.INT64))
    elif kind == "bool":
        g.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "k_zero"))
        g.node.append(helper.make_node("Greater", ["y0", "k_zero"], ["y"]))
        out.CopyFrom(factory.tensor_info("y", ["N", 4], TensorProto.BOOL))
    elif kind == "int-scores":
        g.node.append(helper.make_node("Cast", ["y0"], ["y"], to=TensorProto.INT32))
        out.CopyFrom(factory.tensor_info("y", ["N", 4], TensorProto.INT32))
    elif kind == "dropout-training":
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array(0.5, np.float32), "k_ratio"),
                numpy_helper.from_array(np.array(True), "k_train"),
            ]
        )
        g.node.append(helper.make_node("Dropout", ["y0", "k_ratio", "k_train"], ["y"]))
    else:  # int64 initializers of ±2^62 cast into the logits
        huge = np.array([2**62, -(2**62), 2**62, -(2**62)], np.int64)
        g.initializer.append(numpy_helper.from_array(huge, "k_huge"))
        g.node.extend(
            [
                helper.make_node("Cast", ["k_huge"], ["huge_f"], to=TensorProto.FLOAT),
                helper.make_node("Add", ["y0", "huge_f"], ["y"]),
            ]
        )
    return model


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("argmax", "int64"),
        ("bool", "bool"),
        ("int-scores", "int32"),
        ("dropout-training", "not deterministic"),
        ("huge-int-cast", "e+18"),
    ],
)
def test_a_model_that_is_not_a_classifier_is_refused_at_load(tmp_path, capsys, kind, fragment):
    path = factory.save(_head(kind), tmp_path / f"{kind}.onnx")
    cli_error(capsys, ["inspect", path], MODEL, path, fragment)


# ============================================================================== 25.4 boxes and labels
def _voc(path: Path, xmin, ymin, xmax, ymax, head: str = "", name: str = "0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"{head}<annotation><object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}"
        f"</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>"
    )
    return path


_EXTERNAL_ENTITY = '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n'


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("external-entity", "DOCTYPE/ENTITY declaration is refused"),
        ("dtd", "DOCTYPE/ENTITY declaration is refused"),
        ("swapped", "xmax < xmin"),
        ("infinity", "must be finite"),
    ],
)
def test_bad_voc_boxes_are_never_scored(tmp_path, model, capsys, case, fragment):
    """Documented rule: a bad annotation fails its image (the record says why, nothing is scored
    on a wrong box); when every image failed the run exits 5 with one line naming the file."""
    image = _image(tmp_path / "data" / "a.png")
    xml = tmp_path / "boxes" / "a.xml"
    if case == "external-entity":
        _voc(xml, 1, 1, 5, 5, _EXTERNAL_ENTITY, name="&e;")
    elif case == "dtd":
        _voc(xml, 1, 1, 5, 5, '<!DOCTYPE annotation SYSTEM "http://example.com/a.dtd">')
    elif case == "swapped":
        _voc(xml, 8, 8, 2, 2)
    else:
        _voc(xml, 1, 1, "infinity", 5)
    out = tmp_path / "out"
    argv = [*_eval_args(model, image.parent, out, "gradient", "ebpg"), "--boxes", xml.parent]
    cli_error(capsys, argv, INPUT, "nothing could be evaluated", str(xml), fragment)
    (record,) = map(json.loads, (out / "results.jsonl").open())
    assert "scores" not in record and fragment in record["error"]


def test_an_image_listed_twice_with_different_labels_is_refused(tmp_path, model, capsys):
    image = _image(tmp_path / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{image.name},1\n./{image.name},2\n")
    argv = _eval_args(model, manifest, tmp_path / "out", "gradient", "ebpg")
    cli_error(capsys, argv, INPUT, str(manifest), "line 3", "again with label 2", "line 2")


# ============================================================================== 27.4 huge manifests
def test_a_huge_manifest_of_one_image_is_read_once_and_scored_once(tmp_path, model, capsys):
    """200,000 rows of the same image: read in bounded memory, the duplicates named in one
    warning, the image scored once; a second run resumes (nothing redone)."""
    import tracemalloc

    from xplain.data.datasets import read_dataset

    image = _image(tmp_path / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + f"{image.name},1\n" * 200_000)
    tracemalloc.start()
    with pytest.warns(
        UserWarning, match=r"199999 duplicate row\(s\) skipped.*line 3 repeats line 2"
    ):
        samples = read_dataset(manifest)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(samples) == 1 and peak < 64 * 2**20, peak
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(_eval_args(model, manifest, out, "gradient", "ebpg")) == 0
    err = capsys.readouterr().err
    warnings_ = [line for line in err.splitlines() if "duplicate" in line]
    assert len(warnings_) == 1 and "199999" in warnings_[0], err
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    assert main(_eval_args(model, manifest, out, "gradient", "ebpg")) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


# ============================================================================== 25.5 images
def _png_with_bad_crc(path: Path) -> Path:
    """A PNG whose pixels decode but whose IDAT chunk's CRC is wrong (damaged in transit)."""
    import struct

    _image(path)
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[at - 4 : at])
    data[at + 4 + length] ^= 0x01  # the first byte of the chunk's CRC
    path.write_bytes(bytes(data))
    return path


def test_a_png_with_a_crc_error_is_refused(tmp_path, model, capsys):
    image = _png_with_bad_crc(tmp_path / "img" / "damaged.png")
    out = tmp_path / "out"
    argv = ["explain", model, image, "--out", out, "--device", "cpu"]
    cli_error(capsys, argv, INPUT, str(image), "corrupt or truncated image")
    assert not out.exists() or not list(out.rglob("*.json"))


def test_out_equal_to_the_image_folder_does_not_explain_its_own_outputs(tmp_path, model):
    folder = tmp_path / "photos"
    _image(folder / "a.png")
    argv = ["explain", str(model), str(folder), "--out", str(folder), "--device", "cpu"]
    argv += ["--method", "gradient,saliency"]  # two methods: a panel too
    assert main(argv) == 0
    first = sorted(p.name for p in folder.iterdir())
    assert "a.panel.png" in first and any(n.endswith(".heatmap.png") for n in first)
    assert main(argv) == 0
    assert sorted(p.name for p in folder.iterdir()) == first  # nothing new: only a.png explained


# ============================================================================== 27.1 fitted state
def _fitted(tmp_path, model) -> tuple[Path, Path, Path]:
    """``xplain fit iba`` on three images; returns (state dir, metadata file, an image)."""
    data = tmp_path / "fitdata"
    for k in range(3):
        _image(data / f"{k}.png")
    state = tmp_path / "state"
    assert (
        main(["fit", "iba", str(model), str(data), "--state-dir", str(state), "--device", "cpu"])
        == 0
    )
    (meta,) = state.glob("*/iba.json")
    return state, meta, data / "0.png"


def _reseal(meta: Path, **changes) -> None:
    record = json.loads(meta.read_text())
    record.update(changes)
    meta.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("other-layer", "'mean' has shape [4, 8, 8], but layer 'n00002_globalaveragepool'"),
        ("layer-shape", "shape [4, 1, 1], but the model's layer has shape [4, 8, 8]"),
        ("unknown-layer", "which this model does not have"),
        ("code", "which this model does not have"),
        ("tensor-shape", "tensor 'mean' has shape [2]"),
    ],
)
def test_fitted_state_that_does_not_match_the_model_is_refused(
    tmp_path, model, capsys, case, fragment
):
    """Metadata naming another layer (or a layer of another shape), holding code, or tensors of
    another shape with the checksum resealed: explain exits 5 naming the metadata file."""
    import hashlib

    import torch
    from safetensors.torch import save

    state, meta, image = _fitted(tmp_path, model)
    if case == "other-layer":
        _reseal(meta, layer="n00002_globalaveragepool", layer_shape=[4, 1, 1])
    elif case == "layer-shape":
        _reseal(meta, layer_shape=[4, 1, 1])
    elif case == "unknown-layer":
        _reseal(meta, layer="n00099_conv")
    elif case == "code":
        _reseal(meta, layer="__import__('os').system('touch pwned')")
    else:
        tensors = meta.with_suffix(".safetensors")
        payload = save(
            {"mean": torch.zeros(2), "std": torch.ones(2), "active_fraction": torch.ones(2)}
        )
        tensors.write_bytes(payload)
        _reseal(meta, tensors_sha256=hashlib.sha256(payload).hexdigest())
    argv = ["explain", model, image, "--method", "iba", "--state-dir", state, "--device", "cpu"]
    cli_error(capsys, [*argv, "--out", tmp_path / "out"], INPUT, str(meta), fragment)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_fit_never_writes_through_a_symlinked_state_folder(tmp_path, model, capsys):
    state, meta, image = _fitted(tmp_path, model)
    folder = meta.parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    folder.symlink_to(elsewhere)  # or to /etc: the same refusal, nothing is opened there
    argv = ["fit", "iba", model, image.parent, "--state-dir", state, "--device", "cpu"]
    cli_error(capsys, argv, INPUT, str(folder), "symbolic link")
    assert not list(elsewhere.iterdir())
    explain = ["explain", model, image, "--method", "iba", "--state-dir", state, "--device", "cpu"]
    cli_error(capsys, [*explain, "--out", tmp_path / "out"], INPUT, str(folder), "symbolic link")
    folder.unlink()
    folder.symlink_to("/etc")
    cli_error(capsys, argv, INPUT, str(folder), "symbolic link")


# ============================================================================== 27.2 the Python API
@pytest.fixture()
def loaded(model):
    return xplain.load_model(model)


def _x(n=2, c=3, h=8, w=8):
    import torch

    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("case", "error", "fragment"),
    [
        ("rank3", xplain.UsageError, "3-D"),
        ("size", xplain.UsageError, "wrong size"),
        ("channels", xplain.UsageError, "wrong channels"),
        ("int-dtype", xplain.UsageError, "dtype int64"),
        ("list", xplain.UsageError, "got list"),
        ("nan", xplain.InputDataError, "non-finite"),
        ("empty", xplain.UsageError, "empty batch"),
        ("target-range", xplain.UsageError, "target 4 out of range 0..3"),
        ("target-negative", xplain.UsageError, "target -1 out of range"),
        ("target-float", xplain.UsageError, "targets must be integers, got 1.5"),
        ("target-float-tensor", xplain.UsageError, "tensor of float32"),
        ("target-length", xplain.UsageError, "3 targets for a batch of 2"),
        ("unknown-method", xplain.UsageError, "no-such-method"),
        ("param-type", xplain.UsageError, "steps"),
        ("param-bound", xplain.UsageError, "steps"),
        ("params-not-dict", xplain.UsageError, "params must be a dict"),
        ("seed-negative", xplain.UsageError, "seed must be in 0..4294967295"),
        ("seed-huge", xplain.UsageError, "seed must be in 0..4294967295"),
        ("seed-float", xplain.UsageError, "seed must be an integer"),
    ],
)
def test_python_api_mistakes_are_xplain_errors(loaded, case, error, fragment):
    import torch

    x, kw = _x(), {}
    if case == "rank3":
        x = x[0]
    elif case == "size":
        x = _x(h=9)
    elif case == "channels":
        x = _x(c=1)
    elif case == "int-dtype":
        x = torch.zeros(2, 3, 8, 8, dtype=torch.int64)
    elif case == "list":
        x = x.tolist()
    elif case == "nan":
        x[0, 0, 0, 0] = float("nan")
    elif case == "empty":
        x = x[:0]
    elif case.startswith("target"):
        kw["targets"] = {
            "target-range": [0, 4],
            "target-negative": [-1, 0],
            "target-float": [1.5, 0],
            "target-float-tensor": torch.tensor([1.0, 0.0]),
            "target-length": [0, 1, 2],
        }[case]
    elif case == "unknown-method":
        kw["method"] = "no-such-method"
    elif case.startswith("param"):
        kw["method"] = "integrated-gradients"
        kw["params"] = {
            "param-type": {"steps": [1, 2]},
            "param-bound": {"steps": 10**9},
            "params-not-dict": ["steps", 3],
        }[case]
    else:
        kw["seed"] = {"seed-negative": -1, "seed-huge": 2**70, "seed-float": 1.5}[case]
    with pytest.raises(error) as info:
        xplain.explain(loaded, x, **kw)
    line = str(info.value)
    assert fragment in line and "\n" not in line, line


def test_python_api_converts_numpy_and_float64(loaded):
    """The documented conversions: a NumPy array and a float64 tensor give the float32 maps."""
    x = _x()
    ref = xplain.explain(loaded, x, targets=[0, 1], method="gradient").maps
    for given in (x.numpy(), x.double(), x.double().numpy()):
        got = xplain.explain(loaded, given, targets=np.array([0, 1]), method="gradient").maps
        assert got.dtype == ref.dtype and bool((got == ref).all())


# ============================================================================== 27.3 long paths
@pytest.mark.parametrize("kind", ["5000-characters", "300-byte-name"])
@pytest.mark.parametrize("verb", ["explain", "eval"])
def test_an_out_path_too_long_for_the_system_is_one_line(tmp_path, model, capsys, kind, verb):
    image = _image(tmp_path / "img" / "a.png")
    out = (
        tmp_path.joinpath(*["d" * 200] * 25)
        if kind == "5000-characters"
        else tmp_path / ("x" * 300)
    )
    argv = (
        ["explain", model, image, "--out", out, "--device", "cpu"]
        if verb == "explain"
        else _eval_args(model, image.parent, out, "gradient", "ebpg")
    )
    line = cli_error(capsys, argv, USAGE, "--out", "limit of")
    assert len(line) < 300  # the path is shown shortened
