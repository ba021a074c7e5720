"""Overlays leave the photo alone where the map is small, colour the strongest evidence, and one
method keeps one colour scheme per call (issue 26.4, 29.2)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from xplain.data.images import Geometry
from xplain.output.legibility import coloured_fraction, overlay_legibility, unchanged_fraction
from xplain.output.panel import PanelRow, panel_figure
from xplain.output.schemes import Schemes


def test_the_measures_on_a_hand_made_case():
    base = np.zeros((2, 2, 3), np.uint8)
    over = base.copy()
    over[0, 0] = (8, 0, 0)  # within 8 levels: unchanged
    over[0, 1] = (0, 9, 0)  # 9 levels: changed, not clearly coloured
    over[1, 0] = (0, 0, 40)  # clearly coloured
    region = np.ones((2, 2), bool)
    assert unchanged_fraction(base, over, region) == 0.5
    assert coloured_fraction(base, over, region) == 0.25
    assert unchanged_fraction(base, over, np.zeros((2, 2), bool)) == 1.0


def _photo(size=(48, 32)):
    """A textured colour photo (so 'unchanged' is not trivially true on a flat colour)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 5 % 256, yy * 7 % 256, (xx + yy) * 3 % 256], -1).astype(np.uint8)
    return Image.fromarray(rgb)


def test_sparse_map_leaves_the_photo_and_colours_its_peaks():
    # 48x32 photo, model sees the centre 24x24 crop at 24x24: outside the crop stays as it is;
    # a dense map of small values (|v| <= 0.1 of the peak) plus 1 % strong pixels leaves most of
    # the crop within 8 levels (a linear opacity ramp does not) and colours the peaks clearly.
    image = _photo()
    g = Geometry((48, 32), (48, 32), (12, 4, 36, 28))
    rng = np.random.default_rng(0)
    m = rng.uniform(0, 0.1, (24, 24))
    peaks = rng.choice(24 * 24, 6, replace=False)
    m.flat[peaks] = 1.0
    got = overlay_legibility(image, m, g, percentile=99.5)
    assert got.unchanged >= 0.9
    assert got.strongest_coloured == 1.0
    assert got.outside_unchanged == 1.0
    linear = overlay_legibility(image, m, g, percentile=99.5, gamma=1.0)
    assert linear.unchanged < got.unchanged
    zero = overlay_legibility(image, np.zeros((24, 24)), g)
    assert zero.unchanged == 1.0 and zero.outside_unchanged == 1.0  # no tint, no crop box


def test_one_scheme_per_method_per_call():
    s = Schemes()
    pos, neg = np.ones((2, 2)), -np.ones((2, 2))
    assert s.signed("gradient", [pos, neg]) is True  # one negative map: the whole batch
    assert s.signed("gradient", [pos]) is True  # later batches keep it
    assert s.signed("saliency", [pos]) is False
    assert s.signed("saliency", [neg]) is True and s.switched == ["saliency"]


def test_panel_rows_of_one_method_share_the_scheme():
    # TR-GBP's top-k rows: one row all positive, one signed -> both diverging (RdBu), so a bar
    # of each row shows the same colormap
    image = Image.new("RGB", (16, 16), (120, 120, 120))
    g = Geometry((16, 16), (16, 16), (0, 0, 16, 16))
    rows = [
        PanelRow(1, None, 0.5, {"tr-gbp": np.abs(np.random.default_rng(0).normal(size=(16, 16)))}),
        PanelRow(2, None, 0.3, {"tr-gbp": np.random.default_rng(1).normal(size=(16, 16))}),
    ]
    fig = panel_figure(image, g, rows, ["tr-gbp"])
    bars = [ax for ax in fig.axes if ax.get_label() == "colorbar"]
    assert len(bars) == 2
    assert {ax.get_gid() for ax in bars} == {"RdBu_r"}
