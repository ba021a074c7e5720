"""Benchmark for docs/input-iba.md: InputIBA's stage times as multiples of one forward pass, and
insertion/deletion/EBPG of cheaper GAN settings next to the paper's, on shapes_cnn's held-out split.
Costs are in CPU time of this process (with OMP_NUM_THREADS=1 they do not depend on what else
runs on a shared machine); the forward pass is timed before and after every explained batch.

    .venv/bin/python bench/input_iba_quality.py [--images 16] [--batch 8] [--configs iba,paper,clip,gan5,gan2,gan0] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

import xplain
from xplain.data.images import Preprocess, load_image
from xplain.plugins.registry import get_registry

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "iba": ("iba", {}),
    "paper": ("input-iba", {}),
    "clip": ("input-iba", {"gan_critic": "clip"}),
    "gan5": ("input-iba", {"gan_epochs": 5}),
    "gan2": ("input-iba", {"gan_epochs": 2}),
    "gan0": ("input-iba", {"gan_epochs": 0}),
    "feature": ("input-iba", {"return": "feature"}),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--configs", default="iba,paper,gan5,gan2,gan0")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    model = xplain.load_model(ROOT / "sample_models/shapes_cnn.onnx", device=args.device)
    names = model.labels or ["circle", "square", "triangle", "cross"]
    pre = Preprocess.from_options((3, 64, 64), sidecar=model.sidecar)
    rows = (
        (ROOT / "sample_models/shapes_eval/manifest.csv")
        .read_text()
        .splitlines()[1 : args.images + 1]
    )
    xs, targets, boxes = [], [], []
    for row in rows:
        path, label, ann = row.split(",")
        xs.append(torch.from_numpy(pre(load_image(ROOT / "sample_models/shapes_eval" / path))[0]))
        targets.append(names.index(label))
        root = ET.parse(ROOT / "sample_models/shapes_eval" / ann).getroot()
        boxes.append(
            [
                [float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
                for o in root.iter("object")
                if o.find("name").text == label
            ]
        )
    x = torch.stack(xs).to(model.device)
    t = torch.tensor(targets, device=model.device)

    def time_forward(batch):
        """CPU seconds per image of one forward pass at this batch size (10 passes)."""
        with torch.no_grad():
            began = time.process_time()
            for _ in range(10):
                model(batch)
            return (time.process_time() - began) / 10 / batch.shape[0]

    time_forward(x[: args.batch])  # warm-up
    # the forward is timed right before and after every explained batch: the machine is shared,
    # so each config's "× forward" divides by forward passes timed during its own run
    registry = get_registry()
    metrics = {m: registry.metric(m) for m in ("insertion", "deletion", "ebpg")}
    out = {"images": len(rows), "configs": {}}
    for name in args.configs.split(","):
        method, params = CONFIGS[name]
        maps, stages, total, cpu, fwd = [], {}, 0.0, 0.0, []
        for s in range(0, len(rows), args.batch):
            fwd.append(time_forward(x[s : s + args.batch]))
            began, began_cpu = time.perf_counter(), time.process_time()
            a = xplain.explain(
                model,
                x[s : s + args.batch],
                targets=t[s : s + args.batch],
                method=method,
                params=params,
                seed=args.seed,
            )
            total += time.perf_counter() - began
            cpu += time.process_time() - began_cpu
            fwd.append(time_forward(x[s : s + args.batch]))
            maps.append(a.maps)
            for k, v in a.info.get("stage_seconds", {}).items():
                stages[k] = stages.get(k, 0.0) + v
        attribution = xplain.Attribution(torch.cat(maps))
        scores = {}
        for mname, metric in metrics.items():
            value = metric.compute(model, x, t, attribution, boxes=boxes)[mname]
            scores[mname] = round(float(torch.nanmean(value.float())), 4)
        per_image = total / len(rows)
        forward = sum(fwd) / len(fwd)
        x_forward = cpu / len(rows) / forward
        share = sum(stages.values()) or 1.0  # stages in wall time: their shares of x_forward
        out["configs"][name] = {
            "s_per_image": round(per_image, 3),
            "cpu_s_per_image": round(cpu / len(rows), 3),
            "forward_cpu_ms": round(forward * 1000, 3),
            "x_forward": round(x_forward),
            "stage_x_forward": {k: round(v / share * x_forward) for k, v in stages.items()},
            **scores,
        }
        print(name, json.dumps(out["configs"][name]), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
