"""Decoding untrusted image files into RGB or grayscale Pillow images.

Kept apart from preprocessing because decoding is where hostile files arrive: decompression
bombs, truncated streams, 16-bit and float modes, EXIF rotation and transparency are each
handled here once, with one-line errors naming the file, and nothing here needs a model.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputDataError
from ..untrusted import require_regular_file

PathLike = str | os.PathLike[str]

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
                return normalise_mode(_exif_upright(img))
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


def normalise_mode(img: Image.Image) -> Image.Image:
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
        return normalise_mode(img)
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
