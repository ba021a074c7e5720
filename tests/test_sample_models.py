"""The shipped sample models: they load, verify, classify their own held-out images, explain."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

import xplain
from xplain.cli.app import main
from xplain.data.images import Preprocess, load_image

from .conftest import SAMPLES

MODELS = sorted(p.name for p in SAMPLES.glob("*.onnx"))


def _model_images(name):
    prefix = "digit_" if name.startswith("digits") else "shapes_"
    return sorted((SAMPLES / "images").glob(prefix + "*.png"))


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = xplain.load_model(SAMPLES / name)
        return cache[name]

    return get


def _batch(model, paths):
    pre = Preprocess.from_options(
        (model.spec.channels, model.spec.height, model.spec.width), sidecar=model.sidecar
    )
    return torch.stack([torch.from_numpy(pre(load_image(p))[0]) for p in paths])


def test_every_family_is_shipped_both_ways():
    for stem in ("digits_mlp", "digits_cnn", "shapes_cnn"):
        assert f"{stem}.onnx" in MODELS and f"{stem}.dynamo.onnx" in MODELS
    assert "digits_mlp_softmax.onnx" in MODELS


@pytest.mark.parametrize("name", MODELS)
def test_sample_model_loads_verified_with_labels(name, loaded):
    model = loaded(name)
    report = model.report
    assert report.verified and report.batch_checked
    assert model.labels is not None and len(model.labels) == model.num_classes
    if ".dynamo." in name:
        assert report.opset >= 18 and report.opset_used <= 17
    else:
        assert report.opset == 17
    assert report.softmax_stripped == ("Softmax" if "softmax" in name else None)


@pytest.mark.parametrize("name", MODELS)
def test_sample_model_classifies_its_shipped_images(name, loaded):
    model = loaded(name)
    paths = _model_images(name)
    assert paths
    with torch.no_grad():
        logits = model(_batch(model, paths))
    predicted = [model.labels[i] for i in logits.argmax(1).tolist()]
    if name.startswith("digits"):
        expected = [p.stem.split("_")[1] for p in paths]  # digit_<d>.png
        assert predicted == expected
    else:
        for path, top2 in zip(paths, logits.topk(2).indices.tolist()):
            objects = {
                o.findtext("name")
                for o in ET.parse(path.with_suffix(".xml")).getroot().iter("object")
            }
            assert set(model.labels[i] for i in top2[: len(objects)]) == objects, path.name


def test_shapes_eval_split_is_complete():
    manifest = SAMPLES / "shapes_eval" / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) >= 20
    labels = (SAMPLES / "shapes.labels.txt").read_text().split()
    for row in rows:
        assert (manifest.parent / row["path"]).is_file()
        root = ET.parse(manifest.parent / row["boxes"]).getroot()
        names = [o.findtext("name") for o in root.iter("object")]
        assert row["label"] == names[0] and set(names) <= set(labels)
        for box in root.iter("bndbox"):
            xmin, ymin, xmax, ymax = (
                int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            assert 0 <= xmin < xmax <= 64 and 0 <= ymin < ymax <= 64


@pytest.mark.parametrize("name", MODELS)
def test_cli_inspect_and_explain_every_sample_model(name, tmp_path, capsys):
    assert main(["inspect", str(SAMPLES / name), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"] is True
    image = _model_images(name)[0]
    assert (
        main(
            [
                "explain",
                str(SAMPLES / name),
                str(image),
                "--method",
                "saliency",
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)[0]
    saliency = np.load(record["files"]["npy"])
    assert saliency.shape == (info["input"]["shape"][2], info["input"]["shape"][3])
    assert saliency.max() > 0 and record["target_label"] is not None
