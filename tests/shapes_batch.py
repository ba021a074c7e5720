"""The first images of ``sample_models/shapes_eval`` as ``xplain eval`` builds a batch: inputs,
labels, boxes in model-input pixels and the target boxes' pixel mask (shared by metric tests)."""

from __future__ import annotations

from pathlib import Path

import torch

import xplain
from xplain.data.datasets import class_names_of, read_dataset
from xplain.data.images import Preprocess, load_image

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def shapes_eval_batch(limit: int):
    """``(model, x, targets, context, roi)`` for the first ``limit`` rows of the manifest."""
    from xplain_builtins.metrics.localisation import box_masks

    model = xplain.load_model(SAMPLES / "shapes_cnn.onnx", device="cpu")
    samples = read_dataset(
        SAMPLES / "shapes_eval" / "manifest.csv", class_names=class_names_of(model), limit=limit
    )
    pre = Preprocess.from_options((3, 64, 64), sidecar=model.sidecar)
    xs, boxes, labels = [], [], []
    for s in samples:
        arr, geo = pre(load_image(s.path))
        xs.append(torch.from_numpy(arr))
        boxes.append(
            torch.tensor([geo.box_to_input(b.xmin, b.ymin, b.xmax, b.ymax) for b in s.boxes])
        )
        labels.append(torch.tensor([b.label for b in s.boxes]))
    x = torch.stack(xs)
    t = torch.tensor([s.label for s in samples])
    ctx = {"boxes": boxes, "box_labels": labels}
    roi, valid = box_masks(boxes, labels, t, 64, 64, "cpu")
    assert valid.all()
    return model, x, t, ctx, roi
