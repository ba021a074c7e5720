"""How much of a photo an overlay leaves alone, and how clearly it shows the strongest evidence.

Why a module of its own: "the overlay veils the photo" was a complaint measured by eye and by
one number (the share of the crop within 8 grey levels of the photo); these functions compute
that number and its counterpart (the share of the strongest 1 % of the map drawn clearly), so a
test and ``bench/gallery.py`` can hold the renderer to them.  Both compare the overlay with the
*base* it was drawn on: the photo, or its greyscale under signed maps (``render.grey_for``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from ..data.images import Geometry
from . import render

__all__ = ["Legibility", "unchanged_fraction", "coloured_fraction", "overlay_legibility"]

UNCHANGED_LEVELS = 8  #: a pixel within this many levels (every channel) counts as unchanged
CLEAR_LEVELS = 40  #: a pixel this many levels away (some channel) counts as clearly coloured
STRONGEST = 0.01  #: the strongest fraction of the map's crop pixels


@dataclasses.dataclass(frozen=True)
class Legibility:
    unchanged: float  #: share of the crop within ``UNCHANGED_LEVELS`` of the base
    strongest_coloured: float  #: share of the strongest 1 % at least ``CLEAR_LEVELS`` away
    outside_unchanged: float  #: share of the photo outside the crop left exactly as it is (1.0)


def _diff(base: np.ndarray, overlay: np.ndarray) -> np.ndarray:
    return np.abs(base.astype(np.int16) - overlay.astype(np.int16)).max(axis=-1)


def unchanged_fraction(
    base: np.ndarray, overlay: np.ndarray, region: np.ndarray, levels: int = UNCHANGED_LEVELS
) -> float:
    """Share of ``region`` (H×W bool) whose overlay pixel is within ``levels`` of ``base`` in
    every channel (both H×W×3 uint8); 1.0 for an empty region."""
    region = np.asarray(region, bool)
    if not region.any():
        return 1.0
    return float((_diff(base, overlay)[region] <= levels).mean())


def coloured_fraction(
    base: np.ndarray, overlay: np.ndarray, region: np.ndarray, levels: int = CLEAR_LEVELS
) -> float:
    """Share of ``region`` whose overlay pixel differs from ``base`` by at least ``levels`` in
    some channel; 0.0 for an empty region."""
    region = np.asarray(region, bool)
    if not region.any():
        return 0.0
    return float((_diff(base, overlay)[region] >= levels).mean())


def overlay_legibility(
    image: Image.Image,
    map_hw: np.ndarray,
    geometry: Geometry,
    signed: bool | None = None,
    **options,
) -> Legibility:
    """Draw :func:`render.overlay_image` (``options`` passed on) and measure it: the crop's
    unchanged share, the strongest 1 % of the drawn map's magnitude (inside the crop) coloured
    clearly, and the share of pixels outside the crop left as they are.

    With ``max_side`` at a panel cell's size this measures the cell: averaging a signed speckle
    map down leaves its strongest drawn pixels faint against the map's own colour scale, which
    ``pool=render.display_block(...)`` (the panel's choice) prevents."""
    m = np.asarray(map_hw, np.float32)
    if signed is None:
        signed = render.is_signed(m)
    overlay = np.asarray(render.overlay_image(image, m, geometry, signed, **options))
    size = (overlay.shape[1], overlay.shape[0])
    grey = render.grey_for(options.get("grey"), bool(signed))
    base = np.asarray(render._base(image, size, grey).astype(np.uint8))
    shown = render.peak_pool(m, options.get("pool", 1))  # what overlay_image draws
    drawn = dataclasses.replace(geometry, original_size=size).to_original(shown)
    crop = np.isfinite(drawn)
    magnitude = np.abs(np.where(crop, drawn, 0.0)) if signed else np.where(crop, drawn, 0.0)
    cut = np.quantile(magnitude[crop], 1.0 - STRONGEST) if crop.any() else np.inf
    strongest = crop & (magnitude >= cut) & (magnitude > 0)
    outside = ~crop
    return Legibility(
        unchanged=unchanged_fraction(base, overlay, crop),
        strongest_coloured=coloured_fraction(base, overlay, strongest),
        outside_unchanged=unchanged_fraction(base, overlay, outside, levels=0),
    )
