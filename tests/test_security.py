"""Hostile model files and state files: no code runs, no file outside the model's folder is read.

* Code injection through ONNX names. torch.fx writes submodule names into the Python source
  of ``forward`` (``getattr(self, "<name>")``, unescaped) and ``exec``s it; onnx2torch uses
  ONNX node names as submodule names. xplain renames everything first
  (``onnx_passes.sanitize_names``); these tests load hostile models, run them, and check that
  no sentinel file appears, that the model still matches onnxruntime, and that every module
  target is a plain identifier. ``test_plain_onnx2torch_*`` prove the payloads are real: the
  same models through plain ``onnx2torch.convert`` run code, break, or silently compute
  something else.
* External data traversal (``..``, absolute paths, symlinks, bad offsets).
* Fitted state is safetensors, never pickle; ``.npy`` outputs refuse object arrays.

Every sentinel lives in ``tmp_path`` (the tests ``chdir`` there), so even a failing test
cannot touch anything else.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import re
import warnings

import numpy as np
import pytest

import xplain
from xplain import ExitCode, InputDataError, ModelError

try:  # tests/ is a package in some checkouts and a plain folder in others
    from . import onnx_factory as factory
except ImportError:  # pragma: no cover
    import onnx_factory as factory

cli_error = factory.cli_error
MODEL = int(ExitCode.MODEL)
SENTINEL = "PWNED"
SAFE_TARGET = re.compile(r"^[a-z][a-z0-9_]*$")


def _sentinels(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"{SENTINEL}*"))


def _ort(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {model.graph.input[0].name: x})[0]


# ============================================================================== name injection
# The tiny classifier with an extra Relu has six nodes: conv, relu, relu2, gap, flatten, fc.
BASE_NAMES = ["conv", "relu", "relu2", "gap", "flatten", "fc"]


def _with(index: int, name: str) -> list[str]:
    names = list(BASE_NAMES)
    names[index] = name
    return names


S = SENTINEL
#: dot-free payloads (onnx2torch turns '.' into '/'); each is the *relu* node's name unless noted
PAYLOADS = {
    # closes the string and getattr call, then runs statements; getattr(self, "training") exists
    "statement": f'training"); import os; getattr(os, "system")("touch {S}"); ("',
    # a getattr default argument is evaluated before the lookup fails; '#' comments out the rest
    "dunder_import": f'a", getattr(__import__("os"), "system")("touch {S}"))#',
    "open_builtin": f'a", open("{S}", "w"))#',
    "pathlib": f'a", getattr(getattr(__import__("pathlib"), "Path")("{S}"), "touch")())#',
    "newline": f'a"\nopen("{S}", "w")\n#',
    "carriage_return": f'a"\ropen("{S}", "w")\r#',
    "backslash": f'a\\", open("{S}", "w"))#',
    "single_quotes": f"a', open('{S}', 'w'))#",
    "braces": '{open("' + S + '", "w")}',
}
NODE_CASES = {
    **{key: _with(1, payload) for key, payload in PAYLOADS.items()},
    # fullwidth letters: Python NFKC-normalises identifiers, so `self.ｇａｐ` *is* `self.gap`
    "lookalike": _with(1, "ｇａｐ"),
    "invisible": _with(1, "re\u200blu\u202e"),
    "long": ["c" * 5000, "r" * 100_000, "relu2", "gap", "flatten", "fc"],
    "initializers": _with(1, "initializers"),
    "training": _with(1, "training"),
    "forward": _with(1, "forward"),
    "dunder": ["__class__", "__init__", "_modules", "self", "input_1", "getattr"],
    "duplicates": [
        "",
        "",
        "",
        "Relu_1",
        "",
        "",
    ],  # unnamed Relu, Relu -> Relu, Relu_1; then an explicit Relu_1
    "empty_and_slashes": ["", "a/b", "/", "..", "", "x/"],
}
#: what plain onnx2torch does with each case (at least this must happen)
PLAIN_EXPECTED = {
    "statement": "sentinel",
    "dunder_import": "sentinel",
    "open_builtin": "sentinel",
    "pathlib": "sentinel",
    "newline": "convert_error",
    "carriage_return": "convert_error",
    "backslash": "convert_error",
    "single_quotes": "payload_in_code",
    "braces": "convert_error",
    "lookalike": "wrong_output",
    "invisible": "payload_in_code",
    "long": "payload_in_code",
    "initializers": "container_replaced",
    "training": "convert_error",
    "forward": "convert_error",
    "dunder": "convert_error",
    "duplicates": "convert_error",
    "empty_and_slashes": "convert_error",
}
assert set(PLAIN_EXPECTED) == set(NODE_CASES)

#: value (tensor) and initializer names; these never reach fx code in onnx2torch, but must
#: survive our pipeline (inputs/outputs are looked up by name for onnxruntime)
VALUE_CASES = {
    "values": {
        "x": PAYLOADS["statement"],
        "c": PAYLOADS["newline"],
        "r": PAYLOADS["backslash"],
        "g": "initializers",
        "f": "forward",
        "y": PAYLOADS["dunder_import"],
    },
    "initializers": {
        "conv_w": "training",
        "conv_b": PAYLOADS["open_builtin"],
        "fc_w": "w" * 20_000,
        "fc_b": "ｆｃ＿ｂ",
    },
    "collide_with_generated": {
        "x": "v1",
        "c": "v0",
        "r": "n00001_relu",
        "conv_w": "v2",
        "y": "input_1",
    },
}


def _hostile(case: str):
    """Build one hostile case: node-name cases and value-name cases (plus 'everything')."""
    model = factory.classifier(extra_relu=True)
    if case in NODE_CASES:
        return factory.set_node_names(model, NODE_CASES[case])
    if case == "everything":
        factory.set_node_names(
            model,
            [
                PAYLOADS[k]
                for k in (
                    "statement",
                    "dunder_import",
                    "open_builtin",
                    "pathlib",
                    "newline",
                    "backslash",
                )
            ],
        )
        mapping = {**VALUE_CASES["values"], **VALUE_CASES["initializers"]}
        return factory.rename_values(model, mapping)
    return factory.rename_values(model, VALUE_CASES[case])


ALL_CASES = [*NODE_CASES, *(f"values:{k}" for k in VALUE_CASES), "everything"]


def _build(case: str):
    return _hostile(case.split(":", 1)[1] if case.startswith("values:") else case)


@pytest.mark.parametrize("case", ALL_CASES)
def test_hostile_names_are_neutralised(tmp_path, monkeypatch, case):
    import torch

    monkeypatch.chdir(tmp_path)
    proto = _build(case)
    path = factory.save(proto, tmp_path / "hostile.onnx")

    model = xplain.load_model(path, device="cpu", verify=True)
    assert model.report.verified

    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _ort(proto, x), rtol=1e-4, atol=1e-5)
    # gradients (what every method uses) run the same generated code path
    xg = torch.from_numpy(x).requires_grad_(True)
    model(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()

    assert _sentinels(tmp_path) == []
    targets = [n.target for n in model.graph.graph.nodes if n.op == "call_module"]
    assert all(SAFE_TARGET.match(t) for t in targets), targets
    assert len(set(targets)) == len(targets) == len(proto.graph.node)
    code = model.graph.code
    for marker in (SENTINEL, "__import__", "open(", "getattr(self"):
        assert marker not in code
    # the original names are kept for display, not lost
    assert sorted(model.report.original_names.values()) == sorted(n.name for n in proto.graph.node)


def test_hostile_names_via_cli(tmp_path, monkeypatch, capsys):
    """inspect and explain (saliency: forward + backward) on the worst model, end to end."""
    from PIL import Image

    from xplain.cli.app import main

    monkeypatch.chdir(tmp_path)
    path = factory.save(_build("everything"), tmp_path / "hostile.onnx")
    assert main(["inspect", "--json", str(path)]) == 0
    assert '"verified": true' in capsys.readouterr().out
    image = tmp_path / "img.png"
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(image)
    assert (
        main(["explain", str(path), str(image), "--out", str(tmp_path / "out"), "--device", "cpu"])
        == 0
    )
    assert (tmp_path / "out").is_dir() and any((tmp_path / "out").iterdir())
    assert _sentinels(tmp_path) == []


def _plain_onnx2torch(proto, payload: str) -> set[str]:
    """What plain onnx2torch (no renaming) does with a model: a set of observed outcomes."""
    import onnx2torch
    import torch

    seen: set[str] = set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = onnx2torch.convert(copy.deepcopy(proto))
    except Exception:  # noqa: BLE001 - SyntaxError, KeyError, RuntimeError ...
        return {"convert_error"}
    if payload and payload in gm.code:
        seen.add("payload_in_code")
    if type(getattr(gm, "initializers", None)).__name__ != "InitializersContainer":
        seen.add("container_replaced")
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    if len(set(targets)) != len(targets):
        seen.add("shared_modules")
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # an unclosed file from a payload's open()
            got = gm(torch.from_numpy(x)).numpy()
        if not np.allclose(got, _ort(proto, x), rtol=1e-4, atol=1e-5):
            seen.add("wrong_output")
    except Exception:  # noqa: BLE001
        seen.add("forward_error")
    return seen


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # the file a payload's open() leaves open
@pytest.mark.parametrize("case", list(NODE_CASES))
def test_plain_onnx2torch_is_vulnerable(tmp_path, monkeypatch, case):
    """Without our renaming, each hostile node-name case runs code, breaks, or misbehaves.

    Everything (sentinels included) happens inside ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    proto = _hostile(case)
    payload = max(NODE_CASES[case], key=len)
    seen = _plain_onnx2torch(proto, payload)
    if PLAIN_EXPECTED[case] == "sentinel":
        assert _sentinels(tmp_path) == [SENTINEL], seen
    else:
        assert PLAIN_EXPECTED[case] in seen, seen
    # and our loader handles the very same file (sentinel removed first)
    for leftover in tmp_path.glob(f"{SENTINEL}*"):
        leftover.unlink()
    model = xplain.load_model(factory.save(proto, tmp_path / "m.onnx"))
    assert model.report.verified and _sentinels(tmp_path) == []


def test_duplicate_explicit_node_names(tmp_path, monkeypatch, capsys):
    """onnx's checker allows two nodes named alike, onnxruntime (the reference) does not:
    rejected with its reason when verifying; converted with unique modules when not."""
    monkeypatch.chdir(tmp_path)
    path = factory.save(
        factory.set_node_names(
            factory.classifier(extra_relu=True), ["dup", "dup", "dup_1", "dup", "dup_1", "dup_2"]
        ),
        tmp_path / "dup.onnx",
    )
    cli_error(
        capsys, ["inspect", path], MODEL, path, "onnxruntime cannot run the model", "same node name"
    )
    model = xplain.load_model(path, verify=False)
    targets = [n.target for n in model.graph.graph.nodes if n.op == "call_module"]
    assert len(set(targets)) == len(targets) == 6 and all(SAFE_TARGET.match(t) for t in targets)


def test_every_sanitised_name_is_an_identifier():
    """Names after the pass: nodes n00000_<op>, values v<N>; nothing of the original left."""
    from xplain.onnx.passes import sanitize_names

    proto = _build("everything")
    originals, note = sanitize_names(proto)
    g = proto.graph
    values = [v.name for v in list(g.input) + list(g.output)] + [t.name for t in g.initializer]
    values += [n for node in g.node for n in list(node.input) + list(node.output)]
    assert all(re.fullmatch(r"v\d+", v) for v in values), values
    assert [n.name for n in g.node] == [
        f"n{i:05d}_{n.op_type.lower()}" for i, n in enumerate(g.node)
    ]
    assert set(originals) == {n.name for n in g.node}
    assert note


# ---------------------------------------------------------------------------- hostile names and rich
def test_inspect_input_name_with_markup(tmp_path, capsys):
    from xplain.cli.app import main

    path = factory.save(
        factory.rename_values(factory.classifier(), {"x": "in[/]put", "y": "[bold]out"}),
        tmp_path / "m.onnx",
    )
    rc = main(["inspect", str(path)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "in[/]put" in captured.out and "[bold]out" in captured.out


@pytest.mark.parametrize("name", ["m[bold].onnx", "odd[/]name.onnx"], ids=["styled", "closing-tag"])
def test_inspect_model_path_with_brackets(tmp_path, capsys, name):
    from xplain.cli.app import main

    path = factory.save(factory.classifier(), tmp_path / name)
    rc = main(["inspect", str(path)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert str(path) in captured.out


def test_explain_reports_image_path_verbatim(tmp_path, capsys):
    from PIL import Image

    from xplain.cli.app import main

    model = factory.save(factory.classifier(), tmp_path / "m.onnx")
    image = tmp_path / "img[bogus].png"
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(image)
    rc = main(
        ["explain", str(model), str(image), "--out", str(tmp_path / "out"), "--device", "cpu"]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    heatmaps = list((tmp_path / "out").glob("*.heatmap.png"))
    assert len(heatmaps) == 1
    assert str(image) in captured.out and str(heatmaps[0]) in captured.out


def test_error_line_shows_the_path_verbatim(tmp_path, capsys):
    path = tmp_path / "model :thumbs_up: [red].onnx"
    cli_error(capsys, ["inspect", path], MODEL, path, "no such file")


# ============================================================================== external data
@pytest.fixture()
def ext(tmp_path, monkeypatch):
    """A model folder with good weights, and a secret *outside* it holding the same bytes.

    If a loader followed a hostile location to the secret, the model would load and verify,
    so every refusal below is the path check's doing, not a side effect of bad data."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "model"
    folder.mkdir()
    data = factory.conv_w_bytes()
    (folder / "weights.bin").write_bytes(data)
    (folder / "subdir").mkdir()
    (tmp_path / "secret.bin").write_bytes(data)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "weights.bin").write_bytes(data)
    return folder


def _symlink(target, link):
    try:
        os.symlink(target, link)
    except (OSError, NotImplementedError):  # pragma: no cover - e.g. Windows without privilege
        pytest.skip("symbolic links are not available")


TRAVERSAL = {
    "dotdot": ("../secret.bin", "'..' are refused"),
    "nested_dotdot": ("sub/../../secret.bin", "'..' are refused"),
    "inner_dotdot": ("weights.bin/../weights.bin", "'..' are refused"),
    "absolute_tmp": ("<ABS>", "absolute paths"),
    "etc_passwd": ("/etc/passwd", "absolute paths"),
    "double_slash": ("//etc/passwd", "absolute paths"),
    "backslash": ("..\\secret.bin", "must be a plain relative path"),
    "drive_colon": ("C:secret.bin", "must be a plain relative path"),
    "nul_byte": ("weights.bin\x00../../secret.bin", "must be a plain relative path"),
    "empty": ("", "must be a plain relative path"),
    "missing": ("nothere.bin", "not found beside the model"),
    "the_folder_itself": (".", "not found beside the model"),
    "a_subfolder": ("subdir", "not found beside the model"),
}


@pytest.mark.parametrize("case", list(TRAVERSAL))
def test_external_location_refused(ext, capsys, case):
    location, reason = TRAVERSAL[case]
    if location == "<ABS>":
        location = str(ext.parent / "secret.bin")
    path = factory.save(factory.external_classifier(location), ext / "m.onnx")
    line = cli_error(capsys, ["inspect", path], MODEL, path, reason)
    if location:
        assert "external data" in line


@pytest.mark.parametrize("case", ["file_link_outside", "file_link_inside", "dir_link_outside"])
def test_external_symlinks_refused(ext, capsys, case):
    if case == "file_link_outside":
        _symlink(ext.parent / "secret.bin", ext / "link.bin")
        location = "link.bin"
    elif case == "file_link_inside":  # even a link that stays in the folder: no links at all
        _symlink(ext / "weights.bin", ext / "link.bin")
        location = "link.bin"
    else:
        _symlink(ext.parent / "outside", ext / "sub")
        location = "sub/weights.bin"
    path = factory.save(factory.external_classifier(location), ext / "m.onnx")
    cli_error(capsys, ["inspect", path], MODEL, path, "symbolic links are refused", repr(location))


@pytest.mark.parametrize(
    "offset, length, reason",
    [
        (8, 432, "exceeds"),  # 8 + 432 > 432
        (0, 10_000, "exceeds"),
        (10**6, None, "exceeds"),
        (-4, None, "exceeds"),  # a negative offset
        (0, -1, "exceeds"),
        ("abc", None, "non-numeric"),
        ("0x10", None, "non-numeric"),
        (0, "1e3", "non-numeric"),
    ],
)
def test_external_offset_and_length_checked(ext, capsys, offset, length, reason):
    path = factory.save(
        factory.external_classifier("weights.bin", offset=offset, length=length), ext / "m.onnx"
    )
    cli_error(capsys, ["inspect", path], MODEL, path, "'conv_w'", reason)


def test_external_unknown_key_refused(ext, capsys):
    path = factory.save(
        factory.external_classifier("weights.bin", basepath2="/etc"), ext / "m.onnx"
    )
    cli_error(capsys, ["inspect", path], MODEL, path, "unknown external data keys", "basepath2")


def test_external_total_size_capped(ext, monkeypatch):
    from xplain.onnx import io as onnx_io

    monkeypatch.setattr(onnx_io, "MAX_EXTERNAL_BYTES", 100)
    path = factory.save(factory.external_classifier("weights.bin"), ext / "m.onnx")
    with pytest.raises(ModelError, match="external data exceeds"):
        xplain.load_model(path)


def test_external_in_constant_node_refused(ext):
    path = factory.save(factory.external_constant_classifier("../secret.bin"), ext / "m.onnx")
    with pytest.raises(
        ModelError, match=r"'\.\./secret\.bin' is not allowed .*'\.\.' are refused"
    ) as info:
        xplain.load_model(path)
    assert info.value.exit_code == ExitCode.MODEL and str(path) in str(info.value)


def test_external_in_subgraph_refused(ext):
    path = factory.save(factory.external_subgraph_classifier("/etc/passwd"), ext / "m.onnx")
    with pytest.raises(ModelError, match="absolute paths"):
        xplain.load_model(path)


def test_external_refusal_api(ext):
    path = factory.save(factory.external_classifier("../secret.bin"), ext / "m.onnx")
    with pytest.raises(ModelError) as info:
        xplain.load_model(path)
    assert "'..' are refused" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("location", ["weights.bin", "./weights.bin", "data/weights.bin"])
def test_legitimate_external_data_loads_and_verifies(ext, location):
    (ext / "data").mkdir()
    (ext / "data" / "weights.bin").write_bytes(factory.conv_w_bytes())
    path = factory.save(factory.external_classifier(location), ext / "m.onnx")
    model = xplain.load_model(path)
    assert model.report.verified
    inline = xplain.load_model(factory.save(factory.classifier(), ext / "inline.onnx"))
    x = inline.example_input(2)
    assert np.allclose(model(x).numpy(), inline(x).numpy(), atol=1e-6)


def test_legitimate_external_data_shared_file_with_offsets(ext):
    """Two tensors in one file at offsets (what onnx's own saver writes), plus a Constant."""
    from onnx import numpy_helper

    model = factory.classifier()
    blob = bytearray(b"\0" * 5)  # unaligned start
    for t in model.graph.initializer:
        if t.name in ("conv_w", "fc_w"):
            raw = numpy_helper.to_array(t).astype("<f4").tobytes()
            factory.externalize(t, "blob.bin", offset=len(blob), length=len(raw))
            blob += raw + b"\xff" * 3
    (ext / "blob.bin").write_bytes(bytes(blob))
    path = factory.save(model, ext / "m.onnx")
    assert xplain.load_model(path).report.verified


def test_external_data_is_part_of_the_digest(ext):
    """Fitted state is keyed by the digest, so swapping weights.bin must change it."""
    path = factory.save(factory.external_classifier("weights.bin"), ext / "m.onnx")
    first = xplain.load_model(path, verify=False).digest
    (ext / "weights.bin").write_bytes(factory.conv_w_bytes(seed=1))
    assert xplain.load_model(path, verify=False).digest != first


# ============================================================================== state is never pickle
DIGEST = "ab" * 32


class _Evil:
    """Unpickling this creates the sentinel file (in the cwd, i.e. tmp_path)."""

    def __reduce__(self):
        return (open, (SENTINEL, "w"))


@pytest.fixture()
def no_unpickling(monkeypatch):
    """Fail loudly if anything in the state path reaches for pickle or torch.load."""
    import torch

    def boom(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)


def test_state_round_trip(tmp_path):
    import torch

    from xplain.run.state import load_state, save_state

    tensors = {
        "mean": torch.arange(12.0).reshape(3, 4),
        "count": torch.tensor([1, 2, 3]),
        "half": torch.ones(2, dtype=torch.float16),
        "flag": torch.tensor([True, False]),
    }
    path = save_state(DIGEST, "demo", tensors, {"epochs": 3, "layer": "n00001_relu"}, root=tmp_path)
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    head = path.read_bytes()[:9]
    header_len = int.from_bytes(head[:8], "little")
    assert (
        0 < header_len < path.stat().st_size and head[8:9] == b"{"
    )  # safetensors: u64 + JSON header
    got, meta = load_state(DIGEST, "demo", root=tmp_path)
    assert set(got) == set(tensors)
    for key, value in tensors.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value)
    assert meta["epochs"] == 3 and meta["model_digest"] == DIGEST and meta["method"] == "demo"
    assert load_state(DIGEST, "other", root=tmp_path) is None


def _pickled_state(tmp_path, payload: bytes):
    import torch

    from xplain.run.state import save_state

    path = save_state(DIGEST, "demo", {"a": torch.ones(2)}, {}, root=tmp_path / "state")
    path.write_bytes(payload)
    return path


def _torch_save_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["pickle", "pickle_protocol0", "torch_save"])
def test_pickle_state_is_rejected(tmp_path, monkeypatch, no_unpickling, kind):
    from xplain.run.state import load_state

    monkeypatch.chdir(tmp_path)
    payload = {
        "pickle": lambda: pickle.dumps(_Evil()),
        "pickle_protocol0": lambda: pickle.dumps(_Evil(), protocol=0),
        "torch_save": lambda: _torch_save_bytes({"a": _Evil()}),
    }[kind]()
    path = _pickled_state(tmp_path, payload)
    with pytest.raises(InputDataError, match="fitted state is unreadable") as info:
        load_state(DIGEST, "demo", root=tmp_path / "state")
    assert info.value.exit_code == ExitCode.INPUT and str(path) in str(info.value)
    assert _sentinels(tmp_path) == []


def test_state_for_another_model_is_rejected(tmp_path):
    import torch

    from xplain.run.state import load_state, save_state

    save_state(DIGEST, "demo", {"a": torch.ones(2)}, {}, root=tmp_path)
    meta = tmp_path / DIGEST[:16] / "demo.json"
    meta.write_text('{"model_digest": "' + "ab" * 8 + "cd" * 24 + '", "method": "demo"}')
    with pytest.raises(InputDataError, match="belongs to another model"):
        load_state(DIGEST, "demo", root=tmp_path)


@pytest.mark.parametrize("text", ["not json", "\xff\xfe"])
def test_state_with_unreadable_metadata_is_rejected(tmp_path, text):
    import torch

    from xplain.run.state import load_state, save_state

    save_state(DIGEST, "demo", {"a": torch.ones(2)}, {}, root=tmp_path)
    (tmp_path / DIGEST[:16] / "demo.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(InputDataError, match="unreadable"):
        load_state(DIGEST, "demo", root=tmp_path)


@pytest.mark.parametrize("text", ["[1, 2]", "null"])
def test_state_metadata_not_an_object_is_rejected(tmp_path, text):
    import torch

    from xplain.run.state import load_state, save_state

    save_state(DIGEST, "demo", {"a": torch.ones(2)}, {}, root=tmp_path)
    (tmp_path / DIGEST[:16] / "demo.json").write_text(text)
    with pytest.raises(InputDataError):
        load_state(DIGEST, "demo", root=tmp_path)


# ============================================================================== .npy outputs
def test_save_npy_refuses_object_arrays(tmp_path):
    from xplain.fileio import save_npy

    target = tmp_path / "map.npy"
    with pytest.raises(ValueError, match="allow_pickle=False"):
        save_npy(target, np.array([_Evil(), 1.0], dtype=object))
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left


def test_save_npy_output_loads_without_pickle(tmp_path):
    from xplain.fileio import save_npy

    target = tmp_path / "map"  # no suffix: written at exactly this path
    array = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    save_npy(target, array)
    assert [p.name for p in tmp_path.iterdir()] == ["map"]
    np.testing.assert_array_equal(np.load(target, allow_pickle=False), array)
