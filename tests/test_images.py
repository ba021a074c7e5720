"""Image loading, preprocessing geometry/values, sidecars, labels and target resolution."""

from __future__ import annotations

import json
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from xplain.data.images import (
    Geometry,
    Preprocess,
    imagenet_labels,
    load_image,
    load_labels,
    read_sidecar,
    resolve_target,
)
from xplain.errors import ExitCode, InputDataError, ModelError, UsageError


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


# --------------------------------------------------------------------------------------------
# load_image
# --------------------------------------------------------------------------------------------


def test_16bit_png_scaled_to_8bit(tmp_path):
    # x * 255 / 65535, rounded; 65280 -> 254.0 (a plain ">> 8" would give 255).
    a = np.array([[0, 65535, 32768, 25700, 65280]], dtype=np.uint16)
    path = _save(Image.fromarray(a), tmp_path / "g16.png")
    assert Image.open(path).mode == "I;16"
    img = load_image(path)
    assert img.mode == "L"
    assert np.asarray(img).tolist() == [[0, 255, 128, 100, 254]]


def test_16bit_big_endian_mode(tmp_path):
    # I;16B comes from e.g. PNM/TIFF files; same scaling.
    im = Image.frombytes("I;16B", (2, 1), struct.pack(">HH", 65535, 257))
    path = _save(im, tmp_path / "b.tif")
    assert np.asarray(load_image(path)).tolist() == [[255, 1]]


def test_rgba_composited_on_white(tmp_path):
    a = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    path = _save(Image.fromarray(a, "RGBA"), tmp_path / "a.png")
    img = load_image(path)
    assert img.mode == "RGB"
    # transparent red -> white; opaque blue stays; half-transparent black -> 255 * (1 - 128/255)
    assert np.asarray(img).tolist() == [[[255, 255, 255], [0, 0, 255], [127, 127, 127]]]


def test_la_composited_on_white_stays_gray(tmp_path):
    a = np.array([[[0, 0], [0, 255], [100, 51]]], dtype=np.uint8)
    path = _save(Image.fromarray(a, "LA"), tmp_path / "la.png")
    img = load_image(path)
    assert img.mode == "L"
    # 100 * 0.2 + 255 * 0.8 = 224
    assert np.asarray(img).tolist() == [[255, 0, 224]]


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * (254 * 3))
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    path = _save(im, tmp_path / "p.png", transparency=0)
    img = load_image(path)
    assert img.mode == "RGB"
    assert np.asarray(img).tolist() == [[[255, 255, 255], [200, 100, 50]]]


def test_grayscale_jpeg_stays_l(tmp_path):
    path = _save(Image.new("L", (16, 8), 77), tmp_path / "g.jpg", quality=95)
    img = load_image(path)
    assert img.mode == "L" and img.size == (16, 8)
    assert abs(int(np.asarray(img).mean().round()) - 77) <= 1


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = _save(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), tmp_path / "c.jpg", quality=100)
    img = load_image(path)
    assert img.mode == "RGB"
    assert np.asarray(img).min() >= 250  # no ink = white


@pytest.mark.parametrize(
    "fmt,ext,kw",
    [
        ("WEBP", "webp", {"lossless": True}),
        ("TIFF", "tif", {}),
        ("BMP", "bmp", {}),
        ("PNG", "png", {}),
    ],
)
def test_lossless_formats_roundtrip(tmp_path, fmt, ext, kw):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = _save(Image.fromarray(a), tmp_path / f"x.{ext}", format=fmt, **kw)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(img), a)


def test_float_tiff_unit_range_and_0_255_range(tmp_path):
    unit = np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32)
    p1 = _save(Image.fromarray(unit, "F"), tmp_path / "u.tif")
    assert np.asarray(load_image(p1)).tolist() == [[0, 128, 255, 0]]
    big = np.array([[0.0, 2.0, 254.6, 300.0]], dtype=np.float32)  # max > 1: already 0..255
    p2 = _save(Image.fromarray(big, "F"), tmp_path / "b.tif")
    assert np.asarray(load_image(p2)).tolist() == [[0, 2, 255, 255]]


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    a[:, :20] = (255, 0, 0)  # left half red
    a[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(Image.fromarray(a), tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    img = load_image(path)
    assert img.size == (20, 40)  # transposed
    arr = np.asarray(img).astype(int)
    # Rotating clockwise moves the left edge to the top.
    assert arr[5, 10, 0] > 200 and arr[5, 10, 2] < 60
    assert arr[35, 10, 2] > 200 and arr[35, 10, 0] < 60


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(1)
    good = _save(
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), tmp_path / "good.png"
    )
    data = good.read_bytes()
    bad = tmp_path / "bad.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputDataError, match="corrupt or truncated") as e:
        load_image(bad)
    assert e.value.path == str(bad)
    assert e.value.exit_code == ExitCode.INPUT


def test_text_file_named_png(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("hello, not an image")
    with pytest.raises(InputDataError, match=r"not an image file \(cannot identify format\)"):
        load_image(path)


def test_directory_and_missing(tmp_path):
    with pytest.raises(InputDataError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(InputDataError, match="not found") as e:
        load_image(tmp_path / "nope.jpg")
    assert str(e.value).startswith(str(tmp_path / "nope.jpg"))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width``×``height`` and that has no pixel data at all."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(InputDataError) as e:
        load_image(path)
    assert (
        f"image too large: 10000000000 pixels exceeds the limit of {Image.MAX_IMAGE_PIXELS}"
    ) in str(e.value)


@pytest.mark.parametrize("size", [(4, 4), (100, 100)])  # Pillow warns at 16 px, errors at 10000
def test_decompression_bomb_low_limit(tmp_path, monkeypatch, size):
    path = _save(Image.new("RGB", size), tmp_path / "s.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(
            InputDataError,
            match=rf"image too large: {size[0] * size[1]} pixels exceeds the limit of 10",
        ):
            load_image(path)
    assert not caught  # Pillow's warning became the error; nothing leaks to stderr


def test_within_limit_loads(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (2, 5)), tmp_path / "s.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    assert load_image(path).size == (2, 5)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def test_to_original_same_size_places_map():
    g = Geometry(original_size=(4, 3), resized_size=(4, 3), crop_box=(1, 0, 3, 3))
    out = g.to_original(np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32))
    nan = np.nan
    np.testing.assert_array_equal(out, [[nan, 1, 2, nan], [nan, 3, 4, nan], [nan, 5, 6, nan]])


def test_to_original_upscale_hand_computed():
    # Resized row of 3 px, crop = first 2 (values 2, 4), original = 6 px (x2).
    # Bilinear x2 (pixel centres aligned): output x samples source at (x + 0.5) / 2 - 0.5:
    # -0.25 -> 2 (edge), 0.25 -> 2.5, 0.75 -> 3.5, 1.25 -> 4 (only valid neighbour counts),
    # 1.75 -> 3/4 of its weight outside the crop -> NaN, 2.25 -> NaN.
    g = Geometry(original_size=(6, 1), resized_size=(3, 1), crop_box=(0, 0, 2, 1))
    out = g.to_original(np.array([[2.0, 4.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[2.0, 2.5, 3.5, 4.0, np.nan, np.nan]], rtol=1e-6)


def test_to_original_rejects_wrong_shape():
    g = Geometry((6, 1), (3, 1), (0, 0, 2, 1))
    with pytest.raises(ValueError):
        g.to_original(np.zeros((2, 2)))


def test_to_original_imagenet_boundaries():
    pre = Preprocess.from_options((3, 224, 224))
    g = pre.geometry((500, 375))
    out = g.to_original(np.ones((224, 224)))
    assert out.shape == (375, 500)
    # Crop x in resized [58, 282) -> original [58 * 500/341, 282 * 500/341) = [85.04, 413.49);
    # y in resized [16, 240) -> original [16 * 375/256, 240 * 375/256) = [23.4, 351.6).
    assert np.isnan(out[:, :85]).all() and np.isnan(out[:, 415:]).all()
    assert np.isnan(out[:23]).all() and np.isnan(out[353:]).all()
    np.testing.assert_allclose(out[24:351, 86:413], 1.0, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Preprocess
# --------------------------------------------------------------------------------------------


def test_auto_presets():
    assert Preprocess.from_options((3, 224, 224)).preset == "imagenet"
    assert Preprocess.from_options((3, 32, 32)).preset == "unit"
    assert Preprocess.from_options((1, 224, 224)).preset == "unit"


def test_imagenet_geometry_landscape_and_portrait():
    pre = Preprocess.from_options((3, 224, 224))
    assert pre.resize == 256 and pre.crop == (224, 224) and pre.scale == pytest.approx(1 / 255)
    g = pre.geometry((500, 375))
    assert g == Geometry((500, 375), (341, 256), (58, 16, 282, 240))
    g = pre.geometry((375, 500))
    assert g == Geometry((375, 500), (256, 341), (16, 58, 240, 282))
    # The longer side is truncated like torchvision (256 * 500 / 300 = 426.67 -> 426, not 427).
    assert pre.geometry((500, 300)).resized_size == (426, 256)
    assert pre.geometry((300, 500)).crop_box == (16, 101, 240, 325)
    assert Preprocess.from_options((3, 299, 299)).resize == 342  # round(299 / 0.875)


@pytest.mark.parametrize("width,left", [(5, 0), (6, 1), (7, 2), (9, 2)])
def test_centre_crop_rounding_like_torchvision(width, left):
    # left = int(round((W - 4) / 2)) with Python's round (halves to even): 0.5 -> 0, 1.5 -> 2,
    # 2.5 -> 2.
    pre = Preprocess.from_options((1, 4, 4), preset="unit")
    assert pre.geometry((width, 4)).crop_box == (left, 0, left + 4, 4)
    assert pre.geometry((4, width)).crop_box == (0, left, 4, left + 4)


def test_unit_tiny_image_exact_values():
    # 6 wide x 4 high, model 4x4: shorter side is already 4, so only the centre crop acts:
    # left = round((6 - 4) / 2) = 1 -> columns 1..4.
    a = (np.arange(4)[:, None] * 10 + np.arange(6)[None, :]).astype(np.uint8)
    pre = Preprocess.from_options((1, 4, 4), preset="unit")
    x, g = pre(Image.fromarray(a, "L"))
    assert g == Geometry((6, 4), (6, 4), (1, 0, 5, 4))
    assert x.dtype == np.float32 and x.shape == (1, 4, 4)
    np.testing.assert_allclose(x[0], a[:, 1:5] / 255.0, rtol=1e-6)


def test_unit_bilinear_antialiased_downscale_hand_computed():
    # Columns 0,0,0,0,210,210,210,210 (8 x 4) -> model 2x2, unit preset: resize to 4 x 2, then
    # crop columns 1..2.  Pillow's antialiased bilinear at scale 2 is a triangle of half-width 2:
    # out[1] = (c1 + 3 c2 + 3 c3 + c4) / 8 = 210 / 8 = 26.25 -> 26
    # out[2] = (c3 + 3 c4 + 3 c5 + c6) / 8 = 1470 / 8 = 183.75 -> 184
    # (nearest would give 0/210, bicubic overshoots differently).
    a = np.zeros((4, 8), dtype=np.uint8)
    a[:, 4:] = 210
    pre = Preprocess.from_options((1, 2, 2), preset="unit")
    x, g = pre(Image.fromarray(a, "L"))
    assert g == Geometry((8, 4), (4, 2), (1, 0, 3, 2))
    np.testing.assert_allclose(x[0], np.array([[26, 184], [26, 184]]) / 255.0, rtol=1e-6)


def test_none_preset_keeps_0_255():
    pre = Preprocess.from_options((1, 2, 2), preset="none")
    assert pre.scale == 1.0 and pre.mean == (0.0,) and pre.std == (1.0,)
    x, _ = pre(Image.new("L", (2, 2), 200))
    np.testing.assert_array_equal(x, np.full((1, 2, 2), 200.0, dtype=np.float32))


def test_imagenet_mean_std_per_channel():
    pre = Preprocess.from_options((3, 8, 8), preset="imagenet")
    x, _ = pre(Image.new("RGB", (20, 10), (255, 0, 128)))
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert x.shape == (3, 8, 8)
    for c in range(3):
        np.testing.assert_allclose(x[c], expected[c], rtol=1e-5)


def test_imagenet_grayscale_statistics_and_channel_conversion():
    pre = Preprocess.from_options((1, 8, 8), preset="imagenet")
    assert pre.mean == (0.449,) and pre.std == (0.226,)
    # RGB -> L with Pillow's ITU-R 601-2 luma: L = (299 R + 587 G + 114 B) / 1000
    x, _ = pre(Image.new("RGB", (8, 8), (100, 200, 50)))
    luma = round((299 * 100 + 587 * 200 + 114 * 50) / 1000)
    np.testing.assert_allclose(x, (luma / 255 - 0.449) / 0.226, rtol=1e-5)
    # L -> RGB replicates
    x3, _ = Preprocess.from_options((3, 8, 8), preset="unit")(Image.new("L", (8, 8), 51))
    np.testing.assert_allclose(x3, 0.2, rtol=1e-6)


def test_unit_non_square_input_fits_crop():
    pre = Preprocess.from_options((3, 32, 64))
    assert pre.preset == "unit" and pre.resize == 64
    assert pre.geometry((100, 100)) == Geometry((100, 100), (64, 64), (0, 16, 64, 48))
    x, _ = pre(Image.new("RGB", (100, 100), (0, 0, 0)))
    assert x.shape == (3, 32, 64)


def test_stretch_resize():
    pre = Preprocess.from_options((3, 4, 4), resize=0)
    assert pre.resize is None
    assert pre.geometry((10, 3)) == Geometry((10, 3), (4, 4), (0, 0, 4, 4))
    assert Preprocess.from_options((3, 4, 4), sidecar={"resize": None}).resize is None


def test_precedence_flag_over_sidecar_over_preset():
    sidecar = {"preset": "none", "mean": [1, 2, 3], "resize": 300}
    pre = Preprocess.from_options((3, 224, 224), sidecar=sidecar, mean=0.5)
    assert pre.preset == "none" and pre.scale == 1.0  # preset from the sidecar beats auto
    assert pre.mean == (0.5, 0.5, 0.5)  # flag beats sidecar; one value broadcast to C
    assert pre.std == (1.0, 1.0, 1.0)  # preset default
    assert pre.resize == 300  # sidecar beats preset default
    pre = Preprocess.from_options((3, 224, 224), preset="unit", sidecar=sidecar, resize=256)
    assert pre.preset == "unit" and pre.resize == 256 and pre.mean == (1.0, 2.0, 3.0)


def test_usage_errors():
    with pytest.raises(UsageError, match="imagenet, unit, none"):
        Preprocess.from_options((3, 224, 224), preset="cifar")
    with pytest.raises(UsageError, match="give 1 or 3"):
        Preprocess.from_options((3, 224, 224), mean=[0.1, 0.2])
    with pytest.raises(UsageError, match="positive"):
        Preprocess.from_options((3, 224, 224), std=[1, 0, 1])
    with pytest.raises(UsageError, match="must equal the model input"):
        Preprocess.from_options((3, 224, 224), crop=200)
    with pytest.raises(UsageError, match="at least 224"):
        Preprocess.from_options((3, 224, 224), resize=200)
    assert Preprocess.from_options((3, 224, 224), crop=(224, 224)).crop == (224, 224)


def test_sidecar_value_errors_are_input_errors(tmp_path):
    with pytest.raises(InputDataError) as e:
        Preprocess.from_options((3, 224, 224), sidecar={"crop": 200}, sidecar_path=tmp_path / "s")
    assert e.value.path == str(tmp_path / "s")
    with pytest.raises(InputDataError):
        Preprocess.from_options((3, 224, 224), sidecar={"preset": "bogus"})


def test_bad_model_channels():
    with pytest.raises(ModelError):
        Preprocess.from_options((4, 224, 224))


def test_to_dict_is_json():
    d = Preprocess.from_options((3, 224, 224)).to_dict()
    assert json.loads(json.dumps(d))["crop"] == [224, 224]
    assert d["resize"] == 256 and d["preset"] == "imagenet"


def test_matches_torchvision_pipeline():
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
    ref = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )(img).numpy()
    x, _ = Preprocess.from_options((3, 224, 224))(img)
    np.testing.assert_allclose(x, ref, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Sidecar, labels, targets
# --------------------------------------------------------------------------------------------


def test_read_sidecar(tmp_path):
    model = tmp_path / "m.onnx"
    assert read_sidecar(model) == {}
    (
        tmp_path / "sub"
    ).mkdir()  # the labels file must exist beside the model (confined like external data)
    (tmp_path / "sub" / "labels.txt").write_text("a\nb\n")
    (tmp_path / "m.onnx.json").write_text(
        json.dumps(
            {
                "preset": "unit",
                "resize": 40,
                "crop": [32, 32],
                "mean": 0.5,
                "std": [0.2, 0.2, 0.2],
                "labels": "sub/labels.txt",
            }
        )
    )
    sc = read_sidecar(model)
    assert sc["labels"] == str((tmp_path / "sub" / "labels.txt").resolve())
    assert sc["crop"] == [32, 32] and sc["resize"] == 40 and sc["preset"] == "unit"


@pytest.mark.parametrize(
    "content,match",
    [
        ("[1, 2]", "JSON object"),
        ("{bad", "invalid JSON"),
        ('{"presett": "unit"}', "unknown sidecar key"),
        ('{"resize": "big"}', "'resize' must be"),
        ('{"crop": [1, 2, 3]}', "'crop' must be"),
        ('{"mean": "x"}', "'mean' must be"),
        ('{"labels": 5}', "'labels' must be"),
    ],
)
def test_read_sidecar_errors_name_file(tmp_path, content, match):
    (tmp_path / "m.onnx.json").write_text(content)
    with pytest.raises(InputDataError, match=match) as e:
        read_sidecar(tmp_path / "m.onnx")
    assert e.value.path == str(tmp_path / "m.onnx.json")


def test_imagenet_labels():
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[0] == "tench" and labels[281] == "tabby" and labels[999] == "toilet tissue"
    labels.append("x")
    assert len(imagenet_labels()) == 1000  # callers cannot corrupt the cache
    assert load_labels("imagenet") == imagenet_labels()


def test_load_labels_text_and_json(tmp_path):
    assert load_labels(["a", "b"]) == ["a", "b"]
    (tmp_path / "l.txt").write_text("  cat \ndog\n\n\n")
    assert load_labels("l.txt", base_dir=tmp_path) == ["cat", "dog"]
    (tmp_path / "l.json").write_text('["x", "y"]')
    assert load_labels(tmp_path / "l.json") == ["x", "y"]
    (tmp_path / "k.json").write_text('{"1": ["n02", "dog"], "0": ["n01", "cat"]}')
    assert load_labels(tmp_path / "k.json") == ["cat", "dog"]


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("gap.json", '{"0": "a", "2": "b"}', "without gaps"),
        ("keys.json", '{"a": "b"}', "class indices"),
        ("mid.txt", "a\n\nb\n", "line 2 is empty"),
        ("empty.txt", "\n\n", "empty"),
        ("bad.json", "[1, 2]", "label 0"),
    ],
)
def test_load_labels_errors(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputDataError, match=match) as e:
        load_labels(tmp_path / name)
    assert e.value.path == str(tmp_path / name)


def test_load_labels_missing(tmp_path):
    with pytest.raises(InputDataError, match="not found") as e:
        load_labels("nope.txt", base_dir=tmp_path)
    assert e.value.path == str(tmp_path / "nope.txt")


def test_resolve_target():
    labels = imagenet_labels()
    assert resolve_target("top1", labels, 1000) == "top1"
    assert resolve_target("TOP5", labels, 1000) == "top5"
    assert resolve_target("top3", None, 10) == "top3"
    assert resolve_target("top5", None, 4) == "top4"  # clamped: every class of a 4-class model
    assert resolve_target("3", None, 10) == [3]
    assert resolve_target("tabby", labels, 1000) == [281]
    assert resolve_target("Tabby", labels, 1000) == [281]  # case-insensitive fallback
    assert resolve_target("tench, 5", labels, 1000) == [0, 5]
    assert resolve_target("a,b", ["x", "a,b"], 2) == [1]  # whole spec tried as one label first


def test_resolve_target_exact_beats_case_insensitive():
    assert resolve_target("Cat", ["cat", "Cat"], 2) == [1]
    with pytest.raises(UsageError, match="ambiguous"):
        resolve_target("CAT", ["cat", "Cat"], 2)


@pytest.mark.parametrize(
    "spec,labels,n,match",
    [
        ("10", None, 10, "out of range"),
        ("-1", None, 10, "out of range"),
        ("top0", None, 10, "at least 1"),
        ("cat", None, 10, "no class labels"),
        ("top1,3", None, 10, "cannot be combined"),
        ("tabb", "imagenet", 1000, "did you mean: 'tabby'"),
    ],
)
def test_resolve_target_errors(spec, labels, n, match):
    labels = imagenet_labels() if labels == "imagenet" else labels
    with pytest.raises(UsageError, match=match):
        resolve_target(spec, labels, n)
