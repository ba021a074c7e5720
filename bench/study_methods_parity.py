"""Parity and speed of the issue-22 gradient/CAM methods against their reference libraries at
224×224: ResNet-50 (random weights, calibrated BatchNorm) and the ImageNet-trained
EfficientNet-Lite0 (ReLU6), on skimage's photos.

Per method: max|ours − reference| / max|reference| with the same inputs, baselines and random
draws (Captum's numpy/torch draws replaced by ours), ours / reference time and ours / the ideal
(the passes the algorithm needs, timed on their own in the same run):

* expected-gradients vs Captum GradientShap (ideal: n_samples forward+backward passes);
* deeplift vs Captum DeepLift (nn.ReLU6 added to Captum's rule table; ideal: a baseline forward
  plus a forward+backward), and the summation-to-delta gap of both, also with maxpool=rescale;
* deeplift-shap vs Captum DeepLiftShap (a 4-member reference set);
* grad-cam-plus-plus and score-cam vs pytorch-grad-cam (its CAM before min-max scaling, upsampled
  as grad-cam; score-cam's ideal: the K masked forwards through Model.infer). ``--score-channels
  K`` runs score-cam at the first feature layer with K channels instead of the default layer
  (2048 channels on ResNet-50: a forward per channel), to keep a CPU run short.

    OMP_NUM_THREADS=1 python bench/study_methods_parity.py [--models resnet50 efficientnet_lite0]
        [--images 1] [--score-channels K] [--json OUT] [--only score-cam] [--engine torch]

Nothing is downloaded (the networks come from xplain's bench models). On a
shared CPU: run single-threaded with the CPU-time clock (the default) and compare only ratios
from one run (the load is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import xplain
from xplain.run.api import run_method
from xplain.run.reference_networks import bench_model_path

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photos(size: int = 224) -> torch.Tensor:
    """skimage's chelsea (cat) and coffee photos, centre-cropped and resized, ImageNet-normalised."""
    import skimage.data
    from PIL import Image

    out = []
    for image in (skimage.data.chelsea(), skimage.data.coffee()):
        h, w = image.shape[:2]
        side = min(h, w)
        crop = image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
        pil = Image.fromarray(crop).resize((size, size), Image.BILINEAR)
        arr = (np.asarray(pil, np.float32) / 255 - MEAN) / STD
        out.append(torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32)))
    return torch.stack(out)


def rel(ours, ref) -> float:
    ours = torch.as_tensor(ours, dtype=torch.float64)
    ref = torch.as_tensor(ref, dtype=torch.float64)
    return float((ours - ref).abs().max() / ref.abs().max())


REPEATS = 2
CLOCK = time.process_time


def timed(fn):
    """(result, the best of REPEATS times): the first call of anything pays one-time costs
    (allocator growth, lazy initialisation) that would otherwise bias whichever runs first.
    The clock is the process's CPU time by default: on a shared CPU the wall time includes
    waiting for a core, while a single-threaded run's CPU time is the work itself."""
    best = float("inf")
    for _ in range(REPEATS):
        start = CLOCK()
        out = fn()
        best = min(best, CLOCK() - start)
    return out, best


def ours(model, name, x, targets, seed=0, **params):
    method = xplain.get_registry().method(name)
    values = xplain.validate_params(method.params, params, name)
    return run_method(model, method, x, targets, values, seed=seed)


def gradient_passes(model, points, targets, per_pass):
    """The ideal of a gradient method: forward+backward of ``points`` in passes of per_pass."""
    for lo in range(0, points.shape[0], per_pass):
        xg = points[lo : lo + per_pass].clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xg)
            torch.autograd.grad(logits.gather(1, targets[lo : lo + per_pass, None]).sum(), xg)


def captum_draws(index, alpha, noise):
    """Captum's GradientShap draws (numpy choice/uniform, torch.normal) replaced by ours."""

    def normal(mean, std):
        return noise.reshape(std.shape) if noise is not None else torch.zeros_like(std)

    return (
        mock.patch("numpy.random.choice", lambda size, k: index.flatten().numpy()),
        mock.patch("numpy.random.uniform", lambda lo, hi, k: alpha.flatten().numpy()),
        mock.patch("torch.normal", normal),
    )


def bench_expected_gradients(model, x, targets, refs_path, refs, n=4, stdevs=0.1):
    from captum.attr import GradientShap

    from xplain_builtins.methods.expected_gradients import expected_gradients_draws

    got, t_ours = timed(
        lambda: (
            ours(
                model,
                "expected-gradients",
                x,
                targets,
                seed=3,
                baselines=refs_path,
                n_samples=n,
                stdevs=stdevs,
            ).maps
        )
    )
    index, alpha, noise = expected_gradients_draws(x, 3, n, stdevs, refs.shape[0])
    patches = captum_draws(index, alpha, noise)
    with patches[0], patches[1], patches[2]:
        ref, t_ref = timed(
            lambda: (
                GradientShap(model.graph)
                .attribute(x, baselines=refs, n_samples=n, stdevs=stdevs, target=targets)
                .sum(dim=1)
                .detach()
            )
        )
    points = x.repeat_interleave(n, dim=0)
    per_pass = xplain.images_per_pass(model)
    _, t_ideal = timed(
        lambda: gradient_passes(model, points, targets.repeat_interleave(n), per_pass)
    )
    return {
        "rel_diff": rel(got, ref),
        "ours_s": t_ours,
        "ref_s": t_ref,
        "ideal_s": t_ideal,
        "ideal": f"{n * x.shape[0]} forward+backward",
    }


def captum_deeplift(model, x, targets, baselines, cls="DeepLift", delta=False):
    import captum.attr as ca
    import captum.attr._core.deep_lift as cdl

    with mock.patch.dict(cdl.SUPPORTED_NON_LINEAR, {nn.ReLU6: cdl.nonlinear}):
        return getattr(ca, cls)(model.graph).attribute(
            x, baselines=baselines, target=targets, return_convergence_delta=delta
        )


def bench_deeplift(model, x, targets):
    zeros = torch.zeros_like(x)
    got, t_ours = timed(lambda: ours(model, "deeplift", x, targets))
    (ref, ref_delta), t_ref = timed(lambda: captum_deeplift(model, x, targets, zeros, delta=True))

    def ideal():
        with torch.no_grad():
            model(zeros)
        gradient_passes(model, x, targets, x.shape[0])

    _, t_ideal = timed(ideal)
    rescale = ours(model, "deeplift", x, targets, maxpool="rescale")
    gap = lambda info: max(abs(i["attribution_sum"] - i["delta"]) for i in info)  # noqa: E731
    return {
        "rel_diff": rel(got.maps, ref.sum(dim=1).detach()),
        "ours_s": t_ours,
        "ref_s": t_ref,
        "ideal_s": t_ideal,
        "ideal": "baseline forward + forward+backward",
        "sum_gap_ours": gap(got.sample_info),
        "sum_gap_ours_maxpool_rescale": gap(rescale.sample_info),
        "sum_gap_captum": float(ref_delta.abs().max()),
        "delta": [i["delta"] for i in got.sample_info],
    }


def bench_deeplift_shap(model, x, targets, refs_path, refs):
    got, t_ours = timed(lambda: ours(model, "deeplift-shap", x, targets, baselines=refs_path).maps)
    ref, t_ref = timed(
        lambda: captum_deeplift(model, x, targets, refs, "DeepLiftShap").sum(dim=1).detach()
    )
    return {"rel_diff": rel(got, ref), "ours_s": t_ours, "ref_s": t_ref}


def grad_cam_reference(cls, model, layer_name, x, targets, reshape=None):
    """pytorch-grad-cam: (its CAM before min-max scaling, upsampled as grad-cam), and the time of
    its own full call (which also scales and resizes with OpenCV)."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = model.graph.get_submodule(str(model.node(layer_name).target))
    goals = [ClassifierOutputTarget(int(t)) for t in targets]
    with (
        getattr(pgc, cls)(model.graph, [module], reshape_transform=reshape) as cam,
        mock.patch("tqdm.tqdm", lambda it, **kw: it),
    ):
        x_in = x.clone().requires_grad_(cam.uses_gradients)
        _, t_call = timed(lambda: cam(x_in, goals))
        outputs = cam.activations_and_grads(x_in)
        if cam.uses_gradients:
            sum(g(o) for g, o in zip(goals, outputs)).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
        low = np.maximum(cam.get_cam_image(x_in, module, goals, acts, grads), 0)
    size = (model.spec.height, model.spec.width)
    return F.interpolate(torch.from_numpy(low)[:, None], size=size, mode="bilinear")[:, 0], t_call


def bench_cam(model, x, targets, name, cls, layer=""):
    params = {"layer": layer} if layer else {}
    got, t_ours = timed(lambda: ours(model, name, x, targets, **params))
    layer_name = got.info["layer"]
    ref, t_ref = grad_cam_reference(cls, model, layer_name, x, targets)
    row = {
        "rel_diff": rel(got.maps, ref),
        "ours_s": t_ours,
        "ref_s": t_ref,
        "layer": layer_name,
        "layer_shape": got.info["layer_shape"],
    }
    if name == "score-cam":
        k = got.info["layer_shape"][0]
        per_pass = xplain.images_per_forward_pass(model)
        masked = x.repeat_interleave(k, dim=0)

        def ideal():
            model(x)  # the activations
            for lo in range(0, masked.shape[0], per_pass):
                model.infer(masked[lo : lo + per_pass])

        _, row["ideal_s"] = timed(ideal)
        row["ideal"] = f"{x.shape[0]} + {masked.shape[0]} forwards (Model.infer)"
        # the sizing before images_per_forward_pass: passes as if a backward followed
        old = xplain.images_per_pass(model)
        _, row["ours_backward_sizing_s"] = timed(
            lambda: ours(model, name, x, targets, batch=old, **params)
        )
        row["per_pass"] = {"forward": per_pass, "backward_sizing": old}
    return row


def run(
    name: str, images: int = 1, score_channels: int = 64, only=(), engine: str = "auto"
) -> dict:
    model = xplain.load_model(bench_model_path(name), device="cpu", engine=engine)
    x = photos()[:images]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    gradient_passes(model, x, targets, x.shape[0])  # warm-up
    refs = 0.5 * torch.randn(4, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    folder = tempfile.mkdtemp(prefix="xplain-parity-")
    refs_path = os.path.join(folder, "refs.npy")
    np.save(refs_path, refs.numpy())
    rows: dict = {}
    jobs = [
        (
            "expected-gradients",
            lambda: bench_expected_gradients(model, x, targets, refs_path, refs),
        ),
        ("deeplift", lambda: bench_deeplift(model, x, targets)),
        ("deeplift-shap", lambda: bench_deeplift_shap(model, x, targets, refs_path, refs)),
        (
            "grad-cam-plus-plus",
            lambda: bench_cam(model, x, targets, "grad-cam-plus-plus", "GradCAMPlusPlus"),
        ),
    ]
    layer = (
        ""  # score-cam costs a forward per channel: a layer with few, so the CPU run stays short
    )
    if score_channels:
        layer = next(f.name for f in model.feature_layers() if f.spatial_shape[0] == score_channels)
    jobs.append(
        ("score-cam", lambda: bench_cam(model, x[:1], targets[:1], "score-cam", "ScoreCAM", layer))
    )
    for method, job in jobs:
        if only and method not in only:
            continue
        rows[method] = job()
        print(f"  {method}: {rows[method]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["resnet50", "efficientnet_lite0"])
    parser.add_argument("--json", default="")
    parser.add_argument("--images", type=int, default=1, help="photos per batch (1 or 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timings: the best of N runs")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: process CPU time (use with OMP_NUM_THREADS=1 on a shared machine); wall",
    )
    parser.add_argument(
        "--score-channels",
        type=int,
        default=0,
        help="run score-cam at the first feature layer with this many channels (0: the default "
        "layer, 2048 channels on ResNet-50, 1280 on Lite0)",
    )
    parser.add_argument("--only", nargs="*", default=[], help="run only these methods")
    parser.add_argument(
        "--engine",
        default="auto",
        choices=("auto", "torch", "onnxruntime"),
        help="the forward engine of Model.infer (score-cam's masked forwards); torch: the same "
        "eager forwards as the reference",
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    global REPEATS, CLOCK
    REPEATS = max(1, args.repeats)
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    report = {
        "load_before": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "models": {},
    }
    for name in args.models:
        report["models"][name] = rows = run(
            name, args.images, args.score_channels, args.only, args.engine
        )
        print(f"## {name}")
        for method, row in rows.items():
            ratios = f"ours/ref {row['ours_s'] / row['ref_s']:.2f}"
            if "ours_backward_sizing_s" in row:
                ratios += (
                    f", backward-sized passes {row['ours_backward_sizing_s'] / row['ref_s']:.2f}"
                    f" of ref ({row['per_pass']})"
                )
            if "ideal_s" in row:
                ratios += f", ours/ideal {row['ours_s'] / row['ideal_s']:.2f} ({row['ideal']})"
            print(
                f"{method:20s} rel diff {row['rel_diff']:.2e}  {ratios}  "
                f"[{row['ours_s']:.2f}s vs {row['ref_s']:.2f}s]"
            )
        if "deeplift" not in rows:
            continue
        dl = rows["deeplift"]
        print(
            f"deeplift Σmap − Δf: ours {dl['sum_gap_ours']:.2e}, ours maxpool=rescale "
            f"{dl['sum_gap_ours_maxpool_rescale']:.2e}, Captum {dl['sum_gap_captum']:.2e} "
            f"(Δf {', '.join(f'{d:.3g}' for d in dl['delta'])})"
        )
    report["load_after"] = os.getloadavg()
    print(f"load average before/after: {report['load_before']} / {report['load_after']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
