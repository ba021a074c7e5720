"""Colouring attribution maps: heatmap PNGs and overlays on the original image.

Methods return raw signed maps and never normalise for display (an invariant); all display
decisions live here, and the ``.npy`` files keep the raw values.

* **Colour.** Signed maps use a diverging colormap centred on zero, so "no evidence" is always the
  neutral middle colour and positive and negative evidence are comparable; non-negative maps use
  a sequential colormap from zero.  Both divide by one *display scale* and never min–max, so the
  zero point never moves.
* **Display scale.** A high percentile (default 99.5) of |map| over the finite pixels, not the
  maximum: gradient maps often have a few extreme pixels, and dividing by the largest one leaves
  the rest of the map nearly invisible (Captum's ``visualize_image_attr`` clips at a percentile
  for the same reason).  Values beyond the scale saturate.  When the percentile is 0 (a map that
  is zero almost everywhere) the maximum is used, so sparse evidence still shows.
* **Overlay.** The colour layer's opacity grows with the pixel's magnitude as
  ``alpha · (|v| / s)^OVERLAY_GAMMA`` (``alpha`` at the display scale and beyond, exactly 0 at
  zero), so the photo is unchanged wherever the map is zero and barely touched where it is
  small: a dense gradient map is small almost everywhere, and a linear ramp (gamma 1) tinted
  the whole crop (0.24 of chelsea's crop within 8 levels under saliency; gamma 1.5: 0.75, see
  ``docs/gallery.md``).  Parts of the photo outside the model's crop are shown as they are.
* **Photo under signed maps.** By default (``grey=None``) the photo is shown in greyscale under
  *signed* maps, in colour under non-negative ones: a diverging map's red and blue must read as
  the map's, not as the photo's own reds and blues (integrated gradients and LRP-ε were nearly
  invisible on colour photos).  ``grey=True``/``False`` forces either.
* **Cost.** Overlays are drawn in float32 and uint8, and on photos larger than ``max_side`` pixels
  on their long side on a proportionally smaller canvas, so memory does not grow with the camera.
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
from PIL import Image

from ..data.images import Geometry
from ..errors import UsageError
from ..fileio import atomic_write

__all__ = [
    "SIGNED_CMAP",
    "UNSIGNED_CMAP",
    "DEFAULT_PERCENTILE",
    "OVERLAY_ALPHA",
    "OVERLAY_MAX_SIDE",
    "is_signed",
    "display_scale",
    "colorize",
    "heatmap_image",
    "heatmap_figure",
    "overlay_image",
    "save_heatmap",
    "save_overlay",
    "png_bytes",
    "bounded_size",
    "figure_png",
    "RenderOptions",
    "OVERLAY_GAMMA",
    "grey_for",
    "overlay_figure",
    "save_overlay_figure",
]

SIGNED_CMAP = "RdBu_r"  #: diverging; negative blue, zero near-white, positive red
UNSIGNED_CMAP = "inferno"  #: sequential; zero black, maximum pale yellow
DEFAULT_PERCENTILE = 99.5  #: display scale = this percentile of |map|
OVERLAY_ALPHA = 0.8  #: colour opacity at the display scale; the photo still shows a little
OVERLAY_MAX_SIDE = 2048  #: overlays of larger photos are drawn at this long side
OVERLAY_GAMMA = 1.5  #: opacity = alpha · (|v| / scale) ** gamma: small values barely tint

PathLike = str | os.PathLike[str]


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    """How ``xplain explain`` draws its pictures (the ``.npy`` files never change)."""

    percentile: float = DEFAULT_PERCENTILE  #: display scale = this percentile of |map|
    alpha: float = OVERLAY_ALPHA  #: overlay opacity at the display scale
    #: the photo in greyscale under the colours; None: greyscale under signed maps only
    grey: bool | None = None
    colorbar: bool = False  #: heatmaps and overlays as small figures with a colour bar

    def __post_init__(self) -> None:
        _check_percentile(self.percentile)
        _check_alpha(self.alpha)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_map(map_hw: np.ndarray) -> np.ndarray:
    m = np.asarray(map_hw, dtype=np.float32)
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


def _check_percentile(percentile: float) -> float:
    try:
        p = float(percentile)
    except (TypeError, ValueError):
        raise UsageError(
            f"display percentile must be a number in (0, 100], got {percentile!r}"
        ) from None
    if not (0.0 < p <= 100.0):
        raise UsageError(f"display percentile must be in (0, 100], got {percentile}")
    return p


def display_scale(
    map_hw: np.ndarray, signed: bool | None = None, percentile: float = DEFAULT_PERCENTILE
) -> float:
    """The value shown at full colour: the ``percentile`` of |map| (signed maps) or of the
    map's non-negative part (non-negative maps), over finite pixels; the maximum when that
    percentile is 0; 0.0 for a map without a non-zero finite value.

    ``percentile=100`` is the plain maximum (the old behaviour)."""
    p = _check_percentile(percentile)
    m = np.asarray(map_hw, dtype=np.float64)
    finite = m[np.isfinite(m)]
    if signed is None:
        signed = is_signed(m)
    values = np.abs(finite) if signed else np.maximum(finite, 0.0)
    if values.size == 0:
        return 0.0
    scale = float(np.percentile(values, p))
    return scale if scale > 0 else float(values.max())


def _unit(m: np.ndarray, signed: bool, scale: float) -> np.ndarray:
    """``m / scale`` clipped to [−1, 1] (signed) or [0, 1]; NaN stays NaN, ±inf saturates."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        t = m / np.float32(scale) if scale > 0 else np.zeros_like(m)
    t = np.where(np.isnan(m), np.nan, t).astype(np.float32)
    return np.clip(t, -1.0 if signed else 0.0, 1.0)


def _rgba(t: np.ndarray, signed: bool) -> np.ndarray:
    """Colours for a unit map from :func:`_unit`; non-finite pixels fully transparent."""
    import matplotlib

    valid = np.isfinite(t)
    pos = np.where(valid, 0.5 + 0.5 * t if signed else t, 0.0)
    cmap = matplotlib.colormaps[SIGNED_CMAP if signed else UNSIGNED_CMAP]
    out = np.asarray(cmap(pos, bytes=True), dtype=np.uint8).reshape(*t.shape, 4).copy()
    out[~valid] = 0
    return out


def colorize(
    map_hw: np.ndarray,
    signed: bool | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    scale: float | None = None,
) -> np.ndarray:
    """RGBA uint8 (H×W×4) colours for a map; ``signed=None`` decides with :func:`is_signed`.

    Signed: value v → ``cmap(0.5 + 0.5 · clip(v / s, −1, 1))`` on a diverging map, so 0 is the
    centre colour; non-negative: ``clip(v / s, 0, 1)`` on a sequential map, where ``s`` is
    ``scale`` or :func:`display_scale`.  NaN and −inf pixels are transparent; +inf on a
    sequential map too (only finite values are evidence).
    """
    m = _as_map(map_hw)
    if signed is None:
        signed = is_signed(m)
    s = display_scale(m, signed, percentile) if scale is None else float(scale)
    t = _unit(np.where(np.isfinite(m), m, np.nan), bool(signed), s)
    return _rgba(t, bool(signed))


def png_bytes(img: Image.Image) -> bytes:
    """PNG-encode a Pillow image in memory (for :func:`atomic_write`)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def heatmap_image(
    map_hw: np.ndarray, signed: bool | None = None, percentile: float = DEFAULT_PERCENTILE
) -> Image.Image:
    """The colorized map as an RGBA image at the map's own resolution."""
    return Image.fromarray(colorize(map_hw, signed, percentile), "RGBA")


def heatmap_figure(
    map_hw: np.ndarray,
    signed: bool | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    title: str | None = None,
):
    """A matplotlib ``Figure`` (no pyplot state) of the heatmap with a colour bar labelled with
    the display scale: ``−s, 0, +s`` for signed maps, ``0, s`` otherwise (``≥`` marks that
    larger values saturate)."""
    from matplotlib.figure import Figure

    m = _as_map(map_hw)
    if signed is None:
        signed = is_signed(m)
    s = display_scale(m, signed, percentile)
    h, w = m.shape
    aspect = w / max(h, 1)
    fig = Figure(figsize=(min(3.2 * aspect, 6.0) + 1.1, 3.2), dpi=100)
    ax = fig.add_axes((0.02, 0.04, 0.72, 0.84 if title else 0.92))
    ax.imshow(colorize(m, signed, scale=s), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    add_colorbar(fig, fig.add_axes((0.8, 0.1, 0.05, 0.78)), signed, s)
    return fig


def add_colorbar(fig, cax, signed: bool, s: float, *, horizontal: bool = False, size: float = 8):
    """Draw the colour bar of a map shown at display scale ``s`` into the axes ``cax``: ticks
    ``−s, 0, +s`` (signed) or ``0, s``, with ``≥``/``≤`` marking that larger values saturate."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lo = -s if signed else 0.0
    mappable = ScalarMappable(
        Normalize(lo, s if s > 0 else 1.0),
        matplotlib.colormaps[SIGNED_CMAP if signed else UNSIGNED_CMAP],
    )
    bar = fig.colorbar(mappable, cax=cax, orientation="horizontal" if horizontal else "vertical")
    ticks = ([lo, 0.0, s] if signed else [0.0, s]) if s > 0 else [0.0]  # all-zero map: just 0
    bar.set_ticks(ticks)
    bar.set_ticklabels([_tick(v, s) for v in ticks])
    bar.ax.tick_params(labelsize=size, length=2, pad=1)
    return bar


def _tick(v: float, s: float) -> str:
    if v == 0:
        return "0"
    return ("≥" if v > 0 else "≤") + f"{v:.3g}"


def figure_png(fig) -> bytes:
    """PNG-encode a matplotlib ``Figure`` on a fresh Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_heatmap(
    path: PathLike,
    map_hw: np.ndarray,
    signed: bool | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    colorbar: bool = False,
) -> None:
    """Write the heatmap PNG atomically: RGBA at the map's resolution, or with ``colorbar`` a
    small figure of the map with its colour bar and scale."""
    if colorbar:
        atomic_write(path, figure_png(heatmap_figure(map_hw, signed, percentile)))
    else:
        atomic_write(path, png_bytes(heatmap_image(map_hw, signed, percentile)))


def _check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise UsageError(f"overlay alpha must be a number between 0 and 1, got {alpha!r}") from None
    if not 0.0 <= a <= 1.0:
        raise UsageError(f"overlay alpha must be between 0 and 1, got {alpha}")
    return a


def bounded_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` (W, H) shrunk proportionally so that its long side is at most ``max_side``."""
    w, h = size
    if max(w, h) <= max_side:
        return int(w), int(h)
    f = max_side / max(w, h)
    return max(1, round(w * f)), max(1, round(h * f))


def _base(image: Image.Image, size: tuple[int, int], grey: bool) -> np.ndarray:
    """The photo as float32 RGB at ``size``, in greyscale when asked."""
    img = image.convert("L" if grey else "RGB")
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img.convert("RGB"), dtype=np.float32)


def grey_for(grey: bool | None, signed: bool) -> bool:
    """Whether the photo is shown in greyscale: as asked, or (``None``) under signed maps."""
    return bool(signed) if grey is None else bool(grey)


def peak_pool(map_hw: np.ndarray, block: int) -> np.ndarray:
    """Each ``block`` × ``block`` block of the map replaced by its value of largest |v| (sign
    kept), same shape; ``block`` ≤ 1 returns the map.

    Shrinking a map averages its pixels: a signed, pixel-level map (gradient, integrated
    gradients, LRP-ε) is speckle of both signs, and its average over a few pixels is near zero,
    so at panel-cell size the strongest evidence vanishes.  After this pooling a block is one
    value, which shrinking by up to ``block`` keeps.  NaN counts as 0 when choosing."""
    m = np.asarray(map_hw, dtype=np.float32)
    k = int(block)
    if k <= 1 or m.ndim != 2:
        return m
    h, w = m.shape
    padded = np.pad(m, ((0, -h % k), (0, -w % k)), mode="edge")
    ph, pw = padded.shape
    blocks = (
        padded.reshape(ph // k, k, pw // k, k).transpose(0, 2, 1, 3).reshape(ph // k, pw // k, -1)
    )
    pick = np.nan_to_num(np.abs(blocks), nan=0.0, posinf=np.inf).argmax(axis=-1)
    peaks = np.take_along_axis(blocks, pick[..., None], axis=-1)[..., 0]
    return np.repeat(np.repeat(peaks, k, axis=0), k, axis=1)[:h, :w]


def display_block(geometry: Geometry, shown_side: float) -> int:
    """How many map pixels fall on one shown pixel (rounded, ≥ 1) when the photo's long side is
    shown at ``shown_side`` pixels: the ``pool`` for :func:`overlay_image` in a panel cell."""
    rw, rh = geometry.resized_size
    ow, oh = geometry.original_size
    per_original = max(rw / max(ow, 1), rh / max(oh, 1))  # map (= resized) px per photo px
    shown_per_original = shown_side / max(ow, oh, 1)
    return max(1, round(per_original / max(shown_per_original, 1e-9)))


def overlay_image(
    image: Image.Image,
    map_hw: np.ndarray,
    geometry: Geometry,
    signed: bool | None = None,
    alpha: float = OVERLAY_ALPHA,
    percentile: float = DEFAULT_PERCENTILE,
    grey: bool | None = None,
    max_side: int = OVERLAY_MAX_SIDE,
    gamma: float = OVERLAY_GAMMA,
    *,
    pool: int = 1,
) -> Image.Image:
    """The map, drawn back through the resize and crop, blended onto the photo (RGB image).

    A pixel's colour opacity is ``alpha · clip(|v| / s, 0, 1) ** gamma`` (``s`` the display
    scale of the model-resolution map, so overlay and heatmap agree): exactly 0 where the map is
    0, ``alpha`` at the scale and beyond.  Pixels outside the crop (NaN after
    :meth:`Geometry.to_original`) show the plain photo.  ``grey=None`` shows the photo in
    greyscale under signed maps (:func:`grey_for`).  The output has the photo's size, or its
    size shrunk to ``max_side``.  ``pool`` > 1 draws :func:`peak_pool` of the map (blocks of
    ``pool`` × ``pool`` map pixels; the colour scale stays the unpooled map's): what a panel
    cell does when it shows the map at fewer pixels than the map has.
    """
    alpha = _check_alpha(alpha)
    if tuple(image.size) != tuple(geometry.original_size):
        raise ValueError(
            f"image size {image.size} does not match the geometry's original size "
            f"{geometry.original_size}"
        )
    m = _as_map(map_hw)
    if signed is None:
        signed = is_signed(m)
    signed = bool(signed)
    s = display_scale(m, signed, percentile)
    size = bounded_size((image.size[0], image.size[1]), int(max_side))
    drawn = dataclasses.replace(geometry, original_size=size).to_original(peak_pool(m, pool))
    t = _unit(drawn, signed, s)
    colours = _rgba(t, signed)
    strength = np.abs(np.nan_to_num(t, nan=0.0)) ** np.float32(gamma)
    a = (alpha * strength)[..., None].astype(np.float32)
    base = _base(image, size, grey_for(grey, signed))
    out = base * (1.0 - a) + colours[..., :3].astype(np.float32) * a
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def overlay_figure(
    image: Image.Image,
    map_hw: np.ndarray,
    geometry: Geometry,
    signed: bool | None = None,
    alpha: float = OVERLAY_ALPHA,
    percentile: float = DEFAULT_PERCENTILE,
    grey: bool | None = None,
    max_side: int = 1024,
):
    """A matplotlib ``Figure`` of :func:`overlay_image` with the map's colour bar beside it
    (``--colorbar``); drawn at most ``max_side`` pixels on the long side."""
    from matplotlib.figure import Figure

    m = _as_map(map_hw)
    if signed is None:
        signed = is_signed(m)
    s = display_scale(m, bool(signed), percentile)
    img = overlay_image(image, m, geometry, signed, alpha, percentile, grey, max_side)
    w, h = img.size
    height = 4.0
    width = height * w / max(h, 1)
    fig = Figure(figsize=(width + 1.2, height), dpi=max(100, round(max(w, h) / 4.0)))
    ax = fig.add_axes((0.0, 0.0, width / (width + 1.2), 1.0))
    ax.imshow(np.asarray(img), interpolation="antialiased")
    ax.set_axis_off()
    add_colorbar(
        fig,
        fig.add_axes(((width + 0.25) / (width + 1.2), 0.08, 0.2 / (width + 1.2), 0.84)),
        bool(signed),
        s,
        size=9,
    )
    return fig


def save_overlay_figure(path: PathLike, *args, **kwargs) -> None:
    """Write :func:`overlay_figure` as a PNG, atomically."""
    atomic_write(path, figure_png(overlay_figure(*args, **kwargs)))


def save_overlay(
    path: PathLike,
    image: Image.Image,
    map_hw: np.ndarray,
    geometry: Geometry,
    signed: bool | None = None,
    alpha: float = OVERLAY_ALPHA,
    percentile: float = DEFAULT_PERCENTILE,
    grey: bool | None = None,
    max_side: int = OVERLAY_MAX_SIDE,
) -> None:
    """Write :func:`overlay_image` as a PNG, atomically."""
    img = overlay_image(image, map_hw, geometry, signed, alpha, percentile, grey, max_side)
    atomic_write(path, png_bytes(img))
