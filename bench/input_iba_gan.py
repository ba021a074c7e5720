"""Diagnostics of InputIBA's GAN stage (docs/input-iba.md, "What the GAN stage learns").

Runs stage 1 and stage 2 of ``input-iba`` on sample images and prints, per epoch, the critic's
Wasserstein estimate on a fixed probe batch (mean D(real) − mean D(fake)), the largest gradient
a generator step sees on the mask logits, how far λ_G has moved from its start, and the
critic-free distance ``marginal_w2`` of the generated features to P(Z*) (0 = matching
per-element means and spreads). Any input-iba parameter can be overridden:

    .venv/bin/python bench/input_iba_gan.py [--images shapes_circle,shapes_triangle] [--every 5] \
        [--param gan_epochs=20 --param gan_init=bits ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import torch

import xplain
from xplain.data.images import Preprocess, load_image
from xplain.plugins.registry import get_registry
from xplain_builtins.methods.iba import iba as _iba
from xplain_builtins.methods.iba import iba_input

ROOT = Path(__file__).resolve().parent.parent


def _value(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


def run(model, x, targets, overrides, seed=0, every=1, quiet=False):
    """Stage 1 + stage 2 with a monitor; returns the per-epoch rows and λ_G."""
    method = get_registry().method("input-iba")
    params = xplain.validate_params(method.params, overrides, "input-iba")
    layer, _ = _iba.resolve_layer(model, params["layer"], "input-iba", spatial=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split, gens, mean, std, active, _, _, capacity, lam, r = _iba.stage_one(
            model, x, targets, params, seed, "input-iba", layer, params["feat_sigma"]
        )
    feat_map = _iba.saliency_bits(
        _iba.spatial(split.feature, capacity), (model.spec.height, model.spec.width)
    )
    sampler = iba_input._target_sampler(r, lam, capacity, mean, std, active, gens, params)
    rows, start = [], {}

    def monitor(epoch, info):
        mask = info["mask"]
        if epoch == 0:
            start["mask"] = mask
        moved = (mask - start["mask"]).abs().flatten(1)
        row = {
            "epoch": epoch,
            "wasserstein": info["wasserstein"].tolist(),
            "w2": info["w2"].tolist(),
            "mask_grad_max": info["mask_grad"].tolist(),
            "moved_max": moved.amax(1).tolist(),
            "moved_mean": moved.mean(1).tolist(),
            "mask_mean": mask.flatten(1).mean(1).tolist(),
            "mask_min": mask.flatten(1).amin(1).tolist(),
            "mask_max": mask.flatten(1).amax(1).tolist(),
        }
        rows.append(row)
        if not quiet and (epoch % every == 0 or epoch == params["gan_epochs"]):
            fmt = lambda v: " ".join(f"{u:9.3g}" for u in v)  # noqa: E731
            print(
                f"epoch {epoch:3d}  W {fmt(row['wasserstein'])}  w2 {fmt(row['w2'])}  |dL/dlogit| "
                f"{fmt(row['mask_grad_max'])}  moved max {fmt(row['moved_max'])}  mean {fmt(row['moved_mean'])}"
                f"  mask mean {fmt(row['mask_mean'])}",
                flush=True,
            )

    prior, counts = iba_input.gan_stage(split, x, feat_map, sampler, gens, params, monitor=monitor)
    return rows, prior, counts, feat_map


def load(names, model):
    pre = Preprocess.from_options(
        (model.spec.channels, model.spec.height, model.spec.width), sidecar=model.sidecar
    )
    xs = [
        torch.from_numpy(pre(load_image(ROOT / "sample_models" / "images" / f"{n}.png"))[0])
        for n in names
    ]
    return torch.stack(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "sample_models" / "shapes_cnn.onnx"))
    ap.add_argument("--images", default="shapes_circle,shapes_triangle")
    ap.add_argument("--targets", default="0,2")
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--save", help="write the start and final λ_G (channel mean) to this .npz")
    args = ap.parse_args()
    model = xplain.load_model(args.model, device="cpu")
    x = load(args.images.split(","), model)
    targets = torch.tensor([int(t) for t in args.targets.split(",")])
    overrides = dict(p.split("=", 1) for p in args.param)
    overrides = {k: _value(v) for k, v in overrides.items()}
    rows, prior, counts, feat = run(model, x, targets, overrides, args.seed, args.every)
    first, last = rows[0], rows[-1]
    print(
        f"{counts}; w2 start {[round(v, 4) for v in first['w2']]} -> end {[round(v, 4) for v in last['w2']]}"
        f" (ratio {[round(b / a, 3) if a > 0 else math.nan for a, b in zip(first['w2'], last['w2'])]})"
    )
    if args.save:
        import numpy as np

        np.savez_compressed(
            args.save,
            start=(1 / (1 + np.exp(-feat.numpy()))),
            end=prior.mean(1).numpy(),
            w2=np.array([first["w2"], last["w2"]]),
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"params": overrides, "counts": counts, "rows": rows})
        )


if __name__ == "__main__":
    main()
