"""Unusable models, bad command lines and bad images: one clear line and the right exit code.

Every bad file is built here, in ``tmp_path``, from small ``onnx.helper`` graphs
(``tests/onnx_factory.py``). Each case is checked through the CLI (exit code, exactly one
non-empty stderr line naming the file and the reason, no traceback) and a few through the
Python API (``xplain.load_model`` raising the documented exception).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import xplain
from xplain import ExitCode, InputDataError, ModelError, UnsupportedOpsError, UsageError

try:  # tests/ is a package in some checkouts and a plain folder in others
    from . import onnx_factory as factory
except ImportError:  # pragma: no cover
    import onnx_factory as factory

cli_error = factory.cli_error
MODEL = int(ExitCode.MODEL)
USAGE = int(ExitCode.USAGE)
INPUT = int(ExitCode.INPUT)
NOT_ONNX = "not an ONNX model, or the file is truncated"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    """A valid tiny classifier file (the source of the truncated variants, and for explain)."""
    return factory.save(factory.classifier(), tmp_path_factory.mktemp("good") / "tiny.onnx")


@pytest.fixture(scope="module")
def good_image(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray((rng.random((12, 10, 3)) * 255).astype("uint8")).save(path)
    return path


def _inspect_error(capsys, path, *fragments) -> str:
    return cli_error(capsys, ["inspect", path], MODEL, path, *fragments)


# ------------------------------------------------------------------------------ unreadable files
def test_sanity_the_good_model_loads(good_model, capsys):
    """The base model of every variant below is fine, so each rejection is due to the defect."""
    from xplain.cli.app import main

    assert main(["inspect", "--json", str(good_model)]) == 0
    assert '"verified": true' in capsys.readouterr().out


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.onnx"
    _inspect_error(capsys, path, "no such file")


def test_directory(tmp_path, capsys):
    path = tmp_path / "model.onnx"
    path.mkdir()
    _inspect_error(capsys, path, "is a directory")


def test_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _inspect_error(capsys, path, "empty file")


@pytest.mark.parametrize(
    "text",
    [
        "hello, this is not a model\n",
        "ir_version: 8\ngraph { node { op_type: 'Relu' } }\n",  # onnx's *text* format is not accepted either
        "\x89PNG\r\n\x1a\n",
    ],
)
def test_text_file_named_onnx(tmp_path, capsys, text):
    path = tmp_path / "model.onnx"
    path.write_text(text)
    _inspect_error(capsys, path, NOT_ONNX)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_truncated_file(tmp_path, capsys, good_model, fraction):
    data = good_model.read_bytes()
    path = tmp_path / f"cut{int(fraction * 100)}.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    _inspect_error(capsys, path, NOT_ONNX, "truncated")


def test_truncated_file_api(tmp_path, good_model):
    data = good_model.read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated") as info:
        xplain.load_model(path)
    assert info.value.exit_code == ExitCode.MODEL
    assert info.value.path == str(path)


def test_valid_protobuf_without_graph(tmp_path, capsys):
    """Bytes that parse as a ModelProto but carry no graph (e.g. an onnx OperatorSetProto)."""
    import onnx

    model = onnx.ModelProto(ir_version=8, producer_name="empty")
    path = tmp_path / "nograph.onnx"
    path.write_bytes(model.SerializeToString())
    _inspect_error(capsys, path, NOT_ONNX, "no graph")


# ------------------------------------------------------------------------------ checker failures
def test_checker_undefined_input(tmp_path, capsys):
    path = factory.save(factory.undefined_input_model(), tmp_path / "undef.onnx")
    _inspect_error(capsys, path, "ONNX checker failed", "'nowhere'")


def test_checker_wrong_attribute_type(tmp_path, capsys):
    path = factory.save(factory.wrong_attribute_type_model(), tmp_path / "attr.onnx")
    _inspect_error(capsys, path, "ONNX checker failed", "pads", "INTS", "STRING")


def test_checker_failure_api(tmp_path):
    path = factory.save(factory.wrong_attribute_type_model(), tmp_path / "attr.onnx")
    with pytest.raises(ModelError, match="ONNX checker failed") as info:
        xplain.load_model(path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ unsupported ops
@pytest.fixture(scope="module")
def lacking():
    """Two ops without a converter *today* (``unsupported_ops`` decides, with xplain's own
    additions registered), as ``(op, label)`` pairs; the custom-domain op is always lacking."""
    from xplain.onnx.converters import unsupported_ops

    found = []
    for op in factory.UNSUPPORTED_CANDIDATES:
        missing = unsupported_ops(factory.single_op_model(op))
        if missing:
            (label,) = missing
            assert label.startswith(f"{op}-")
            found.append((op, label))
    if len(found) < 2:  # pragma: no cover - every candidate gained a converter
        pytest.skip(f"fewer than two candidate ops lack a converter: {found}")
    return found[:2]


def test_custom_domain_op_is_unsupported():
    from xplain.onnx.converters import unsupported_ops

    assert dict(unsupported_ops(factory.single_op_model("Foo", "com.example"))) == {
        "com.example.Foo": 1
    }
    assert not unsupported_ops(factory.classifier())


def _unsupported(lacking):
    (twice, twice_label), (once, once_label) = lacking
    expected = {twice_label: 2, once_label: 1, "com.example.Foo": 1}
    return factory.unsupported_ops_model(twice=twice, once=once), expected


def test_unsupported_ops_counted_by_preflight(lacking):
    from xplain.onnx.converters import unsupported_ops

    model, expected = _unsupported(lacking)
    assert dict(unsupported_ops(model)) == expected


def test_unsupported_ops_all_listed_with_counts(tmp_path, capsys, lacking):
    model, expected = _unsupported(lacking)
    path = factory.save(model, tmp_path / "unsup.onnx")
    line = _inspect_error(
        capsys, path, "unsupported ONNX ops", *(f"{op} x{n}" for op, n in expected.items())
    )
    listed = line.split("unsupported ONNX ops: ")[1].split(", ")
    assert sorted(listed) == sorted(f"{op} x{n}" for op, n in expected.items())  # and nothing else


def test_unsupported_ops_api(tmp_path, lacking):
    model, expected = _unsupported(lacking)
    path = factory.save(model, tmp_path / "unsup.onnx")
    with pytest.raises(UnsupportedOpsError) as info:
        xplain.load_model(path)
    assert isinstance(info.value, ModelError)
    assert info.value.exit_code == ExitCode.MODEL
    assert info.value.ops == expected


# ------------------------------------------------------------------------------ not a classifier
def test_input_rank_3(tmp_path, capsys):
    path = factory.save(factory.rank3_input_model(), tmp_path / "signal.onnx")
    _inspect_error(capsys, path, "input 'x' has shape [N, 3, 8]", "not an image classifier")


def test_output_rank_4(tmp_path, capsys):
    path = factory.save(factory.rank4_output_model(), tmp_path / "seg.onnx")
    _inspect_error(capsys, path, "output 'y' has shape [N, 4, 8, 8]", "not a classifier")


def test_two_float_inputs(tmp_path, capsys):
    path = factory.save(factory.two_inputs_model(), tmp_path / "two.onnx")
    _inspect_error(capsys, path, "model has 2 inputs ('x', 'x2')", "single-input")


def test_fixed_batch_above_one(tmp_path, capsys):
    path = factory.save(factory.classifier(batch=2), tmp_path / "batch2.onnx")
    _inspect_error(capsys, path, "batch fixed at 2")


def test_fixed_batch_one_is_fine(tmp_path):
    model = xplain.load_model(factory.save(factory.classifier(batch=1), tmp_path / "batch1.onnx"))
    assert model.spec.fixed_batch and model.report.verified


@pytest.mark.parametrize(
    "build, fragment",
    [
        (factory.rank3_input_model, "not an image classifier"),
        (factory.rank4_output_model, "not a classifier"),
        (factory.two_inputs_model, "2 inputs"),
        (lambda: factory.classifier(batch=4), "batch fixed at 4"),
    ],
    ids=["rank3", "rank4out", "two-inputs", "batch4"],
)
def test_not_a_classifier_api(tmp_path, build, fragment):
    path = factory.save(build(), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=fragment.replace("(", r"\(")) as info:
        xplain.load_model(path)
    assert str(path) in str(info.value)


def test_sparse_initializer_error_names_the_file(tmp_path, capsys):
    path = factory.save(factory.sparse_initializer_model(), tmp_path / "sparse.onnx")
    _inspect_error(capsys, path, "sparse initializers are not supported")


# ------------------------------------------------------------------------------ bad command lines
def test_unknown_method(tmp_path, capsys, good_model, good_image):
    cli_error(
        capsys,
        ["explain", good_model, good_image, "--method", "nope", "--out", tmp_path / "out"],
        USAGE,
        "unknown method 'nope'",
    )
    assert not (tmp_path / "out").exists()


def test_unknown_method_suggests_close_name(tmp_path, capsys, good_model, good_image):
    cli_error(
        capsys,
        ["explain", good_model, good_image, "--method", "salincy", "--out", tmp_path / "out"],
        USAGE,
        "unknown method 'salincy'",
        "did you mean saliency",
    )


def test_unknown_param_lists_valid_ones(tmp_path, capsys, good_model, good_image):
    cli_error(
        capsys,
        [
            "explain",
            good_model,
            good_image,
            "--method",
            "saliency",
            "--param",
            "unknown=1",
            "--out",
            tmp_path / "out",
        ],
        USAGE,
        "method 'saliency' has no parameter 'unknown'",
        "valid: none",
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("param", ["foo", "=1", " =1"])
def test_malformed_param(tmp_path, capsys, good_model, good_image, param):
    cli_error(
        capsys,
        ["explain", good_model, good_image, "--param", param, "--out", tmp_path / "out"],
        USAGE,
        f"--param {param!r} is not key=value",
    )


def test_unknown_param_api(good_model):
    model = xplain.load_model(good_model)
    import torch

    with pytest.raises(UsageError, match="valid: none"):
        xplain.explain(model, torch.zeros(1, 3, 8, 8), method="saliency", params={"unknown": 1})
    with pytest.raises(UsageError, match="unknown method 'nope'"):
        xplain.explain(model, torch.zeros(1, 3, 8, 8), method="nope")


def test_unknown_option_is_usage_error(capsys, good_model):
    from xplain.cli.app import main

    assert main(["inspect", str(good_model), "--no-such-option"]) == USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--no-such-option" in err


# ------------------------------------------------------------------------------ bad images
def _explain_args(model, images, out):
    return ["explain", model, *images, "--out", out, "--device", "cpu", "--batch-size", "1"]


def _files(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_explain_missing_image(tmp_path, capsys, good_model):
    image, out = tmp_path / "nope.png", tmp_path / "out"
    cli_error(capsys, _explain_args(good_model, [image], out), INPUT, image, "no such file")
    assert _files(out) == []


def test_explain_folder_without_images(tmp_path, capsys, good_model):
    image, out = (
        tmp_path / "pics.png",
        tmp_path / "out",
    )  # a folder is its images; this one has none
    image.mkdir()
    (image / "notes.txt").write_text("no pictures here")
    cli_error(capsys, _explain_args(good_model, [image], out), INPUT, image, "no images found")
    assert _files(out) == []


def test_explain_corrupt_image(tmp_path, capsys, good_model, good_image):
    data = good_image.read_bytes()
    image, out = tmp_path / "broken.png", tmp_path / "out"
    image.write_bytes(data[: len(data) // 2])
    cli_error(
        capsys, _explain_args(good_model, [image], out), INPUT, image, "corrupt or truncated image"
    )
    assert _files(out) == []


def test_explain_text_file_named_png(tmp_path, capsys, good_model):
    image, out = tmp_path / "notes.png", tmp_path / "out"
    image.write_text("this is not an image\n")
    cli_error(capsys, _explain_args(good_model, [image], out), INPUT, image, "not an image file")
    assert _files(out) == []


def test_explain_bad_image_after_a_good_one(tmp_path, capsys, good_model, good_image):
    """The good image (its own batch) is written completely; nothing at all for the bad one."""
    image, out = tmp_path / "broken.png", tmp_path / "out"
    image.write_text("garbage")
    cli_error(
        capsys,
        _explain_args(good_model, [good_image, image], out),
        INPUT,
        image,
        "not an image file",
    )
    names = _files(out)
    assert not [n for n in names if n.startswith("broken")], names
    assert not [n for n in names if n.startswith(".")], names  # no leftover temp files
    assert names and all(n.startswith("photo.saliency.") for n in names), names
    assert {n.split(".", 3)[-1] for n in names} == {"heatmap.png", "overlay.png", "npy", "json"}


def test_load_image_api_raises_input_error(tmp_path):
    from xplain.data.images import load_image

    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(InputDataError) as info:
        load_image(path)
    assert info.value.exit_code == ExitCode.INPUT and str(path) in str(info.value)
