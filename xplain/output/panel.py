"""Side-by-side panels: the photo, then one overlay per method, one row per target.

This is the figure people put in papers: every method on the same image and class, at the same
size, titled with the method, the class label and the model's probability.  Drawn with a
matplotlib ``Figure`` on the Agg canvas (never pyplot, no global state); each cell is an
:func:`xplain.render.overlay_image` of the photo shrunk to the cell, so a panel's size depends on
the number of cells, never on the photo's resolution.

Legibility: titles are 10–11 pt at 100 dpi (readable at 100 % zoom), and every overlay cell has
its own colour bar (``−s, 0, +s`` or ``0, s``), because each cell divides by its own display
scale (the same rule for every cell of a row: the ``percentile`` of that map's magnitude).  One
method keeps one colour scheme across all its rows (``signed``, decided once per call by
:class:`xplain.output.schemes.Schemes`), so TR-GBP's top-5 rows never switch colormaps.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image

from ..data.images import Geometry
from ..fileio import atomic_write
from .render import (
    DEFAULT_PERCENTILE,
    OVERLAY_ALPHA,
    add_colorbar,
    bounded_size,
    display_block,
    display_scale,
    is_signed,
    overlay_image,
)

__all__ = ["PanelRow", "panel_figure", "save_panel", "plain_text"]

TITLE_PT = 10  #: panel titles; 7 pt was unreadable at 100 % zoom
BAR_INCHES = 0.42  #: the colour bar strip under each overlay cell, ticks included
CELL_INCHES = 2.4  #: a cell's long side at most; cells shrink when there are many columns
MAX_WIDTH_INCHES = 36.0  #: 3600 px at 100 dpi: many methods shrink the cells, not the page
DPI = 100


@dataclasses.dataclass
class PanelRow:
    """One target: its class index, label, probability and each method's model-resolution map."""

    target: int
    label: str | None
    probability: float
    maps: dict[str, np.ndarray]


def plain_text(text: str) -> str:
    """Text for a matplotlib title: ``$`` escaped so a label is never parsed as mathtext."""
    return str(text).replace("$", r"\$")


def _row_title(row: PanelRow) -> str:
    name = row.label if row.label else f"class {row.target}"
    return plain_text(f"{name} ({row.target})\np = {row.probability:.3f}")


def _cell_inches(n_cols: int, aspect: float) -> tuple[float, float]:
    """(width, height) of one image cell; ``aspect`` = photo width / height."""
    long_side = min(CELL_INCHES, MAX_WIDTH_INCHES / max(n_cols, 1))
    return (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)


def panel_figure(
    image: Image.Image,
    geometry: Geometry,
    rows: list[PanelRow],
    methods: list[str],
    *,
    title: str | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    grey: bool | None = None,
    alpha: float = OVERLAY_ALPHA,
    signed: dict[str, bool] | None = None,
):
    """A ``Figure`` with ``len(rows)`` rows and ``1 + len(methods)`` columns of axes.

    Column 0 shows the photo, titled with the row's class label and probability; column ``j``
    the overlay of ``methods[j-1]``'s map, titled with the method's name.  A method without a
    map for a row (it failed) leaves an empty cell titled "(no map)".  ``signed`` gives each
    method's colour scheme (missing: decided from the method's maps in these rows)."""
    from matplotlib.figure import Figure

    n_cols = 1 + len(methods)
    w, h = image.size
    cell_w, cell_h = _cell_inches(n_cols, w / max(h, 1))
    title_h, pad = 0.55, 0.1
    schemes = {
        m: (signed or {}).get(m, any(is_signed(r.maps[m]) for r in rows if m in r.maps))
        for m in methods
    }
    top = 0.35 if title else 0.05
    fig_w = n_cols * (cell_w + pad) + pad
    fig_h = top + len(rows) * (cell_h + title_h + BAR_INCHES + pad)
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    if title:
        fig.suptitle(plain_text(title), fontsize=TITLE_PT + 1, y=1 - 0.08 / fig_h, va="top")
    side = max(64, round(max(cell_w, cell_h) * DPI * 1.5))
    # a cell shows fewer pixels than the map has: keep each block's peak, not its average
    pool = display_block(geometry, max(cell_w, cell_h) * DPI)
    thumb = image.convert("RGB").resize(
        bounded_size(image.size, side), Image.Resampling.BILINEAR, reducing_gap=3.0
    )
    for r, row in enumerate(rows):
        y0 = fig_h - top - (r + 1) * (cell_h + title_h + BAR_INCHES + pad) + pad + BAR_INCHES
        for c in range(n_cols):
            x0 = pad + c * (cell_w + pad)
            ax = fig.add_axes((x0 / fig_w, y0 / fig_h, cell_w / fig_w, cell_h / fig_h))
            ax.set_axis_off()
            if c == 0:
                ax.imshow(np.asarray(thumb))
                ax.set_title(_row_title(row), fontsize=TITLE_PT - 1)
                continue
            method = methods[c - 1]
            m = row.maps.get(method)
            if m is None:
                ax.set_title(plain_text(f"{method}\n(no map)"), fontsize=TITLE_PT)
                continue
            ax.imshow(
                np.asarray(
                    overlay_image(
                        image,
                        m,
                        geometry,
                        signed=schemes[method],
                        alpha=alpha,
                        percentile=percentile,
                        grey=grey,
                        max_side=side,
                        pool=pool,
                    )
                )
            )
            ax.set_title(plain_text(method), fontsize=TITLE_PT)
            bar_ax = fig.add_axes(
                (
                    (x0 + 0.15 * cell_w) / fig_w,
                    (y0 - BAR_INCHES + 0.26) / fig_h,
                    0.7 * cell_w / fig_w,
                    0.1 / fig_h,
                )
            )
            bar_ax.set_label("colorbar")
            scale = display_scale(m, schemes[method], percentile)
            bar = add_colorbar(
                fig, bar_ax, schemes[method], scale, horizontal=True, size=TITLE_PT - 2
            )
            bar_ax.set_gid(bar.cmap.name)  # which colormap this cell used (tests read it)
    return fig


def save_panel(
    path: str | os.PathLike[str],
    image: Image.Image,
    geometry: Geometry,
    rows: list[PanelRow],
    methods: list[str],
    **kwargs,
) -> None:
    """Write :func:`panel_figure` as a PNG, atomically."""
    from .render import figure_png

    atomic_write(path, figure_png(panel_figure(image, geometry, rows, methods, **kwargs)))
