"""Preprocessing images for a model (geometry, resize, crop, normalisation), and the names
of the data stage: decoding is :mod:`.decode`, the sidecar and label files :mod:`.sidecar`,
target selection :mod:`.targets`; they are re-exported here for existing imports.

Everything here works with Pillow and numpy only (no torch), so it can be imported cheaply and
tested without a model.  The preprocessing deliberately reproduces torchvision's PIL pipeline
(``Resize(shorter side, bilinear)`` + ``CenterCrop``), because that is what most ImageNet
classifiers were trained and evaluated with; a different resampler or crop rounding would shift
pixels and change the predictions that the explanations are about.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import InputDataError, ModelError, UsageError
from .decode import PathLike, load_image, normalise_mode
from .sidecar import SIDECAR_KEYS, imagenet_labels, load_labels, read_sidecar
from .targets import resolve_target

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
        img = normalise_mode(image)
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
