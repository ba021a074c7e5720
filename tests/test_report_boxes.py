"""The eval report draws the ground-truth boxes and shows per-image scores readably (29.4)."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
from PIL import Image

from xplain.data.datasets import Box, Sample
from xplain.data.images import Preprocess
from xplain.output.plots import keep_view
from xplain.output.report import _boxes_of, _image_row


def _pre():
    return Preprocess(
        channels=3,
        size=(16, 16),
        resize=None,
        crop=(16, 16),
        scale=1 / 255,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        preset="unit",
    )


def test_kept_view_has_boxes_in_input_pixels_and_the_report_draws_them(tmp_path):
    # a 32x32 photo resized to 16x16: VOC box 3..10 (1-based, inclusive) -> [1, 1, 5, 5)
    photo = tmp_path / "p.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(photo)
    sample = Sample(photo, 0, (Box(3, 3, 10, 10, None, "cat"),))
    arr = np.full((3, 16, 16), 0.5, np.float32)
    keep_view(tmp_path, 0, sample, arr, _pre())
    facts = json.loads((tmp_path / "maps" / "00000.json").read_text())
    assert facts["boxes"] == [[1.0, 1.0, 5.0, 5.0]]
    np.save(tmp_path / "maps" / "00000.saliency.npy", np.zeros((16, 16), np.float32))
    record = {"image": str(photo), "scores": {"ebpg": 0.25, "deletion": 0.5}, "target": 0}
    row = _image_row(tmp_path, 0, facts, ["saliency"], {(str(photo), "saliency"): record})
    assert "1 box" in row
    assert "<span>ebpg <b>0.25</b></span>" in row  # one score per line, bold value
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", row)
    assert len(pngs) == 2
    for data in pngs:  # photo and overlay: the box's outline is green, its inside is not
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        assert img[1, 1].tolist() == [0, 230, 64] and img[4, 1].tolist() == [0, 230, 64]
        assert img[2, 2].tolist() != [0, 230, 64] and img[10, 10].tolist() != [0, 230, 64]


def test_kept_boxes_are_untrusted():
    facts = {"boxes": [[1, 1, 5, 5], [0, 0, 99, 3], ["a", 0, 1, 1], [2, 2, 1, 1], "x", [1, 2]]}
    assert _boxes_of(facts, (16, 16)) == [(1.0, 1.0, 5.0, 5.0)]
    assert _boxes_of({"boxes": "no"}, (16, 16)) == []
