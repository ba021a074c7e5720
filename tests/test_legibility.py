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


def test_signed_speckle_stays_visible_at_panel_cell_size():
    # a signed pixel-level map (both signs next to each other, as gradient / IG / LRP-ε give)
    # shown at a panel cell of 240 px for a 451x300 photo (Lite0's 224 crop of its 385x256
    # resize): plain shrinking averages the signs away and the strongest 1 % of the cell is
    # faint; the panel's peak pooling keeps each block's strongest value and colours it.
    from xplain.output.panel import CELL_INCHES, DPI
    from xplain.output.render import display_block, peak_pool

    image = _photo((451, 300))
    g = Geometry((451, 300), (385, 256), (80, 16, 304, 240))
    rng = np.random.default_rng(0)
    m = rng.normal(0, 0.1, (224, 224)) * rng.choice([-1.0, 1.0], (224, 224))
    peaks = rng.choice(224 * 224, 500, replace=False)
    m.flat[peaks] = rng.choice([-1.0, 1.0], 500)
    cell = round(CELL_INCHES * DPI)
    pool = display_block(g, cell)
    assert pool == 2
    plain = overlay_legibility(image, m, g, signed=True, max_side=cell)
    pooled = overlay_legibility(image, m, g, signed=True, max_side=cell, pool=pool)
    assert plain.strongest_coloured < 0.5 < 0.9 <= pooled.strongest_coloured
    assert pooled.outside_unchanged == 1.0
    # the pooling keeps the value of largest |v| per block, sign included, and the shape
    block = np.array([[0.2, -0.9], [0.5, 0.1]])
    assert (peak_pool(block, 2) == -0.9).all() and peak_pool(m, 1) is not None
    assert peak_pool(m, 3).shape == m.shape


def test_the_panel_pools_signed_maps_for_its_cells():
    # the same speckle map drawn in a panel: the cell's overlay has clearly coloured pixels
    # at the strongest values; without pooling (monkeypatched to 1) it has far fewer
    import xplain.output.panel as panel

    image = _photo((451, 300))
    g = Geometry((451, 300), (385, 256), (80, 16, 304, 240))
    rng = np.random.default_rng(1)
    m = rng.normal(0, 0.1, (224, 224)) * rng.choice([-1.0, 1.0], (224, 224))
    m.flat[rng.choice(224 * 224, 500, replace=False)] = rng.choice([-1.0, 1.0], 500)
    row = PanelRow(target=3, label="x", probability=0.5, maps={"gradient": m})
    calls = []
    real = panel.overlay_image
    panel_overlay = lambda *a, **k: calls.append(k["pool"]) or real(*a, **k)  # noqa: E731
    try:
        panel.overlay_image = panel_overlay
        panel_figure(image, g, [row], ["gradient"])
    finally:
        panel.overlay_image = real
    assert calls == [2]
