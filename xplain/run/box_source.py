"""Where a box metric's boxes come from when ``--boxes`` is not given.

Why a module of its own: ``eval --metrics ebpg`` without ``--boxes`` used to exit 0 with "n/a"
for every score although the VOC XML files sat beside the images (issue 29.4).  Now a run whose
metrics need boxes either finds them (a manifest's boxes column, or ``IMAGE.xml`` beside each
image, and says so) or stops before any work with one line (exit 2).
"""

from __future__ import annotations

from pathlib import Path

from ..data.datasets import BESIDE, read_dataset, voc_beside
from ..errors import UsageError
from ..plugins.registry import Registry

__all__ = ["needs_boxes", "choose_boxes"]


def needs_boxes(metric_names: list[str], registry: Registry) -> list[str]:
    """The chosen metrics that need ground-truth boxes."""
    return [n for n in metric_names if "boxes" in registry.metric(n).needs]


def choose_boxes(
    data: Path,
    boxes: Path | None,
    metric_names: list[str],
    registry: Registry,
    class_names: list[str] | None,
    limit: int | None = None,
) -> tuple[Path | str | None, str | None]:
    """``(boxes, note)``: what ``evaluate`` gets for ``boxes`` and a line to print, or a
    :class:`UsageError` when box metrics have no boxes anywhere."""
    wanting = needs_boxes(metric_names, registry)
    if boxes is not None or not wanting:
        return boxes, None
    samples = read_dataset(Path(data), class_names=class_names, limit=limit)
    if any(s.boxes is not None for s in samples):
        return None, None  # a manifest's boxes column
    beside = sum(voc_beside(s.path).is_file() for s in samples)
    if beside:
        return BESIDE, (
            f"xplain: note: {', '.join(wanting)} use the Pascal VOC boxes beside the images "
            f"({beside} of {len(samples)} images have IMAGE.xml; --boxes to choose others)"
        )
    raise UsageError(
        f"metric {', '.join(wanting)} needs ground-truth boxes: give --boxes (a folder of Pascal "
        "VOC XML or a JSON file), a boxes column in the manifest, or IMAGE.xml beside each image",
        path=data,
    )
