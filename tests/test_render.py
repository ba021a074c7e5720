"""Colouring: zero is always the neutral colour, the scale is a robust percentile, NaN is clear,
and on overlays zero is transparent."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pytest
from PIL import Image

from xplain.data.images import Geometry
from xplain.errors import UsageError
from xplain.output.render import (
    SIGNED_CMAP,
    UNSIGNED_CMAP,
    RenderOptions,
    colorize,
    display_scale,
    heatmap_figure,
    is_signed,
    overlay_image,
    save_heatmap,
    save_overlay,
)

MAX = 100.0  # percentile 100: the plain maximum, for hand-computed small cases


def div(t: float) -> list[int]:
    return list(matplotlib.colormaps[SIGNED_CMAP](t, bytes=True))


def seq(t: float) -> list[int]:
    return list(matplotlib.colormaps[UNSIGNED_CMAP](t, bytes=True))


def test_is_signed():
    assert is_signed(np.array([[-1.0, 1.0]]))
    assert is_signed(np.array([[-1e-3, 1.0]]))
    assert not is_signed(np.array([[-1e-15, 1.0]]))  # round-off, not evidence
    assert not is_signed(np.array([[0.0, 2.0]]))
    assert not is_signed(np.zeros((2, 2)))
    assert not is_signed(np.array([[np.nan, -np.inf]]))


def test_signed_hand_case():
    out = colorize(np.array([[-1.0, 0.0], [0.5, 1.0]]), percentile=MAX)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 4)
    # v -> 0.5 + 0.5 * v / max|v| with max|v| = 1
    assert out[0, 0].tolist() == div(0.0)
    assert out[0, 1].tolist() == div(0.5)
    assert out[1, 0].tolist() == div(0.75)
    assert out[1, 1].tolist() == div(1.0)
    assert div(0.0) != div(0.5) != div(1.0)  # the three really are different colours


def test_signed_centre_is_zero_not_midrange():
    # min-max normalisation would put 0 at t = 1/3 here; ours keeps 0 at the centre.
    out = colorize(np.array([[-1.0, 0.0, 2.0]]), percentile=MAX)
    assert out[0].tolist() == [div(0.25), div(0.5), div(1.0)]


def test_unsigned_hand_case_and_scale_invariance():
    m = np.array([[0.0, 1.0], [2.0, 4.0]])
    out = colorize(m, percentile=MAX)
    assert [out[0, 0].tolist(), out[0, 1].tolist(), out[1, 0].tolist(), out[1, 1].tolist()] == [
        seq(0.0),
        seq(0.25),
        seq(0.5),
        seq(1.0),
    ]
    np.testing.assert_array_equal(colorize(m * 7.0, percentile=MAX), out)


def test_forced_modes():
    m = np.array([[0.0, 1.0]])
    assert colorize(m, signed=True)[0].tolist() == [div(0.5), div(1.0)]
    # Negative values on a forced sequential map are clipped to the zero colour.
    assert colorize(np.array([[-1.0, 2.0]]), signed=False)[0].tolist() == [seq(0.0), seq(1.0)]


def test_all_zero_map_no_division():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = colorize(np.zeros((2, 3)))
        signed = colorize(np.zeros((2, 3)), signed=True)
    assert (out.reshape(-1, 4) == seq(0.0)).all()
    assert (signed.reshape(-1, 4) == div(0.5)).all()


def test_non_finite_transparent_and_ignored_for_scale():
    out = colorize(np.array([[np.nan, 1.0], [np.inf, 0.5], [-np.inf, 0.0]]), percentile=MAX)
    assert out[0, 0].tolist() == [0, 0, 0, 0]
    assert out[1, 0].tolist() == [0, 0, 0, 0]
    assert out[2, 0].tolist() == [0, 0, 0, 0]
    assert out[0, 1].tolist() == seq(1.0)
    assert out[1, 1].tolist() == seq(0.5)
    assert out[2, 1].tolist() == seq(0.0)


def test_colorize_rejects_non_2d():
    with pytest.raises(ValueError):
        colorize(np.zeros((1, 2, 2)))


def test_save_heatmap(tmp_path):
    m = np.array([[-2.0, 0.0, np.nan], [1.0, 2.0, 0.5]], dtype=np.float32)
    path = tmp_path / "out" / "h.png"
    save_heatmap(path, m)
    img = Image.open(path)
    assert img.format == "PNG" and img.mode == "RGBA" and img.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(img), colorize(m))
    assert sorted(p.name for p in path.parent.iterdir()) == ["h.png"]


def _blend(base, colour, alpha):
    return [int(np.rint(b * (1 - alpha) + c * alpha)) for b, c in zip(base, colour)]


def test_percentile_scale_ignores_one_extreme_pixel():
    # A 100x100 ramp 0..1 with one pixel at 1e6 (as gradients have): the 99.5th percentile of
    # |map| lies inside the ramp, so mid-ramp pixels get mid colours; the max would make them ~0.
    ramp = np.linspace(0.0, 1.0, 10_000).reshape(100, 100)
    m = ramp.copy()
    m[0, 0] = 1e6  # replaces the ramp's 0.0
    scale = display_scale(m)
    assert scale == pytest.approx(np.percentile(m, 99.5)) and 0.99 < scale < 1.0
    mid = np.unravel_index(np.argmin(np.abs(ramp - 0.5)), ramp.shape)
    out = colorize(m)
    assert out[mid].tolist() == seq(float(m[mid]) / scale)
    assert out[0, 0].tolist() == seq(1.0)  # the extreme pixel saturates
    assert colorize(m, percentile=MAX)[mid].tolist() == seq(
        float(m[mid]) / 1e6
    )  # the old, invisible way
    signed = m * np.where(np.arange(100) % 2, 1.0, -1.0)[None, :]  # same magnitudes, both signs
    assert display_scale(signed) == pytest.approx(scale)


def test_percentile_of_a_sparse_map_falls_back_to_the_max():
    m = np.zeros((50, 50))
    m[3, 4], m[10, 10] = 2.0, 4.0  # 0.08 % of pixels: the 99.5th percentile is 0
    assert display_scale(m) == 4.0
    assert display_scale(np.zeros((3, 3))) == 0.0
    assert display_scale(np.array([[np.nan, np.inf]])) == 0.0


@pytest.mark.parametrize("bad", [0, -1, 100.5, "x"])
def test_percentile_must_be_in_range(bad):
    with pytest.raises(UsageError):
        display_scale(np.ones((2, 2)), percentile=bad)
    with pytest.raises(UsageError):
        RenderOptions(percentile=bad)


def test_overlay_alpha_is_zero_where_the_map_is_zero(tmp_path):
    # A textured photo: where the map is 0 the overlay is the photo, bit for bit; elsewhere the
    # colour's opacity is alpha * (|v| / scale) ** OVERLAY_GAMMA (1.5).
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(photo)
    g = Geometry((8, 8), (8, 8), (0, 0, 8, 8))
    m = np.zeros((8, 8))
    m[2, 3], m[5, 5], m[6, 1] = 1.0, -0.5, 0.25
    out = np.asarray(overlay_image(image, m, g, alpha=0.8, percentile=MAX, grey=False))
    zero = m == 0
    np.testing.assert_array_equal(out[zero], photo[zero])
    assert out[2, 3].tolist() == _blend(photo[2, 3], div(1.0)[:3], 0.8)
    assert out[5, 5].tolist() == _blend(photo[5, 5], div(0.25)[:3], 0.8 * 0.5**1.5)
    assert out[6, 1].tolist() == _blend(photo[6, 1], div(0.625)[:3], 0.8 * 0.25**1.5)
    linear = np.asarray(overlay_image(image, m, g, alpha=0.8, percentile=MAX, grey=False, gamma=1))
    assert linear[5, 5].tolist() == _blend(photo[5, 5], div(0.25)[:3], 0.4)
    lum = np.repeat(np.asarray(image.convert("L"))[..., None], 3, axis=2)
    for grey in (True, None):  # None: a signed map gets the greyscale photo by default
        shown = np.asarray(overlay_image(image, m, g, grey=grey))
        np.testing.assert_array_equal(shown[zero], lum[zero])
    colour = np.asarray(overlay_image(image, np.abs(m), g))  # non-negative: the colour photo
    np.testing.assert_array_equal(colour[zero], photo[zero])


def test_overlay_inside_and_outside_crop(tmp_path):
    base = (100, 150, 200)
    image = Image.new("RGB", (4, 2), base)
    g = Geometry(original_size=(4, 2), resized_size=(4, 2), crop_box=(1, 0, 3, 2))
    m = np.array([[-1.0, 1.0], [0.0, 0.5]])
    path = tmp_path / "o.png"
    save_overlay(path, image, m, g, alpha=0.5, percentile=MAX, grey=False)
    out = np.asarray(Image.open(path))
    assert out.shape == (2, 4, 3)
    assert out[:, 0].tolist() == [list(base)] * 2  # outside the crop: the plain image
    assert out[:, 3].tolist() == [list(base)] * 2
    assert out[0, 1].tolist() == _blend(base, div(0.0)[:3], 0.5)
    assert out[0, 2].tolist() == _blend(base, div(1.0)[:3], 0.5)
    assert out[1, 1].tolist() == list(base)  # zero: transparent
    assert out[1, 2].tolist() == _blend(base, div(0.75)[:3], 0.5 * 0.5**1.5)


def test_overlay_alpha_extremes(tmp_path):
    image = Image.new("L", (2, 1), 90)  # grayscale images are shown in RGB
    g = Geometry((2, 1), (2, 1), (0, 0, 2, 1))
    m = np.array([[0.0, 3.0]])
    save_overlay(tmp_path / "a0.png", image, m, g, alpha=0.0)
    assert np.asarray(Image.open(tmp_path / "a0.png")).tolist() == [[[90, 90, 90]] * 2]
    save_overlay(tmp_path / "a1.png", image, m, g, alpha=1.0)
    assert np.asarray(Image.open(tmp_path / "a1.png")).tolist() == [[[90, 90, 90], seq(1.0)[:3]]]


def test_overlay_uses_model_map_normalisation(tmp_path):
    # Original 2 px, resized 4 px, map [0, 0, 0, 4].  Shrinking x2 with Pillow's bilinear
    # (triangle of half-width 2): the right pixel = (0.25*0 + 0.75*0 + 0.75*4) / 1.75 = 12/7.
    # Normalised by the model map's max (4) that is t = 3/7, not 1 (the resampled map's max),
    # and its opacity is 3/7 too (alpha = 1).
    image = Image.new("RGB", (2, 1), (0, 0, 0))
    g = Geometry((2, 1), (4, 1), (0, 0, 4, 1))
    save_overlay(
        tmp_path / "o.png", image, np.array([[0.0, 0.0, 0.0, 4.0]]), g, alpha=1.0, percentile=MAX
    )
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out[0].tolist() == [[0, 0, 0], _blend((0, 0, 0), seq(3 / 7)[:3], (3 / 7) ** 1.5)]


def test_overlay_size_is_bounded(tmp_path):
    image = Image.new("RGB", (600, 300), (10, 20, 30))
    g = Geometry((600, 300), (600, 300), (150, 0, 450, 300))
    m = np.ones((300, 300), dtype=np.float32)
    out = overlay_image(image, m, g, max_side=200)
    assert out.size == (200, 100) and out.mode == "RGB"
    a = np.asarray(out)
    assert a[50, 10].tolist() == [10, 20, 30] and a[50, 100].tolist() != [10, 20, 30]


def test_overlay_errors(tmp_path):
    image = Image.new("RGB", (4, 2))
    g = Geometry((4, 2), (4, 2), (0, 0, 4, 2))
    with pytest.raises(UsageError):
        save_overlay(tmp_path / "x.png", image, np.zeros((2, 4)), g, alpha=1.5)
    with pytest.raises(ValueError):
        save_overlay(tmp_path / "x.png", Image.new("RGB", (5, 2)), np.zeros((2, 4)), g)
    assert list(tmp_path.iterdir()) == []


def test_colorbar_shows_the_display_scale(tmp_path):
    m = np.array([[-2.0, 0.0], [1.0, 4.0]])
    fig = heatmap_figure(m, percentile=MAX)
    bar = fig.axes[1]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["≤-4", "0", "≥4"]
    fig = heatmap_figure(np.abs(m), percentile=MAX)
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["0", "≥4"]
    assert [t.get_text() for t in heatmap_figure(np.zeros((2, 2))).axes[1].get_yticklabels()] == [
        "0"
    ]
    save_heatmap(tmp_path / "h.png", m, colorbar=True)
    img = Image.open(tmp_path / "h.png")
    assert img.width > img.height > 100  # a figure with a bar, not the 2x2 map
