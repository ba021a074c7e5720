"""One image in, the model's input out: the public ``Model.preprocess`` and the default labels.

Why a module of its own: the Python API must apply exactly the CLI's preprocessing rules (flags
over the sidecar over the preset chosen by input size: :meth:`Preprocess.for_model`), and name
classes the way the CLI does, without a user reaching into :mod:`xplain.data.images`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..errors import UsageError
from .images import Geometry, Preprocess, imagenet_labels, load_image

if TYPE_CHECKING:
    from ..graph.model import Model

#: the label sources a model may be given besides a file or a list
NO_LABELS = "none"


def as_image(image: Any) -> Image.Image:
    """A path (``str`` / ``os.PathLike``) is read with :func:`~xplain.load_image` (the CLI's
    checks: size limits, EXIF orientation, transparency on white); a PIL image is used as is."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    raise UsageError(f"expected an image path or a PIL image, got {type(image).__name__}")


def preprocess_image(
    model: Model,
    image: Any,
    *,
    preset: str | None = None,
    resize: int | None = None,
    mean: float | tuple[float, ...] | None = None,
    std: float | tuple[float, ...] | None = None,
) -> tuple[torch.Tensor, Geometry]:
    """``(x, geometry)``: ``x`` 1×C×H×W float32 on the model's device (see
    :meth:`xplain.Model.preprocess`)."""
    pipeline = Preprocess.for_model(model, preset=preset, resize=resize, mean=mean, std=std)
    array, geometry = pipeline(as_image(image))
    return torch.from_numpy(array)[None].to(model.device), geometry


def default_labels(num_classes: int) -> tuple[list[str], str] | None:
    """The class names a model without a sidecar or ``--labels`` gets, and where they come from.

    1,000 outputs are ImageNet-1k in torchvision's order (what nearly every exported ImageNet
    classifier uses); 1,001 outputs are TensorFlow-slim's ImageNet models, whose class 0 is
    "background" followed by the same 1,000 classes. Any other count: no default."""
    if num_classes == 1000:
        return imagenet_labels(), "imagenet (default for 1000 classes)"
    if num_classes == 1001:
        return [
            "background",
            *imagenet_labels(),
        ], "imagenet (default for 1001 classes, 0 = background)"
    return None
