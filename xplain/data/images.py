"""Image loading, preprocessing, label files and target selection.

Everything here works with Pillow and numpy only (no torch), so it can be imported cheaply and
tested without a model.  The preprocessing deliberately reproduces torchvision's PIL pipeline
(``Resize(shorter side, bilinear)`` + ``CenterCrop``), because that is what most ImageNet
classifiers were trained and evaluated with; a different resampler or crop rounding would shift
pixels and change the predictions that the explanations are about.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.resources
import math
import os
import re
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputDataError, ModelError, UsageError
from ..untrusted import confined_file, parse_json, require_regular_file

if TYPE_CHECKING:  # decoding images needs no torch
    from ..graph.model import InputSpec, Model

__all__ = [
    "Geometry",
    "Preprocess",
    "PRESETS",
    "SIDECAR_KEYS",
    "load_image",
    "read_sidecar",
    "load_labels",
    "imagenet_labels",
    "resolve_target",
]

PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    zlib.error,
)


def _bomb_error(pixels: int | None, limit: int, path: PathLike) -> InputDataError:
    size = f"{pixels} pixels" if pixels is not None else "the image"
    return InputDataError(
        f"image too large: {size} exceeds the limit of {limit} (decompression bomb?)", path=path
    )


def load_image(path: PathLike) -> Image.Image:
    """Open, fully decode and normalise an image file to mode "RGB" or "L".

    The pixel limit is Pillow's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 by default), and anything
    above it is refused, not just warned about: a tiny file that decodes to gigabytes is an
    attack, not an input.  The image is decoded here (``load()``), so truncated or corrupt files
    fail with a clear :class:`InputDataError` instead of deep inside preprocessing.

    Mode choices (single-channel sources stay "L" so a grayscale model sees no colour round-trip):

    * EXIF orientation is applied, so the model sees the image upright as a viewer shows it;
      broken EXIF metadata is ignored (the pixels are still good).
    * Alpha (RGBA, LA, PA, palette transparency) is composited onto **white** rather than
      dropped: fully transparent pixels carry arbitrary colour values (often black or encoder
      leftovers) that no viewer shows, and white is how such images are usually presented.
    * 16-bit integer modes (I;16, I;16B, I) are scaled 0..65535 -> 0..255 (rounded, clipped).
    * 32-bit float ("F") is taken as 0..1 and scaled by 255 when no value exceeds 1, otherwise as
      0..255 already; then clipped, with NaN -> 0.  (Float TIFFs use both conventions.)
    * CMYK, YCbCr, LAB, HSV use Pillow's conversion to RGB; ICC profiles are not applied.
    * Multi-frame files (GIF, animated WebP, multi-page TIFF) give their first frame.
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputDataError("file not found", path=path)
    if p.is_dir():
        raise InputDataError("is a directory, not an image file", path=path)
    require_regular_file(p, InputDataError, "image")  # a FIFO would block, a device never end
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x the limit; make that an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            _verify_checksums(p)
            with Image.open(p) as img:  # checks the header's size against the limit
                img.load()
                return _normalise_mode(_exif_upright(img))
    except InputDataError as e:
        if e.path is None:
            raise InputDataError(e.message, path=path, hint=e.hint) from e
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        raise _bomb_error(int(m.group(1)) if m else None, limit or 0, path) from e
    except UnidentifiedImageError as e:
        raise InputDataError("not an image file (cannot identify format)", path=path) from e
    except PermissionError as e:
        raise InputDataError("cannot read the file: permission denied", path=path) from e
    except MemoryError as e:
        raise InputDataError("image too large to decode in memory", path=path) from e
    except _DECODE_ERRORS as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputDataError(f"corrupt or truncated image ({detail})", path=path) from e


def _verify_checksums(p: Path) -> None:
    """PNG (and APNG) chunks carry a CRC that Pillow checks only in ``verify()``, not when it
    decodes; a PNG whose pixels were damaged in transit would be explained as if it were whole
    (``pngcheck`` refuses it). One ``verify()`` pass reads the chunks without decoding them.
    Truncated images are never completed (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off)."""
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with Image.open(p) as img:
        if img.format == "PNG":
            img.verify()


def _exif_upright(img: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF must not make a decodable image unusable
        out = None
    # Always hand back an image independent of the (about to be closed) file.
    return img.copy() if out is None or out is img else out


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to "RGB" or "L" following the rules in :func:`load_image`."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in _SIXTEEN_BIT_MODES:  # float32 (not 64): an 89-megapixel image stays < 1 GB
        a = np.asarray(img).astype(np.float32)
        return Image.fromarray(
            np.clip(np.rint(a * np.float32(255.0 / 65535.0)), 0, 255).astype(np.uint8), "L"
        )
    if mode == "F":
        a = np.nan_to_num(np.asarray(img).astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        return _normalise_mode(img)
    if mode in ("LA", "La"):
        return _on_white(img.convert("LA"), "L")
    if mode in ("RGBA", "RGBa", "PA"):
        return _on_white(img.convert("RGBA"), "RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:  # pragma: no cover - exotic modes Pillow cannot convert
        raise InputDataError(f"unsupported image mode {mode!r}") from e


def _on_white(img: Image.Image, out_mode: str) -> Image.Image:
    """Composite an RGBA or LA image onto white (straight, i.e. non-premultiplied, alpha).

    Works in float32 on bands of rows, so a large image never needs more than a few MB of
    temporary float arrays beside its uint8 pixels."""
    src = np.asarray(img)
    out = np.empty(src.shape[:-1] + (src.shape[-1] - 1,), np.uint8)
    rows = max(1, 2**20 // max(1, src.shape[1]))
    for top in range(0, src.shape[0], rows):
        a = src[top : top + rows].astype(np.float32)
        alpha = a[..., -1:] / np.float32(255.0)
        band = a[..., :-1] * alpha + np.float32(255.0) * (1.0 - alpha)
        out[top : top + rows] = np.clip(np.rint(band), 0, 255).astype(np.uint8)
    return Image.fromarray(out[..., 0] if out_mode == "L" else out, out_mode)


# --------------------------------------------------------------------------------------------
# Geometry and preprocessing
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the model input came from, so maps can be drawn back onto the original image.

    Sizes are Pillow-style (W, H); ``crop_box`` is (left, top, right, bottom) in the resized
    image's coordinates.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]

    def to_original(self, map_hw: np.ndarray) -> np.ndarray:
        """Map a crop-resolution map (H×W) back to the original image size; NaN outside the crop.

        The map is placed in a NaN canvas of the resized size and resized to the original size
        with the same bilinear filter Pillow used forwards.  NaNs must not bleed into the
        inside, so this is a normalised convolution: resize ``value * valid`` and ``valid``
        separately and divide.  An output pixel counts as inside the crop when at least half of
        its interpolation weight comes from inside; this keeps the boundary where the crop
        edge falls instead of growing or shrinking it by a pixel.
        """
        m = np.asarray(map_hw, dtype=np.float32)  # float32: original-size arrays stay small
        left, top, right, bottom = self.crop_box
        if m.shape != (bottom - top, right - left):
            raise ValueError(
                f"map shape {m.shape} does not match the crop {(bottom - top, right - left)} (H, W)"
            )
        rw, rh = self.resized_size
        canvas = np.full((rh, rw), np.nan, dtype=np.float32)
        # Clip to the canvas: a crop is always inside the resized image when built by Preprocess.
        t0, l0 = max(top, 0), max(left, 0)
        b0, r0 = min(bottom, rh), min(right, rw)
        canvas[t0:b0, l0:r0] = m[t0 - top : b0 - top, l0 - left : r0 - left]
        valid = np.isfinite(canvas)
        values = np.where(valid, canvas, np.float32(0.0))
        size = self.original_size

        def resize(a: np.ndarray) -> np.ndarray:
            im = Image.fromarray(a.astype(np.float32), "F")
            return np.asarray(
                im.resize(size, Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.float32
            )

        weight = resize(valid.astype(np.float32))
        total = resize(values)
        inside = weight >= 0.5 - 1e-6
        out = np.full(weight.shape, np.nan, dtype=np.float32)
        out[inside] = total[inside] / weight[inside]
        return out.astype(np.float32)

    def box_to_input(
        self, xmin: float, ymin: float, xmax: float, ymax: float, voc: bool = True
    ) -> tuple[float, float, float, float]:
        """Map a box on the original image to continuous model-input coordinates.

        With ``voc`` the box is Pascal VOC (1-based, inclusive: pixels ``xmin..xmax``), i.e. the
        continuous interval ``[xmin-1, xmax)``; otherwise it is already continuous 0-based.
        The resize scales coordinates linearly (Pillow maps pixel edges to edges), then the crop
        shifts them; the result is clipped to the crop, so a box outside it becomes empty.
        """
        if voc:
            xmin, ymin = xmin - 1.0, ymin - 1.0
        (w0, h0), (rw, rh) = self.original_size, self.resized_size
        left, top, right, bottom = self.crop_box
        sx, sy = rw / w0, rh / h0
        x0 = min(max(xmin * sx - left, 0.0), float(right - left))
        x1 = min(max(xmax * sx - left, 0.0), float(right - left))
        y0 = min(max(ymin * sy - top, 0.0), float(bottom - top))
        y1 = min(max(ymax * sy - top, 0.0), float(bottom - top))
        return x0, y0, x1, y1

    def to_dict(self) -> dict[str, list[int]]:
        return {
            "original_size": list(self.original_size),
            "resized_size": list(self.resized_size),
            "crop_box": list(self.crop_box),
        }


PRESETS = ("imagenet", "unit", "none")
#: sane ranges of the preprocessing numbers (flags and sidecar): a std of 1e-300 overflows every
#: input to inf and the model's probabilities to NaN
STD_RANGE = (1e-6, 1e6)
MEAN_LIMIT = 1e6
#: the most pixels an image may have after the resize (before the crop): a 1x9000 image resized to
#: a 224 shorter side would otherwise become 224x2,016,000
MAX_RESIZED_PIXELS = 2**26


def max_resize(h: int, w: int) -> int:
    """The largest shorter-side target accepted for a model input of h x w."""
    return max(2048, 8 * max(h, w))


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Single-channel ImageNet statistics: the means of the per-channel values (a grayscale image is
# roughly the channel average, so this is what the RGB statistics imply for it).
_IMAGENET_MEAN_GRAY = (0.449,)
_IMAGENET_STD_GRAY = (0.226,)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Turn a loaded image into the float32 C×H×W array a model expects.

    Pipeline: convert to L/RGB per ``channels`` → resize (shorter side to ``resize``, or
    straight to ``size`` when ``resize`` is None) → centre crop to ``crop`` → float32 ×
    ``scale`` → (x − mean) / std.  ``mean``/``std`` are in the units *after* scaling (0..1 for
    the imagenet and unit presets, 0..255 for ``none``).
    """

    channels: int
    size: tuple[int, int]  # model input (H, W)
    resize: int | None  # target of the shorter side; None = resize directly to ``size``
    crop: tuple[int, int]  # (H, W); always equal to ``size``
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preset: str

    @classmethod
    def for_model(
        cls,
        model: Model,
        preset: str | None = None,
        resize: int | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
    ) -> Preprocess:
        """The one way the verbs (explain, eval, fit, bench) build a model's pipeline: its input
        spec and sidecar, overridden by the flags given (see :meth:`from_options`)."""
        return cls.from_options(
            model.spec, preset=preset, sidecar=model.sidecar, resize=resize, mean=mean, std=std
        )

    @classmethod
    def from_options(
        cls,
        input_shape: Sequence[int] | InputSpec,
        preset: str | None = None,
        sidecar: dict[str, Any] | None = None,
        resize: int | None = None,
        crop: int | Sequence[int] | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        *,
        sidecar_path: PathLike | None = None,
    ) -> Preprocess:
        """Combine explicit flags > sidecar values > preset defaults into a pipeline.

        ``input_shape`` is the model's (C, H, W) or its :class:`~xplain.InputSpec`.  The preset is the flag, else the sidecar's
        "preset", else "imagenet" for 3-channel inputs of at least 128 pixels high (those are
        almost always ImageNet-style models) and "unit" otherwise.

        ``resize`` = 0 (flag or sidecar) or an explicit ``null`` in the sidecar means "resize
        straight to the input size" (aspect ratio not kept, no crop).  A shorter-side target must
        be at least max(H, W) so the crop fits every aspect ratio; the crop itself must equal
        the model input, because the model's input size is fixed.  Bad flags raise
        :class:`UsageError`; bad sidecar values :class:`InputDataError` naming the sidecar.
        """
        sidecar_path = sidecar_path if sidecar_path is not None else getattr(sidecar, "path", None)
        sidecar = dict(sidecar or {})
        if not isinstance(input_shape, Sequence):  # an InputSpec
            input_shape = (input_shape.channels, input_shape.height, input_shape.width)
        if len(input_shape) != 3:
            raise ModelError(f"expected a model input of shape (C, H, W), got {tuple(input_shape)}")
        c, h, w = (int(v) for v in input_shape)
        if c not in (1, 3):
            raise ModelError(f"the model input has {c} channels; xplain handles images with 1 or 3")
        if h <= 0 or w <= 0:
            raise ModelError(f"the model input size {h}x{w} is not fixed/positive")

        def fail(source: str | None, message: str) -> Exception:
            if source == "flag":
                return UsageError(message)
            return InputDataError(message + " (in the sidecar)", path=sidecar_path)

        def pick(name: str, flag: Any) -> tuple[Any, str | None]:
            if flag is not None:
                return flag, "flag"
            if name in sidecar:
                return sidecar[name], "sidecar"
            return None, None

        name, src = pick("preset", preset)
        if name is None:
            name = "imagenet" if c == 3 and h >= 128 else "unit"
        if not isinstance(name, str) or name.lower() not in PRESETS:
            raise fail(
                src or "flag",
                f"unknown preprocessing preset {name!r}; valid presets: {', '.join(PRESETS)}",
            )
        name = name.lower()

        crop_v, src = pick("crop", crop)
        if crop_v is not None:
            ch, cw = _pair(crop_v, "crop", lambda m: fail(src, m))
            if (ch, cw) != (h, w):
                raise fail(
                    src,
                    f"crop {ch}x{cw} differs from the model input {h}x{w}; the crop "
                    "must equal the model input size (change resize instead)",
                )

        if "resize" in sidecar and sidecar["resize"] is None and resize is None:
            resize_v, src = 0, "sidecar"
        else:
            resize_v, src = pick("resize", resize)
        if resize_v is None:
            side = max(h, w)
            resize_v = int(round(side / 0.875)) if name == "imagenet" else side
        else:
            if isinstance(resize_v, bool) or not isinstance(resize_v, int) or resize_v < 0:
                raise fail(src, f"resize must be a non-negative integer, got {resize_v!r}")
            if 0 < resize_v < max(h, w):
                raise fail(
                    src,
                    f"resize {resize_v} is smaller than the model input {h}x{w}; the "
                    f"shorter side must be at least {max(h, w)} for the crop to fit",
                )
            limit = max_resize(h, w)
            if resize_v > limit:
                raise fail(
                    src,
                    f"resize {resize_v} is larger than {limit} (8 x the model input, "
                    "at least 2048); refused",
                )

        if name == "imagenet":
            d_mean, d_std = (
                (_IMAGENET_MEAN, _IMAGENET_STD)
                if c == 3
                else (_IMAGENET_MEAN_GRAY, _IMAGENET_STD_GRAY)
            )
        else:
            d_mean, d_std = (0.0,), (1.0,)
        mean_v, src_m = pick("mean", mean)
        std_v, src_s = pick("std", std)
        mean_t = _per_channel(
            d_mean if mean_v is None else mean_v, c, "mean", lambda m: fail(src_m, m)
        )
        std_t = _per_channel(d_std if std_v is None else std_v, c, "std", lambda m: fail(src_s, m))
        if any(s <= 0 for s in std_t):
            raise fail(src_s or "flag", f"std values must be positive, got {list(std_t)}")
        if any(not STD_RANGE[0] <= s <= STD_RANGE[1] for s in std_t):
            raise fail(
                src_s or "flag",
                f"std values must lie in [{STD_RANGE[0]:g}, {STD_RANGE[1]:g}], "
                f"got {list(std_t)} (dividing by them would overflow)",
            )
        if any(abs(m) > MEAN_LIMIT for m in mean_t):
            raise fail(
                src_m or "flag",
                f"mean values must lie in [-{MEAN_LIMIT:g}, {MEAN_LIMIT:g}], got {list(mean_t)}",
            )

        return cls(
            channels=c,
            size=(h, w),
            resize=resize_v or None,
            crop=(h, w),
            scale=1.0 if name == "none" else 1.0 / 255.0,
            mean=mean_t,
            std=std_t,
            preset=name,
        )

    def geometry(self, original_size: tuple[int, int]) -> Geometry:
        """The resize and crop this pipeline applies to an image of ``original_size`` (W, H)."""
        w0, h0 = (int(v) for v in original_size)
        if w0 <= 0 or h0 <= 0:
            raise InputDataError(f"empty image ({w0}x{h0})")
        h, w = self.size
        if self.resize is None:
            return Geometry((w0, h0), (w, h), (0, 0, w, h))
        # torchvision's Resize(int): shorter side -> resize, longer side truncated, not rounded.
        r = self.resize
        if w0 <= h0:
            rw, rh = r, int(r * h0 / w0)
        else:
            rw, rh = int(r * w0 / h0), r
        if rw * rh > MAX_RESIZED_PIXELS:
            raise InputDataError(
                f"image of {w0}x{h0} would be resized to {rw}x{rh} "
                f"(more than {MAX_RESIZED_PIXELS} pixels); the aspect ratio is too extreme"
            )
        ch, cw = self.crop
        # torchvision's CenterCrop rounding (Python's round: halves go to even).
        top = int(round((rh - ch) / 2.0))
        left = int(round((rw - cw) / 2.0))
        return Geometry((w0, h0), (rw, rh), (left, top, left + cw, top + ch))

    def __call__(self, image: Image.Image) -> tuple[np.ndarray, Geometry]:
        """Preprocess one image; return (float32 C×H×W, its Geometry).

        Resampling is Pillow's BILINEAR, which is antialiased when shrinking (the filter
        widens with the scale factor) and is exactly what torchvision's default ``Resize`` does
        on PIL images; ``reducing_gap=None`` keeps it exact instead of the faster approximate
        two-step reduction.
        """
        mode = "RGB" if self.channels == 3 else "L"
        img = _normalise_mode(image)
        if img.mode != mode:  # L -> RGB replicates; RGB -> L is Pillow's ITU-R 601-2 luma
            img = img.convert(mode)
        geo = self.geometry(img.size)
        if img.size != geo.resized_size:
            img = img.resize(geo.resized_size, Image.Resampling.BILINEAR, reducing_gap=None)
        if geo.crop_box != (0, 0) + geo.resized_size:
            img = img.crop(geo.crop_box)
        a = np.asarray(img, dtype=np.float32)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        x = (a * np.float32(self.scale) - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32), geo

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, recorded with every result so a run can be reproduced."""
        return {
            "preset": self.preset,
            "channels": self.channels,
            "size": list(self.size),
            "resize": self.resize,
            "crop": list(self.crop),
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def _pair(value: Any, name: str, fail) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise fail(f"{name} must be a positive integer or a pair [H, W], got {value!r}")
    return int(value[0]), int(value[1])


def _per_channel(value: Any, c: int, name: str, fail) -> tuple[float, ...]:
    seq = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if (
        not isinstance(seq, (list, tuple))
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seq)
        or not all(math.isfinite(v) for v in seq)
    ):
        raise fail(f"{name} must be a number or a list of numbers, got {value!r}")
    if len(seq) not in (1, c):
        raise fail(f"{name} has {len(seq)} values; the model has {c} channel(s), so give 1 or {c}")
    return tuple(float(v) for v in seq) * (c if len(seq) == 1 else 1)


# --------------------------------------------------------------------------------------------
# Sidecar and labels
# --------------------------------------------------------------------------------------------

SIDECAR_KEYS = ("preset", "resize", "crop", "mean", "std", "labels")


class Sidecar(dict):
    """A sidecar's checked values; ``path`` lets later errors (bad preprocessing values) name the file."""

    def __init__(self, values: dict, path: Path):
        super().__init__(values)
        self.path = path


_MAX_SIDECAR_BYTES = 16 * 2**20
_MAX_LABELS_BYTES = 64 * 2**20


def read_sidecar(model_path: PathLike) -> dict[str, Any]:
    """Read ``<model>.json`` (e.g. ``model.onnx.json``) next to a model, or return ``{}``.

    The sidecar lets a model ship its preprocessing and labels so users need no flags.  Types are
    checked here so a typo fails at once, naming the file; a relative "labels" path is resolved
    against the sidecar's folder (stored as an absolute path), because that is where its author
    put it, not wherever the user runs from.  "labels": "imagenet" means the built-in names.
    """
    path = Path(str(model_path) + ".json")
    if not path.exists() and not path.is_symlink():
        return Sidecar({}, path)
    size = require_regular_file(path, InputDataError, "sidecar")
    if size > _MAX_SIDECAR_BYTES:
        raise InputDataError(
            f"the sidecar is larger than {_MAX_SIDECAR_BYTES // 2**20} MiB", path=path
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputDataError(f"cannot read the sidecar: {e.strerror}", path=path) from e
    data = parse_json(raw, path, InputDataError, "JSON in the sidecar")
    if not isinstance(data, dict):
        raise InputDataError("the sidecar must be a JSON object", path=path)
    unknown = sorted(set(data) - set(SIDECAR_KEYS))
    if unknown:
        raise InputDataError(
            f"unknown sidecar key(s) {', '.join(unknown)}; allowed: {', '.join(SIDECAR_KEYS)}",
            path=path,
        )

    def bad(key: str, expected: str) -> InputDataError:
        return InputDataError(
            f"sidecar key {key!r} must be {expected}, got {data[key]!r}", path=path
        )

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "preset" and not isinstance(value, str):
            raise bad(key, "a string")
        if key == "resize" and not (value is None or (is_int(value) and 0 <= value <= 65536)):
            raise bad(key, "a non-negative integer (at most 65536) or null")
        if key == "crop" and not (
            (is_int(value) and 0 < value <= 65536)
            or (
                isinstance(value, list)
                and len(value) == 2
                and all(is_int(v) and 0 < v <= 65536 for v in value)
            )
        ):
            raise bad(key, "a positive integer or [H, W]")
        if key in ("mean", "std") and not (
            is_num(value)
            or (isinstance(value, list) and 0 < len(value) <= 4 and all(is_num(v) for v in value))
        ):
            raise bad(key, "a number or a list of numbers")
        if key == "labels":
            if isinstance(value, str):
                if value != "imagenet":  # confined like external data: only files beside the model
                    value = str(
                        confined_file(path.parent, value, InputDataError, "labels file", path)
                    )
            elif isinstance(value, list):
                if not value or not all(isinstance(v, str) for v in value):
                    raise bad(key, 'a file name, "imagenet" or a list of strings')
            elif isinstance(value, dict):
                value = _labels_from_json(value, path)
            else:
                raise bad(key, 'a file name, "imagenet" or a list of strings')
        out[key] = value
    return Sidecar(out, path)


@functools.lru_cache(maxsize=1)
def _imagenet_labels() -> tuple[str, ...]:
    text = (importlib.resources.files("xplain") / "data" / "imagenet_classes.txt").read_text(
        encoding="utf-8"
    )
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (a fresh list each call).

    Shipped as data (generated once from torchvision's metadata) so that no runtime code needs
    torchvision just to name a class.
    """
    return list(_imagenet_labels())


def load_labels(
    spec: str | os.PathLike[str] | Sequence[str], base_dir: PathLike | None = None
) -> list[str]:
    """Class names from a list, the string "imagenet", or a text/JSON file.

    Text files hold one label per line (whitespace stripped; trailing empty lines ignored; an
    empty line in the middle is an error because it would silently name a class "").  JSON files
    (``.json``) hold a list of names or an object mapping "0".."N-1" to names; a value may also be
    an ``[id, name]`` pair as in Keras' ``imagenet_class_index.json`` (the last element is used).
    Relative paths are resolved against ``base_dir`` when given.
    """
    if isinstance(spec, (list, tuple)):
        if not spec or not all(isinstance(v, str) for v in spec):
            raise InputDataError("labels must be a non-empty list of strings")
        return list(spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise InputDataError(f'labels must be a file name, "imagenet" or a list, got {spec!r}')
    if isinstance(spec, str) and spec == "imagenet":
        return imagenet_labels()
    path = Path(spec)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    size = require_regular_file(path, InputDataError, "labels file")
    if size > _MAX_LABELS_BYTES:
        raise InputDataError(
            f"the labels file is larger than {_MAX_LABELS_BYTES // 2**20} MiB", path=path
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputDataError(f"cannot read the labels file: {e}", path=path) from e
    if path.suffix.lower() == ".json":
        return _labels_from_json(parse_json(text, path, InputDataError, "JSON"), path)
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise InputDataError("the labels file is empty", path=path)
    if "" in lines:
        raise InputDataError(f"line {lines.index('') + 1} is empty (one label per line)", path=path)
    return lines


def _labels_from_json(data: Any, path: PathLike) -> list[str]:
    def name(v: Any) -> str | None:
        if isinstance(v, list) and v:
            v = v[-1]
        return v.strip() if isinstance(v, str) and v.strip() else None

    if isinstance(data, list):
        names = [name(v) for v in data]
    elif isinstance(data, dict):
        try:
            if any(
                len(k) > 12 for k in data
            ):  # int() of a 5000-digit key raises, and no model has 10^12 classes
                raise ValueError
            index = {int(k): v for k, v in data.items()}
        except ValueError:
            raise InputDataError(
                'label keys must be class indices ("0", "1", ...)', path=path
            ) from None
        if sorted(index) != list(range(len(index))):
            raise InputDataError(
                f"label indices must be 0..{len(index) - 1} without gaps", path=path
            )
        names = [name(index[i]) for i in range(len(index))]
    else:
        raise InputDataError("labels JSON must be a list or an object of index -> name", path=path)
    if not names:
        raise InputDataError("no labels found", path=path)
    if None in names:
        raise InputDataError(f"label {names.index(None)} is not a non-empty string", path=path)
    return names  # type: ignore[return-value]


_TOPK = re.compile(r"top(\d+)", re.IGNORECASE)
_INT = re.compile(r"[+-]?\d+")


def resolve_target(spec: str, labels: list[str] | None, num_classes: int) -> list[int] | str:
    """Turn a ``--target`` value into class indices, or a "topK" string for the caller.

    ``top1``/``top5``/``topK`` are returned normalised (lower case) because they depend on the
    predictions, which only the caller has.  Otherwise the spec is a class index, a label name
    (exact match first, then case-insensitive), or several of those separated by commas; the
    whole spec is tried as one label first so names that contain commas still work.
    """
    text = str(spec).strip()
    if not text:
        raise UsageError("empty target; use top1, top5, a class index or a label name")
    m = _TOPK.fullmatch(text)
    if m:
        k = int(m.group(1))
        if k < 1:
            raise UsageError(f"target {text!r}: k must be at least 1")
        return f"top{min(k, num_classes)}"  # top5 of a 4-class model is every class
    single = _resolve_one(text, labels, num_classes, raise_error=False)
    if single is not None:
        return [single]
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1:
        if any(_TOPK.fullmatch(p) for p in parts):
            raise UsageError(f"target {text!r}: topK cannot be combined with other targets")
        return [_resolve_one(p, labels, num_classes, raise_error=True) for p in parts]  # type: ignore[misc]
    _resolve_one(text, labels, num_classes, raise_error=True)
    raise AssertionError("unreachable")  # pragma: no cover


def match_label(text: str, names: Sequence[str] | None) -> int | list[int] | None:
    """The one label matcher (``--target``, manifests, label files, box names): ``text`` as a
    class index (an int, not range-checked), else the index of the class name it equals (exact
    first, then case-insensitive), a list of indices when it names several, None when none."""
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text)
    if not names:
        return None
    hits = [i for i, n in enumerate(names) if n == text] or [
        i for i, n in enumerate(names) if n.casefold() == text.casefold()
    ]
    return hits[0] if len(hits) == 1 else hits or None


def _resolve_one(
    text: str, labels: list[str] | None, num_classes: int, *, raise_error: bool
) -> int | None:
    if _INT.fullmatch(text):
        if len(text) > 20:  # int() refuses more than 4300 digits; no class index needs 20
            raise UsageError(
                f"target index {text[:20]}… ({len(text)} digits) is out of range; the model has "
                f"{num_classes} classes"
            )
        i = int(text)
        if not 0 <= i < num_classes:
            raise UsageError(
                f"target index {i} is out of range; the model has {num_classes} "
                f"classes (0..{num_classes - 1})"
            )
        return i
    found = match_label(text, labels)
    if isinstance(found, int):
        return _check_index(found, text, num_classes)
    if found:
        raise UsageError(
            f"target {text!r} is ambiguous: it names classes "
            f"{', '.join(map(str, found))}; use an index"
        )
    if not raise_error:
        return None
    if not labels:
        raise UsageError(
            f"unknown target {text!r}: no class labels are known, so use a class "
            f"index (0..{num_classes - 1}), top1 or top5"
        )
    close = difflib.get_close_matches(text, labels, n=5, cutoff=0.6)
    if not close:  # case differences defeat get_close_matches; retry folded
        folded = {lab.casefold(): lab for lab in labels}
        close = [folded[c] for c in difflib.get_close_matches(text.casefold(), list(folded), n=5)]
    hint = (
        ("did you mean: " + ", ".join(repr(c) for c in close))
        if close
        else f"use top1, top5, a class index 0..{num_classes - 1} or a label name"
    )
    raise UsageError(f"unknown target {text!r}", hint=hint)


def _check_index(i: int, text: str, num_classes: int) -> int:
    if i >= num_classes:
        raise UsageError(
            f"target {text!r} is label {i}, but the model has only {num_classes} "
            "classes (do the labels match the model?)"
        )
    return i
