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
