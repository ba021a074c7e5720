"""xplain.data.datasets: every layout gives the right paths, labels and boxes; bad rows are recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from xplain.data.datasets import Box, class_names_of, read_dataset, read_voc
from xplain.errors import InputDataError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SHAPES = ["circle", "square", "triangle", "cross"]


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (10, 20, 30)).save(path)
    return path


def test_shipped_manifest_labels_and_voc_boxes():
    samples = read_dataset(SAMPLES / "shapes_eval" / "manifest.csv", class_names=SHAPES)
    assert len(samples) == 40 and all(s.error is None for s in samples)
    s1 = samples[1]  # manifest row 2: shapes_001.png, circle, two objects (values from the XML)
    assert s1.path == SAMPLES / "shapes_eval" / "images" / "shapes_001.png"
    assert s1.label == 0
    assert s1.boxes == (Box(14, 22, 34, 42, 0, "circle"), Box(41, 45, 55, 59, 3, "cross"))
    assert [s.label for s in samples[:4]] == [1, 0, 1, 3]  # square, circle, square, cross
    assert (
        len(read_dataset(SAMPLES / "shapes_eval" / "manifest.csv", class_names=SHAPES, limit=3))
        == 3
    )


def test_manifest_bad_rows_are_recorded_not_fatal(tmp_path):
    for name in ("a.png", "b.png", "c.png"):  # one image per row: a repeat is its own rule
        _png(tmp_path / name)
    (tmp_path / "a.xml").write_text("<annotation></annotation>")
    (tmp_path / "m.csv").write_text(
        "path,label,boxes\na.png,2,a.xml\nmissing.png,circle,\nb.png,dog,\nc.png,,\n"
    )
    a, missing, dog, unlabelled = read_dataset(tmp_path / "m.csv", class_names=SHAPES)
    assert (a.label, a.boxes, a.error) == (2, (), None)  # annotated but empty -> ()
    assert "not found" in missing.error and missing.label == 0 and missing.boxes is None
    assert "unknown label 'dog'" in dog.error
    assert (unlabelled.label, unlabelled.boxes, unlabelled.error) == (None, None, None)


def test_manifest_without_path_column_is_an_input_error(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.png,1\n")
    with pytest.raises(InputDataError, match="m.csv.*'path' column"):
        read_dataset(tmp_path / "m.csv")


def test_class_subfolders_by_name_and_index(tmp_path):
    _png(tmp_path / "square" / "b.png")
    _png(tmp_path / "circle" / "a.png")
    _png(tmp_path / "cross" / "c.png")
    samples = read_dataset(tmp_path, class_names=SHAPES)
    assert [(s.path.name, s.label) for s in samples] == [("a.png", 0), ("c.png", 3), ("b.png", 1)]
    idx = tmp_path.parent / (tmp_path.name + "_idx")
    _png(idx / "2" / "x.png")
    assert [s.label for s in read_dataset(idx)] == [2]
    _png(tmp_path / "dog" / "d.png")
    with pytest.raises(InputDataError, match="dog"):
        read_dataset(tmp_path, class_names=SHAPES)


def test_plain_folder_is_unlabelled_labels_and_boxes_files_apply(tmp_path):
    _png(tmp_path / "imgs" / "deep" / "z.png")
    _png(tmp_path / "imgs" / "y.png")
    samples = read_dataset(tmp_path / "imgs")
    assert [s.path.name for s in samples] == ["z.png", "y.png"]  # sorted by path: deep/z < y
    assert all(s.label is None and s.boxes is None for s in samples)
    (tmp_path / "labels.txt").write_text("y.png 3\ndeep/z.png triangle\n")
    (tmp_path / "boxes.json").write_text(
        json.dumps(
            {
                "y": [[1, 2, 3, 4, "cross"]],
                "deep/z.png": [{"xmin": 1, "ymin": 1, "xmax": 2, "ymax": 5, "label": "square"}],
            }
        )
    )
    samples = read_dataset(
        tmp_path / "imgs",
        class_names=SHAPES,
        labels=tmp_path / "labels.txt",
        boxes=tmp_path / "boxes.json",
    )
    assert [s.label for s in samples] == [2, 3]
    assert samples[0].boxes == (Box(1, 1, 2, 5, 1, "square"),)
    assert samples[1].boxes == (Box(1, 2, 3, 4, 3, "cross"),)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "y.xml").write_text(
        "<annotation><object><name>blob</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
        "<xmax>4</xmax><ymax>5</ymax></bndbox></object></annotation>"
    )
    samples = read_dataset(tmp_path / "imgs", class_names=SHAPES, boxes=tmp_path / "ann")
    assert samples[0].boxes is None and samples[1].boxes == (Box(2, 3, 4, 5, None, "blob"),)


def test_voc_rejects_entities_and_bad_boxes(tmp_path):
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx">]><annotation>&x;</annotation>'
    )
    with pytest.raises(InputDataError, match="bomb.xml.*DOCTYPE"):
        read_voc(bomb)
    bad = tmp_path / "bad.xml"
    bad.write_text(
        "<annotation><object><name>c</name><bndbox><xmin>5</xmin><ymin>1</ymin>"
        "<xmax>2</xmax><ymax>3</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(InputDataError, match="xmax < xmin"):
        read_voc(bad)


def test_single_image_missing_data_and_class_names_of(tmp_path):
    img = _png(tmp_path / "one.png")
    assert read_dataset(img) == [read_dataset(img)[0]] and read_dataset(img)[0].path == img
    with pytest.raises(InputDataError, match="no such file"):
        read_dataset(tmp_path / "nope")

    class M:
        labels = ["a", "b"]

    assert class_names_of(M()) == ["a", "b"]
    M.labels = None
    assert class_names_of(M()) is None
