"""Hostile and broken inputs, round two (issue 12): one test (or a parametrised group) per class.

Memory and time bombs, terminal injection, silently wrong or lost results, internal errors on bad
input, misbehaving plugins, and messages. Every hostile file is a few bytes to a few KB built in
``tmp_path``; the memory-bomb tests run in a subprocess whose address space is limited *after* the
imports, so a refusal that came after a big allocation would fail there instead of passing.
"""

from __future__ import annotations

import _thread
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
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
CONTROL = ("\x1b", "\x9b", "\x07", "\x9d", "\x90")


# ------------------------------------------------------------------------------ helpers
@pytest.fixture()
def model(tmp_path) -> Path:
    return factory.save(factory.classifier(), tmp_path / "m" / "tiny.onnx")


def _image(path: Path, size=(12, 10), value=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    pixels = (
        rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        if value is None
        else np.full((size[1], size[0], 3), value, np.uint8)
    )
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture()
def image(tmp_path) -> Path:
    return _image(tmp_path / "img" / "photo.png")


@pytest.fixture()
def registry():
    """The process-wide registry the CLI uses, fresh; in-process plugins added to it vanish after."""
    clear_cache()
    yield get_registry()
    clear_cache()


def _explain(model, images, out, *extra) -> list[str]:
    return ["explain", str(model), *map(str, images), "--out", str(out), "--device", "cpu", *extra]


def _eval(model, data, out, *extra) -> list[str]:
    return [
        "eval",
        str(model),
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


def _fifo(path: Path) -> Path:
    if not hasattr(os, "mkfifo"):  # pragma: no cover
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)
    return path


def _no_control(text: str) -> None:
    assert not any(c in text for c in CONTROL), repr(text)


# ============================================================================== memory and time bombs
_BOMB_CHILD = textwrap.dedent("""
    import json, os, resource, sys
    import xplain.cli.app, xplain.onnx.loader
    from xplain.cli.app import main
    import contextlib, io
    main(["inspect", sys.argv[1]])  # warm up: every lazy import and thread pool exists now
    def vm():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize"):
                return int(line.split()[1]) * 1024
    limit = vm() + int(sys.argv[2]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results = []
    for path in sys.argv[3:]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["inspect", path])
        results.append([rc, err.getvalue()])
    print(json.dumps(results))
""")


def _constant_of_shape_bomb() -> object:
    """A 1 KB classifier that builds a 15000² float tensor (900 MB) and reduces it to a scalar."""
    model = factory.classifier()
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.array([15000, 15000], np.int64), "bomb_shape"))
    g.node[-1].output[0] = "y0"
    g.node.extend(
        [
            helper.make_node(
                "ConstantOfShape",
                ["bomb_shape"],
                ["bomb"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]),
            ),
            helper.make_node("ReduceSum", ["bomb"], ["bomb_sum"], keepdims=0),
            helper.make_node("Add", ["y0", "bomb_sum"], ["y"]),
        ]
    )
    return model


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_memory_bombs_are_refused_before_allocating(tmp_path, model):
    """A declared 5000² input and a graph building a 15000² tensor: exit 3 with one line, in a
    process that may allocate only 600 MB more than it already has (either bomb needs more)."""
    big_input = factory.make_model(
        factory.classifier_nodes(),
        [factory.tensor_info("x", ["N", 3, 5000, 5000])],
        [factory.tensor_info("y", ["N", 4])],
        [numpy_helper.from_array(a, n) for n, a in factory.weights().items()],
    )
    paths = [
        factory.save(big_input, tmp_path / "big_input.onnx"),
        factory.save(_constant_of_shape_bomb(), tmp_path / "constant_of_shape.onnx"),
    ]
    assert all(p.stat().st_size < 4096 for p in paths)
    env = {
        **os.environ,
        "MALLOC_ARENA_MAX": "2",
        "OMP_NUM_THREADS": "1",
        "XPLAIN_MAX_INPUT_PIXELS": "",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _BOMB_CHILD, str(model), "600", *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    _no_control(proc.stderr)  # nothing printed below Python either (onnxruntime's C++ log)
    (rc1, err1), (rc2, err2) = json.loads(proc.stdout.strip().splitlines()[-1])
    for rc, err in ((rc1, err1), (rc2, err2)):
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == MODEL and len(lines) == 1 and lines[0].startswith("xplain: error: "), err
        _no_control(err)  # onnxruntime's own coloured log stays quiet
    assert "5000" in err1 and "--max-input-pixels" in err1
    assert "ConstantOfShape" in err2 and "15000" in err2


def test_max_input_pixels_flag_raises_the_bound(tmp_path, model, capsys, monkeypatch):
    monkeypatch.setenv("XPLAIN_MAX_INPUT_PIXELS", "63")  # the tiny model has 8×8 = 64 pixels
    cli_error(capsys, ["inspect", model], MODEL, model, "64 pixels", "limit of 63")
    assert main(["--max-input-pixels", "64", "inspect", str(model)]) == 0
    monkeypatch.setenv("XPLAIN_MAX_INPUT_PIXELS", "lots")
    cli_error(capsys, ["inspect", model], USAGE, "XPLAIN_MAX_INPUT_PIXELS")


def test_external_data_reuse_is_capped_and_each_range_read_once(tmp_path, monkeypatch, capsys):
    from xplain.onnx import io as onnx_io

    folder = tmp_path / "ext"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(factory.conv_w_bytes())
    model = factory.external_classifier("weights.bin")
    conv_w = next(t for t in model.graph.initializer if t.name == "conv_w")
    for k in range(6):  # six more tensors on the same 432 bytes (unused by the graph)
        extra = model.graph.initializer.add()
        extra.CopyFrom(conv_w)
        extra.name = f"copy{k}"
    path = factory.save(model, folder / "m.onnx")
    reads = []
    real_open = open

    def counting_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith("weights.bin"):
            real_read = handle.read
            handle.read = lambda n=-1: reads.append(n) or real_read(n)
        return handle

    monkeypatch.setattr(onnx_io, "open", counting_open, raising=False)
    onnx_io.read_model(path)
    assert reads == [432]  # seven tensors, one distinct range, read once
    monkeypatch.setattr(onnx_io, "MAX_EXTERNAL_REUSE", 1000)  # 6 × 432 bytes of reuse > 1000
    cli_error(capsys, ["inspect", path], MODEL, path, "reuses the same bytes")


def test_overlay_of_a_large_original_is_drawn_downscaled(tmp_path, model, monkeypatch):
    from xplain.output import render

    monkeypatch.setattr(render, "OVERLAY_MAX_SIDE", 20)
    big = _image(tmp_path / "big.png", size=(80, 60))
    assert main(_explain(model, [big], tmp_path / "out")) == 0
    overlay = Image.open(next((tmp_path / "out").glob("*.overlay.png")))
    assert overlay.size == (20, 15)  # same aspect ratio, long side OVERLAY_MAX_SIDE
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert record["geometry"]["original_size"] == [80, 60]  # the record keeps the true size


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--method", "smoothgrad", "-p", "noise=nan"], USAGE, "finite"),
        (["--method", "smoothgrad", "-p", "noise=inf"], USAGE, "finite"),
        (["--method", "integrated-gradients", "-p", "steps=20000"], USAGE, "steps must be <= 1000"),
        (
            ["--method", "occlusion", "-p", "baseline=1e300"],
            USAGE,
            "baseline must be <=",
        ),  # no declared max
        (["--method", "smoothgrad", "-p", "samples=" + "9" * 5000], USAGE, "samples"),
    ],
    ids=["nan", "inf", "steps", "default-range", "5000-digits"],
)
def test_every_numeric_parameter_is_range_checked(
    tmp_path, model, image, capsys, args, code, fragment
):
    cli_error(capsys, _explain(model, [image], tmp_path / "out", *args), code, fragment)
    assert not (tmp_path / "out").exists()


def test_parameter_schema_bounds_every_plugin():
    """The machinery, not each plugin: a Param with no min/max still has a finite range."""
    p = xplain.Param("anything", "float", 0.0, "third-party parameter")
    q = xplain.Param("count", "int", 1, "third-party parameter", min=0)
    assert p.bounds() == (-1e9, 1e9) and q.bounds() == (0, 100_000)
    for bad in ("nan", "-inf", "1e10"):
        with pytest.raises(ValueError):
            p.parse(bad)
    with pytest.raises(ValueError, match="<= 100000"):
        q.parse("100001")


@pytest.mark.parametrize(
    "sidecar, fragment",
    [
        ({"resize": 70000}, "'resize' must be"),
        ({"resize": 60000}, "resize 60000 is larger than 2048"),
        ({"resize": 5000}, "resize 5000 is larger than 2048"),
        ({"std": 1e-300}, "std values must lie in"),
        ({"mean": [1e300]}, "mean values must lie in"),
        ({"crop": 10**30}, "'crop' must be"),
    ],
)
def test_sidecar_numbers_have_sane_ranges(tmp_path, model, image, capsys, sidecar, fragment):
    (model.parent / "tiny.onnx.json").write_text(json.dumps(sidecar))
    cli_error(capsys, _explain(model, [image], tmp_path / "out"), INPUT, "tiny.onnx.json", fragment)


def test_extreme_aspect_ratio_is_refused(tmp_path, model, capsys, monkeypatch):
    from xplain.data import images

    monkeypatch.setattr(
        images, "MAX_RESIZED_PIXELS", 100_000
    )  # 224-px models reach 2**26 at 1×1500
    thin = _image(tmp_path / "thin.png", size=(1, 20_000))  # 8 × 160,000 after the resize
    cli_error(capsys, _explain(model, [thin], tmp_path / "out"), INPUT, thin, "aspect ratio")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize(
    "kind",
    [
        "image",
        "model",
        "external",
        "state",
        "dev_zero_state",
        "labels",
        "manifest",
        "boxes",
        "sidecar",
        "data",
    ],
)
def test_only_regular_files_are_opened(tmp_path, model, image, capsys, kind):
    """A FIFO blocks forever when opened, /dev/zero never ends: both refused unopened, one line."""
    timer = threading.Timer(60, _thread.interrupt_main)  # a hang fails the test instead of CI
    timer.start()
    try:
        out = tmp_path / "out"
        fifo = tmp_path / "fifo"
        if kind == "image":
            _fifo(tmp_path / "pipe.png")
            cli_error(
                capsys,
                _explain(model, [tmp_path / "pipe.png"], out),
                INPUT,
                "pipe.png",
                "not a regular file",
            )
        elif kind == "model":
            _fifo(tmp_path / "pipe.onnx")
            cli_error(
                capsys,
                ["inspect", tmp_path / "pipe.onnx"],
                MODEL,
                "pipe.onnx",
                "not a regular file",
            )
        elif kind == "external":
            folder = tmp_path / "ext"
            folder.mkdir()
            _fifo(folder / "weights.bin")
            path = factory.save(factory.external_classifier("weights.bin"), folder / "m.onnx")
            cli_error(capsys, ["inspect", path], MODEL, path, "not a regular file")
        elif kind in ("state", "dev_zero_state"):
            import torch

            from xplain.run.state import save_state, state_paths

            digest = xplain.load_model(model).digest
            save_state(digest, "iba", {"a": torch.ones(2)}, {}, root=tmp_path / "state")
            tensors, _ = state_paths(digest, "iba", tmp_path / "state")
            tensors.unlink()
            if kind == "state":
                _fifo(tensors)
            else:
                if not Path("/dev/zero").exists():  # pragma: no cover
                    pytest.skip("no /dev/zero")
                tensors.symlink_to("/dev/zero")
            cli_error(
                capsys,
                _explain(model, [image], out, "--method", "iba", "--state-dir", tmp_path / "state"),
                INPUT,
                tensors,
                "not a regular file",
            )
        elif kind == "labels":
            _fifo(fifo)
            cli_error(
                capsys,
                _explain(model, [image], out, "--labels", fifo),
                INPUT,
                fifo,
                "not a regular file",
            )
        elif kind == "manifest":
            _fifo(tmp_path / "m.csv")
            cli_error(
                capsys, _eval(model, tmp_path / "m.csv", out), INPUT, "m.csv", "not a regular file"
            )
        elif kind == "boxes":
            _fifo(tmp_path / "boxes.json")
            cli_error(
                capsys,
                _eval(model, image.parent, out, "--boxes", tmp_path / "boxes.json"),
                INPUT,
                "boxes.json",
                "not a regular file",
            )
        elif kind == "sidecar":
            _fifo(model.parent / "tiny.onnx.json")
            cli_error(capsys, ["inspect", model], INPUT, "tiny.onnx.json", "not a regular file")
        else:
            _fifo(tmp_path / "data.png")
            cli_error(
                capsys,
                _eval(model, tmp_path / "data.png", out),
                INPUT,
                "data.png",
                "not a regular file",
            )
    finally:
        timer.cancel()


# ============================================================================== terminal injection
CSI = "\x1b[2J\x1b[31m"
OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"
C1 = "\x9b31m\x9d0;title\x9c"
PAYLOAD = CSI + OSC52 + C1


def test_printable_escapes_every_control_sequence():
    from xplain.untrusted import printable

    shown = printable(f"a{PAYLOAD}b\u202ec\x00\x7f\r\nz é 猫")
    _no_control(shown)
    assert (
        shown.startswith("a\\x1b[2J")
        and "\\x9b" in shown
        and "\\u202e" in shown
        and shown.endswith("z é 猫")
    )
    assert "\\x0d\\x0a" in shown and printable("x\ny", keep_newlines=True) == "x\ny"


def test_untrusted_strings_never_reach_the_terminal(tmp_path, capsys):
    """producer_name (inspect), op types/domains (unsupported ops), labels (explain lines), image
    and class-folder names (explain, eval error summary): all shown escaped."""
    proto = factory.classifier()
    proto.producer_name = "evil" + PAYLOAD
    path = factory.save(proto, tmp_path / "m" / "evil.onnx")
    (tmp_path / "m" / "labels.txt").write_text(
        "\n".join(f"class{k}{PAYLOAD}" for k in range(4)) + "\n"
    )
    (tmp_path / "m" / "evil.onnx.json").write_text(json.dumps({"labels": "labels.txt"}))
    assert main(["inspect", str(path)]) == 0
    captured = capsys.readouterr()
    _no_control(captured.out + captured.err)
    assert "evil\\x1b[2J" in captured.out

    img = _image(tmp_path / f"img{CSI}" / f"pic{C1}.png")
    assert main(_explain(path, [img], tmp_path / "out", "--target", "1")) == 0
    captured = capsys.readouterr()
    _no_control(captured.out + captured.err)
    assert "class1\\x1b[2J" in captured.out

    unsupported = factory.single_op_model(
        "Evil" + PAYLOAD.replace("\x07", ""), domain="com.evil" + CSI
    )
    bad = factory.save(unsupported, tmp_path / "ops.onnx")
    line = cli_error(capsys, ["inspect", bad], MODEL)
    _no_control(line)

    manifest = tmp_path / "data.csv"
    manifest.write_text(f"path,label\nmissing{OSC52}.png,0\n", encoding="utf-8")
    assert main(_eval(path, manifest, tmp_path / "eval")) == INPUT
    captured = capsys.readouterr()
    _no_control(captured.out + captured.err)


# ============================================================================== silent wrong results
def test_output_stems_are_unique_across_the_run(tmp_path, model):
    folder = tmp_path / "imgs"
    images = [
        _image(folder / "a.png", value=10),
        _image(folder / "a.jpg", value=200),
        _image(folder / "a-2.png"),
    ]
    assert main(_explain(model, images, tmp_path / "out", "--target", "0")) == 0
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    assert sorted(r["image"] for r in records) == sorted(map(str, images))
    assert len({r["files"]["npy"] for r in records}) == 3


@pytest.mark.parametrize("where", ["../secret.txt", "/etc/passwd", "link.txt"])
def test_sidecar_labels_are_confined_to_the_model_folder(tmp_path, model, capsys, where):
    (tmp_path / "secret.txt").write_text("a\nb\nc\nd\n")
    if where == "link.txt":
        (model.parent / "link.txt").symlink_to(tmp_path / "secret.txt")
    (model.parent / "tiny.onnx.json").write_text(json.dumps({"labels": where}))
    cli_error(capsys, ["inspect", model], INPUT, "tiny.onnx.json", "labels file", "is not allowed")


def test_state_pair_from_two_fits_is_refused(tmp_path, model, image, capsys):
    """A refit killed between the two renames: new tensors beside old metadata."""
    import torch

    from xplain.run.state import load_state, save_state, state_paths

    loaded = xplain.load_model(model)
    digest, layer = loaded.digest, loaded.default_feature_layer().name
    tensors, meta = state_paths(digest, "iba", tmp_path)
    save_state(digest, "iba", {"mean": torch.zeros(4)}, {}, root=tmp_path)
    old_meta = meta.read_bytes()
    save_state(digest, "iba", {"mean": torch.ones(4)}, {}, root=tmp_path)
    meta.write_bytes(old_meta)
    with pytest.raises(xplain.InputDataError, match="do not belong together") as info:
        load_state(digest, "iba", root=tmp_path)
    assert str(tensors) in str(info.value)
    # a state lacking a tensor a method needs names the file, not "KeyError: 'std'"
    # (the mean has the layer's shape: a state of another shape is refused before, issue 27)
    save_state(digest, "iba", {"mean": torch.zeros(4, 8, 8)}, {"layer": layer}, root=tmp_path)
    line = cli_error(
        capsys,
        _explain(model, [image], tmp_path / "out", "--method", "iba", "--state-dir", tmp_path),
        INPUT,
        tensors.name,
    )
    assert "refit" in line


def _plugin(**methods) -> object:
    class Plugin:
        @staticmethod
        @xplain.hookimpl
        def register_methods(register):
            for name, fn in methods.items():
                register(
                    xplain.Method(
                        name=name.replace("_", "-"),
                        summary="test",
                        explain=fn,
                        capabilities=xplain.Capabilities(needs_gradients=False),
                    )
                )

    return Plugin()


def _ones(model, x, targets, params, seed):
    import torch

    return torch.ones(x.shape[0], model.spec.height, model.spec.width)


def test_eval_fails_a_method_that_changes_the_model_and_restores_it(tmp_path, model, registry):
    import torch

    def vandal(m, x, targets, params, seed):  # edits weights in place and leaves a hook behind
        with torch.no_grad():
            next(m.graph.parameters()).mul_(3.0)
        m.graph.register_forward_hook(lambda *a: None)
        return _ones(m, x, targets, params, seed)

    registry.register_plugin(_plugin(vandal=vandal), "vandal-plugin")
    data = tmp_path / "data"
    for k in range(3):
        _image(data / f"{k}.png")
    base = ["eval", str(model), str(data), "--metrics", "deletion", "--device", "cpu", "--no-plots"]
    assert main([*base, "--methods", "gradient", "--out", str(tmp_path / "alone")]) == 0
    # exit 4 at the end: the vandal's results are invalid (issue 25; the others are kept)
    assert main([*base, "--methods", "vandal,gradient", "--out", str(tmp_path / "both")]) == PLUGIN
    alone = {
        r["image"]: r["scores"]
        for r in map(json.loads, (tmp_path / "alone" / "results.jsonl").open())
    }
    both = [json.loads(line) for line in (tmp_path / "both" / "results.jsonl").open()]
    assert all("changed the model" in r["error"] for r in both if r["method"] == "vandal")
    assert {r["image"]: r["scores"] for r in both if r["method"] == "gradient"} == alone


def test_second_eval_on_the_same_out_is_refused(tmp_path, model, image, capsys):
    from xplain.run.guards import lock_output

    out = tmp_path / "out"
    with lock_output(out):  # another run holds the folder
        cli_error(capsys, _eval(model, image.parent, out), USAGE, out, "locked")
    assert not (out / "results.jsonl").exists()
    assert main(_eval(model, image.parent, out)) == 0  # released


def test_out_inside_class_folder_data_is_not_read_as_data(tmp_path, model):
    data = tmp_path / "data"
    for k in range(2):
        _image(data / "0" / f"{k}.png")
        _image(data / "1" / f"{k}.png")
    out = data / "1" / "eval-out"
    args = [
        "eval",
        str(model),
        str(data),
        "--methods",
        "gradient",
        "--metrics",
        "ebpg",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--json",
    ]
    assert main(args) == 0
    assert list((out / "plots").glob("*.png"))  # the run wrote PNGs inside DATA
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4


def test_non_finite_json_and_weights(tmp_path, capsys):
    from xplain.fileio import write_json

    write_json(tmp_path / "r.json", {"probability": float("nan"), "x": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"probability": None, "x": [None, 1.0]}
    proto = factory.classifier()
    fc_w = next(t for t in proto.graph.initializer if t.name == "fc_w")
    values = numpy_helper.to_array(fc_w).copy()
    values[0, 0] = np.nan
    fc_w.CopyFrom(numpy_helper.from_array(values, "fc_w"))
    path = factory.save(proto, tmp_path / "nan.onnx")
    cli_error(capsys, ["inspect", path], MODEL, path, "weights are not finite", "'fc_w'")


# ============================================================================== exit 1 on bad input
DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "1" * 5000


@pytest.mark.parametrize(
    "case",
    [
        "box_deep",
        "box_huge",
        "box_huge_float",
        "sidecar_deep",
        "sidecar_huge",
        "labels_deep",
        "labels_key_huge",
        "manifest_nul",
        "manifest_label_huge",
        "manifest_empty",
        "target_huge",
    ],
)
def test_malformed_text_inputs_are_one_line_errors(tmp_path, model, image, capsys, case):
    out = tmp_path / "out"
    kind, what = case.split("_", 1)
    if kind == "box":
        boxes = tmp_path / "boxes.json"
        text = {
            "deep": DEEP,
            "huge": '{"photo": [[' + HUGE + ", 1, 2, 3]]}",
            "huge_float": '{"photo": [[' + "1" * 4000 + ", 1, 2, 3]]}",
        }[what]
        boxes.write_text(text)
        line = cli_error(capsys, _eval(model, image.parent, out, "--boxes", boxes), INPUT, boxes)
    elif kind == "sidecar":
        (model.parent / "tiny.onnx.json").write_text(
            DEEP if what == "deep" else '{"resize": ' + HUGE + "}"
        )
        line = cli_error(capsys, ["inspect", model], INPUT, "tiny.onnx.json")
    elif kind == "labels":
        labels = tmp_path / "labels.json"
        labels.write_text(DEEP if what == "deep" else '{"' + HUGE + '": "a"}')
        line = cli_error(capsys, _explain(model, [image], out, "--labels", labels), INPUT, labels)
    elif kind == "manifest":
        manifest = tmp_path / "m.csv"
        manifest.write_bytes(
            {
                "nul": b"path,label\nphoto\x00.png,0\n",
                "label_huge": b"path,label\n../img/photo.png," + HUGE.encode() + b"\n",
                "empty": b"path,label\n\n",
            }[what]
        )
        if what == "label_huge":  # one bad row: recorded, and a run where every row failed exits 5
            line = cli_error(capsys, _eval(model, manifest, out), INPUT, "digits")
        else:
            line = cli_error(capsys, _eval(model, manifest, out), INPUT, manifest)
    else:
        line = cli_error(
            capsys, _explain(model, [image], out, "--target", HUGE), USAGE, "out of range"
        )
    assert len(line) < 600


def test_non_utf8_file_names(tmp_path, model):
    folder = tmp_path / "imgs"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9-\xff.png"
    Image.fromarray(np.full((10, 12, 3), 90, np.uint8)).save(os.fsdecode(raw))
    name = Path(os.fsdecode(raw))
    assert main(_explain(model, [name], tmp_path / "out")) == 0
    written = sorted(p.suffix for p in (tmp_path / "out").iterdir())
    assert written == [".json", ".npy", ".png", ".png"]  # all four, the JSON record included
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert "\\xe9" in record["image"] or "\udce9" in record["image"]
    assert (
        main(
            [
                "eval",
                str(model),
                str(folder),
                "--methods",
                "gradient",
                "--metrics",
                "ebpg",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    assert (tmp_path / "eval" / "plots" / "montage.png").is_file()


def test_model_with_zero_classes(tmp_path, capsys):
    proto = factory.classifier()
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 0
    path = factory.save(proto, tmp_path / "zero.onnx")
    cli_error(capsys, ["inspect", path], MODEL, path, "0 classes")


def test_load_model_hook_returning_a_non_model(tmp_path, model, registry, capsys):
    class Loader:
        @staticmethod
        @xplain.hookimpl
        def load_model(path, options):
            return "not a model"

    registry.register_plugin(Loader(), "bad-loader")
    cli_error(capsys, ["inspect", model], PLUGIN, "returned str, not an xplain.Model")


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("batch", "batch size 2 first"),
        ("info", "not finite JSON"),
        ("escape", "'../escaped'"),
        ("reserved", "'json'"),
    ],
)
def test_plugin_extras_and_info_are_checked(tmp_path, model, registry, capsys, case, fragment):
    import torch

    def method(m, x, targets, params, seed):
        maps = _ones(m, x, targets, params, seed)
        extras = {
            "../escaped"
            if case == "escape"
            else "json"
            if case == "reserved"
            else "extra": torch.zeros(x.shape[0] + (case == "batch"), 2)
        }
        info = {"value": object()} if case == "info" else {}
        return xplain.Attribution(maps, extras, info)

    registry.register_plugin(_plugin(sneaky=method), "sneaky-plugin")
    images = [_image(tmp_path / "i" / "a.png"), _image(tmp_path / "i" / "b.png")]
    cli_error(
        capsys,
        _explain(model, images, tmp_path / "o" / "out", "--method", "sneaky"),
        PLUGIN,
        fragment,
    )
    assert not (tmp_path / "o" / "escaped.npy").exists() and not list(
        (tmp_path / "o").rglob("*.npy")
    )


def test_out_is_a_dangling_symlink(tmp_path, model, image, capsys):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "gone")
    cli_error(capsys, _explain(model, [image], out), USAGE, out, "dangling symbolic link")


def test_damaged_results_lines_are_skipped_and_reported(tmp_path, model, image, capsys):
    out = tmp_path / "out"
    assert main(_eval(model, image.parent, out)) == 0
    good = (out / "results.jsonl").read_bytes()
    (out / "results.jsonl").write_bytes(
        b'\xff\xfe{"key": 1}\n{"key": ["x"]}\n{"key": "k", "scores": {"a": "b"}}\n'
        + b"[" * 50_000
        + b"\n"
        + good
    )
    capsys.readouterr()
    assert main(_eval(model, image.parent, out)) == 0
    err = capsys.readouterr().err
    assert "skipped 4 damaged line(s)" in err and "results.jsonl" in err
    assert (
        (out / "results.jsonl").read_bytes().endswith(good)
    )  # resume: the good line counts, nothing redone


def test_disk_full_leaves_all_files_of_an_image_or_none(tmp_path, model, monkeypatch, capsys):
    import errno

    from xplain import fileio

    images = [_image(tmp_path / "i" / "a.png"), _image(tmp_path / "i" / "b.png")]
    real_add = fileio._Group.add
    calls = {"n": 0}

    def add(self, target, data):
        calls["n"] += 1
        if calls["n"] == 7:  # the 3rd file of the second image
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        real_add(self, target, data)

    monkeypatch.setattr(fileio._Group, "add", add)
    out = tmp_path / "out"
    line = cli_error(
        capsys,
        _explain(model, images, out, "--target", "0", "--batch-size", "1"),
        USAGE,
        "No space left on device",
    )
    assert str(out) in line
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        f"a.saliency.0.{s}" for s in ("heatmap.png", "overlay.png", "npy", "json")
    )


# ============================================================================== plugins
def test_sys_exit_in_plugin_import_is_a_plugin_error(tmp_path, monkeypatch, capsys):
    dist = tmp_path / "exit_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: exit-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[xplain]\nbroken_exit = broken_exit_mod\n")
    (tmp_path / "broken_exit_mod.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clear_cache()
    try:
        assert main(["methods"]) == 0
        err = capsys.readouterr().err
        assert "broken_exit" in err and "sys.exit(0)" in err
        assert main(["--strict-plugins", "methods"]) == PLUGIN
        # Ctrl-C while a plugin imports is the user's interrupt, not the plugin's failure
        (dist / "entry_points.txt").write_text("[xplain]\nbroken_ctrl_c = broken_ctrl_c_mod\n")
        (tmp_path / "broken_ctrl_c_mod.py").write_text("raise KeyboardInterrupt\n")
        clear_cache()
        assert main(["methods"]) == ExitCode.INTERRUPTED
    finally:
        clear_cache()
        sys.modules.pop("broken_exit_mod", None)
        sys.modules.pop("broken_ctrl_c_mod", None)


def test_sys_exit_and_ctrl_c_inside_methods_and_metrics(tmp_path, model, image, registry, capsys):
    def exits(m, x, targets, params, seed):
        sys.exit(0)

    def interrupts(m, x, targets, params, seed):
        raise KeyboardInterrupt

    class Metric:
        @staticmethod
        @xplain.hookimpl
        def register_metrics(register):
            register(xplain.Metric(name="exits-metric", summary="t", score=lambda *a: sys.exit(3)))

    registry.register_plugin(_plugin(exits=exits, interrupts=interrupts), "exit-methods")
    registry.register_plugin(Metric(), "exit-metric")
    cli_error(
        capsys,
        _explain(model, [image], tmp_path / "o1", "--method", "exits"),
        PLUGIN,
        "sys.exit(0)",
    )
    assert (
        main(_explain(model, [image], tmp_path / "o2", "--method", "interrupts"))
        == ExitCode.INTERRUPTED
    )
    assert (
        main(
            [
                "eval",
                str(model),
                str(image.parent),
                "--methods",
                "gradient",
                "--metrics",
                "exits-metric",
                "--device",
                "cpu",
                "--no-plots",
                "--out",
                str(tmp_path / "o3"),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "o3" / "results.jsonl").read_text())
    assert "SystemExit" in record["metric_errors"]["exits-metric"]


def test_plugin_rejected_for_a_duplicate_registers_nothing(registry):
    plugin = _plugin(fresh_method=_ones, saliency=_ones)  # the second name is taken by a built-in
    registry.register_plugin(plugin, "half-dup")
    assert (
        "fresh-method" not in registry.methods and registry.methods["saliency"].plugin == "saliency"
    )
    assert "nothing of this plugin was registered" in registry.plugins["half-dup"].error
    assert not registry.pm.is_registered(plugin)


def _forever(m, x, targets, params, seed):
    while True:
        time.sleep(0.01)


def test_timeout_and_ctrl_c_stop_a_method_that_never_returns(
    tmp_path, model, image, registry, capsys
):
    registry.register_plugin(_plugin(forever=_forever), "forever-plugin")
    started = time.monotonic()
    cli_error(
        capsys,
        _explain(model, [image], tmp_path / "o1", "--method", "forever", "--timeout", "0.5"),
        PLUGIN,
        "'forever'",
        "--timeout 0.5",
    )
    timer = threading.Timer(0.5, _thread.interrupt_main)  # Ctrl-C half a second in
    timer.start()
    try:
        assert (
            main(_explain(model, [image], tmp_path / "o2", "--method", "forever"))
            == ExitCode.INTERRUPTED
        )
    finally:
        timer.cancel()
    assert time.monotonic() - started < 30
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


# ============================================================================== messages
def test_four_d_output_message_says_what_differs(tmp_path, capsys):
    proto = factory.classifier()
    g = proto.graph
    g.initializer.append(numpy_helper.from_array(np.array([0, 4, 1, 1], np.int64), "shape4"))
    g.node[-1].output[0] = "y2"
    g.node.append(helper.make_node("Reshape", ["y2", "shape4"], ["y"]))
    del g.output[:]
    g.output.append(factory.tensor_info("y", ["N", 4]))  # declared B×K, computes B×K×1×1
    path = factory.save(proto, tmp_path / "four.onnx")
    line = cli_error(capsys, ["inspect", path], MODEL, path)
    assert "not B×K" in line and "[2, 4, 1, 1] (4-D)" in line


def test_empty_manifest_exits_like_an_empty_folder(tmp_path, model, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n")
    cli_error(capsys, _eval(model, manifest, tmp_path / "out"), INPUT, manifest, "lists no images")
    (tmp_path / "empty").mkdir()
    cli_error(capsys, _eval(model, tmp_path / "empty", tmp_path / "out"), INPUT, "no images found")


def test_onnxruntime_log_stays_quiet(tmp_path, capfd):
    """onnxruntime logs its own errors in colour straight to fd 2; only our one line may appear."""
    proto = factory.classifier()
    proto.graph.node[-1].output[0] = "y0"
    proto.graph.initializer.append(
        numpy_helper.from_array(np.array([7, -1], np.int64), "bad_shape")
    )
    proto.graph.node.append(helper.make_node("Reshape", ["y0", "bad_shape"], ["y"]))
    path = factory.save(proto, tmp_path / "fails_in_ort.onnx")
    assert main(["inspect", str(path)]) == MODEL
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "onnxruntime failed" in err
    _no_control(err)
