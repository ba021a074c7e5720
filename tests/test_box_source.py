"""A box metric without --boxes finds VOC XML beside the images (and says so) or fails with one
line, exit 2, before any work (issue 29.4)."""

from __future__ import annotations

import pytest
from PIL import Image

from xplain.cli.app import main
from xplain.data.datasets import BESIDE, read_dataset
from xplain.errors import UsageError
from xplain.plugins.registry import get_registry
from xplain.run.box_source import choose_boxes

VOC = (
    "<annotation><object><name>blob</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
    "<xmax>9</xmax><ymax>12</ymax></bndbox></object></annotation>"
)


def _images(folder, n=2):
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(folder / f"img{i}.png")
    return folder


def test_voc_beside_the_images_is_found_and_read(tmp_path):
    data = _images(tmp_path / "d")
    (data / "img0.xml").write_text(VOC)
    registry = get_registry()
    boxes, note = choose_boxes(data, None, ["ebpg"], registry, None)
    assert boxes == BESIDE and "1 of 2 images" in note and "ebpg" in note
    samples = read_dataset(data, boxes=BESIDE)
    assert [s.boxes is not None for s in samples] == [True, False]
    b = samples[0].boxes[0]
    assert (b.xmin, b.ymin, b.xmax, b.ymax, b.name) == (2, 3, 9, 12, "blob")
    assert choose_boxes(data, None, ["deletion"], registry, None) == (None, None)  # no box metric


def test_box_metric_without_any_boxes_is_one_line_exit_2(tiny_cnn_path, tmp_path, capsys):
    data = _images(tmp_path / "d")
    with pytest.raises(UsageError, match="needs ground-truth boxes"):
        choose_boxes(data, None, ["ebpg"], get_registry(), None)
    out = tmp_path / "o"
    argv = ["eval", str(tiny_cnn_path), str(data), "--methods", "saliency", "--metrics", "ebpg"]
    code = main([*argv, "--out", str(out), "--device", "cpu", "--preset", "unit"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--boxes" in err[0] and str(data) in err[0]
    assert not out.exists()  # stopped before any work
