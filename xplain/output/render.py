"""Colouring attribution maps: heatmap PNGs and overlays on the original image.

Methods return raw signed maps and never normalise for display (an invariant); all display
decisions live here.  Signed maps use a diverging colormap centred on zero, so "no evidence" is
always the neutral middle colour and positive and negative evidence are comparable; non-negative
maps use a sequential colormap from zero to the maximum.  Both normalise by a single maximum
absolute value, never min–max, so the zero point never moves.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from ..errors import UsageError
from .fileio import atomic_write
from ..data.images import Geometry

__all__ = ["SIGNED_CMAP", "UNSIGNED_CMAP", "is_signed", "colorize", "save_heatmap", "save_overlay"]

SIGNED_CMAP = "RdBu_r"  #: diverging; negative blue, zero near-white, positive red
UNSIGNED_CMAP = "inferno"  #: sequential; zero black, maximum pale yellow

PathLike = str | os.PathLike[str]


def _as_map(map_hw: np.ndarray) -> np.ndarray:
    m = np.asarray(map_hw, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D map (H, W), got shape {m.shape}")
    return m


def is_signed(map_hw: np.ndarray) -> bool:
    """True if the map has negative values beyond float noise (−1e-12 × max |map|).

    The tolerance keeps a non-negative map with round-off negatives (e.g. −1e-17 from a
    subtraction) on the sequential colormap.  Non-finite values are ignored.
    """
    m = np.asarray(map_hw, dtype=np.float64)
    finite = m[np.isfinite(m)]
    if finite.size == 0:
        return False
    peak = float(np.abs(finite).max())
    return bool(finite.min() < -1e-12 * peak)


def _scale(m: np.ndarray, signed: bool) -> float:
    """The normaliser: max |value| for signed maps, max value for non-negative ones (0 if none)."""
    finite = m[np.isfinite(m)]
    if finite.size == 0:
        return 0.0
    return float(np.abs(finite).max() if signed else max(finite.max(), 0.0))


def _rgba(m: np.ndarray, signed: bool, scale: float) -> np.ndarray:
    """Colour ``m`` with a fixed normaliser; NaN and ±inf become fully transparent (0, 0, 0, 0).

    A zero normaliser (all-zero map) gives every finite pixel the zero colour: the diverging
    map's centre or the sequential map's start.  Values beyond the normaliser (possible when
    the scale came from another map) and negative values on a sequential map are clipped.
    """
    import matplotlib

    valid = np.isfinite(m)
    v = np.where(valid, m, 0.0)
    if signed:
        t = 0.5 + 0.5 * v / scale if scale > 0 else np.full(m.shape, 0.5)
    else:
        t = v / scale if scale > 0 else np.zeros(m.shape)
    t = np.clip(t, 0.0, 1.0)
    cmap = matplotlib.colormaps[SIGNED_CMAP if signed else UNSIGNED_CMAP]
    out = np.asarray(cmap(t, bytes=True), dtype=np.uint8).reshape(*m.shape, 4).copy()
    out[~valid] = 0
    return out


def colorize(map_hw: np.ndarray, signed: bool | None = None) -> np.ndarray:
    """RGBA uint8 (H×W×4) colours for a map; ``signed=None`` decides with :func:`is_signed`.

    Signed: value v → ``cmap(0.5 + 0.5 · v / max|map|)`` on a diverging map, so 0 is the
    centre colour, −max the left end and +max the right end.  Non-negative: v / max on a
    sequential map.  Non-finite pixels are transparent.
    """
    m = _as_map(map_hw)
    if signed is None:
        signed = is_signed(m)
    return _rgba(m, bool(signed), _scale(m, bool(signed)))


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_heatmap(path: PathLike, map_hw: np.ndarray, signed: bool | None = None) -> None:
    """Write the colorized map as an RGBA PNG at the map's own resolution, atomically."""
    atomic_write(path, _png_bytes(Image.fromarray(colorize(map_hw, signed), "RGBA")))


def save_overlay(path: PathLike, image: Image.Image, map_hw: np.ndarray, geometry: Geometry,
                 signed: bool | None = None, alpha: float = 0.5) -> None:
    """Blend the map, drawn back through the resize and crop, onto the original image; PNG.

    Colours use the normalisation of the model-resolution map (the one saved as ``.npy`` and
    heatmap), so overlay and heatmap agree; resampling cannot push values outside that range.
    Pixels outside the crop (NaN after :meth:`Geometry.to_original`) show the plain image.
    ``alpha`` is the opacity of the colour layer (0 = image only, 1 = map only).
    """
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise UsageError(f"overlay alpha must be a number between 0 and 1, got {alpha!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"overlay alpha must be between 0 and 1, got {alpha}")
    if tuple(image.size) != tuple(geometry.original_size):
        raise ValueError(f"image size {image.size} does not match the geometry's original size "
                         f"{geometry.original_size}")
    m = _as_map(map_hw)
    if signed is None:
        signed = is_signed(m)
    scale = _scale(m, bool(signed))
    colours = _rgba(geometry.to_original(m).astype(np.float64), bool(signed), scale)
    base = np.asarray(image.convert("RGB"), dtype=np.float64)
    a = alpha * colours[..., 3:4].astype(np.float64) / 255.0
    out = base * (1.0 - a) + colours[..., :3].astype(np.float64) * a
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    atomic_write(path, _png_bytes(Image.fromarray(out, "RGB")))
