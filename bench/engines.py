"""The forward engines (issue 21) on full-size networks: torch vs onnxruntime, and against the peers.

    python bench/engines.py [--models efficientnet_lite0,resnet50] [--threads 1,2]
                            [--parts forward,deletion,occlusion,rss,eval-rss] [--out DIR]

For each network (224×224: the pretrained EfficientNet-Lite0 of the ``bench`` extra, torchvision's
ResNet-50 with random weights — both built by ``xplain bench``'s exporter, nothing downloaded) and
each thread count (``torch.set_num_threads``, which also sets onnxruntime's intra-op threads):

- ``forward``: ms per image of one forward pass, batch 8, eager torch vs onnxruntime
  (``Model.infer``), interleaved rounds; and how far apart the logits are.
- ``deletion``: our ``deletion`` (1,792 px per step, zeros) on onnxruntime and on torch against
  Quantus 0.6 ``PixelFlipping(features_in_step=1792, perturb_baseline=0)`` on the same maps: ms
  per forwarded image, seconds per curve, and the values (every third Quantus point is ours).
- ``occlusion``: our ``occlusion`` (patch 56, stride 28) on both engines against Captum's
  ``Occlusion`` with the same windows and images per pass: seconds per image, and the values.
- ``rss``: resident memory over 600 ``Model.infer`` batches on Lite0 (alternating full passes of
  the memory budget's size and a remainder), per onnxruntime arena setting.
- ``eval-rss``: RSS of ``xplain.evaluate`` (engine auto) over 5,000 small images with deletion.

Timings on a shared machine are noisy: every ratio compares numbers measured in the same
interleaved rounds, the load average is printed with each table, and the default clock is the
process's CPU time (``--clock wall`` for elapsed time; with 2 threads CPU time sums both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import xplain
from xplain.onnx.engine import OnnxRuntimeEngine, describe
from xplain.run.reference_networks import bench_model_path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from eval_throughput import _maps, _run_metric, images  # noqa: E402

H = W = 224
STEP = 8 * W  # deletion: 1,792 pixels per step, 28 steps + the clean point


def log(*args) -> None:
    print(*args, flush=True)


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


#: wall (elapsed) or cpu (this process's CPU time, all threads: robust on a loaded machine)
CLOCK = {"clock": time.process_time}


def timed(fn) -> float:
    now = CLOCK["clock"]
    start = now()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return now() - start


def rel(a, b) -> float:
    a, b = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for v in (a, b))
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def part_forward(ort_model, torch_model, rounds: int, batch: int = 8) -> dict:
    x = ort_model.example_input(batch, seed=0)
    fns = {"torch": lambda: torch_model.infer(x), "onnxruntime": lambda: ort_model.infer(x)}
    for fn in fns.values():
        fn()  # warm-up (onnxruntime builds its session here)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    ms = {k: 1000 * statistics.median(v) / batch for k, v in times.items()}
    row = {
        "torch_ms_per_image": ms["torch"],
        "onnxruntime_ms_per_image": ms["onnxruntime"],
        "ratio_ort_to_torch": ms["onnxruntime"] / ms["torch"],
        "logits_max_rel_diff": rel(ort_model.infer(x), torch_model.infer(x)),
        "batch": batch,
        "rounds": rounds,
        "load": load(),
    }
    log(
        f"  forward: torch {ms['torch']:.1f} ms/image, onnxruntime {ms['onnxruntime']:.1f} "
        f"ms/image ({row['ratio_ort_to_torch']:.2f}x); logits rel diff "
        f"{row['logits_max_rel_diff']:.1e}; {row['load']}"
    )
    return row


def _inputs(model, b: int):
    x = model.example_input(b, seed=1)
    with torch.no_grad():
        t = model(x).argmax(1)
    return x, t, _maps(model, x, t)


def part_deletion(ort_model, torch_model, b: int = 2) -> dict:
    import quantus

    x, t, maps = _inputs(torch_model, b)
    params = {"step": str(STEP)}
    steps = H * W // STEP + 1  # forwards per image, ours
    X, Y, A = x.cpu().numpy(), t.cpu().numpy(), maps[:, None].cpu().numpy()
    device = str(x.device)
    pf = quantus.PixelFlipping(features_in_step=STEP, perturb_baseline=0.0, disable_warnings=True)

    def quantus_curve():
        return np.array(pf(model=torch_model.graph, x_batch=X, y_batch=Y, a_batch=A, device=device))

    results: dict = {}
    fns = {
        "ours_onnxruntime": lambda: results.__setitem__(
            "ort", _run_metric("deletion", ort_model, x, t, maps, params)
        ),
        "ours_torch": lambda: results.__setitem__(
            "torch", _run_metric("deletion", torch_model, x, t, maps, params)
        ),
        "quantus": lambda: results.__setitem__("quantus", quantus_curve()),
    }
    fns["ours_onnxruntime"]()  # warm-up
    secs = {k: timed(fn) for k, fn in fns.items()}  # one interleaved round
    q = results["quantus"]
    q_forwards = q.shape[-1] + 1  # its curve has one point per step; +1: the unperturbed pass
    ours = {k: results[k]["deletion-curve"].cpu().numpy() for k in ("ort", "torch")}
    row = {
        "ours_onnxruntime_ms_per_forward": 1000 * secs["ours_onnxruntime"] / (b * steps),
        "ours_torch_ms_per_forward": 1000 * secs["ours_torch"] / (b * steps),
        "quantus_ms_per_forward": 1000 * secs["quantus"] / (b * q_forwards),
        "ours_onnxruntime_s_per_curve": secs["ours_onnxruntime"] / b,
        "ours_torch_s_per_curve": secs["ours_torch"] / b,
        "quantus_s_per_curve": secs["quantus"] / b,
        "ort_vs_torch_max_rel_diff": rel(ours["ort"], ours["torch"]),
        "ort_vs_quantus_max_abs_diff": float(np.abs(ours["ort"][:, 1:] - q[:, 2::3]).max())
        if q[:, 2::3].shape == ours["ort"][:, 1:].shape
        else None,
        "load": load(),
    }
    row["ratio_per_forward_ort_to_quantus"] = (
        row["ours_onnxruntime_ms_per_forward"] / row["quantus_ms_per_forward"]
    )
    row["ratio_per_curve_ort_to_quantus"] = (
        row["ours_onnxruntime_s_per_curve"] / row["quantus_s_per_curve"]
    )
    log(
        "  deletion vs PixelFlipping, ms per forwarded image: ours/ort "
        f"{row['ours_onnxruntime_ms_per_forward']:.1f}, ours/torch {row['ours_torch_ms_per_forward']:.1f}, "
        f"Quantus {row['quantus_ms_per_forward']:.1f} (ours/Quantus "
        f"{row['ratio_per_forward_ort_to_quantus']:.2f}; per curve "
        f"{row['ratio_per_curve_ort_to_quantus']:.2f}); ort vs torch rel "
        f"{row['ort_vs_torch_max_rel_diff']:.1e}, vs Quantus abs {row['ort_vs_quantus_max_abs_diff']}; "
        f"{row['load']}"
    )
    return row


def part_occlusion(
    ort_model, torch_model, b: int = 2, patch: int = 56, stride: int = 28, rounds: int = 2
) -> dict:
    from captum.attr import Occlusion

    x, t, _ = _inputs(torch_model, b)
    params = {"patch": patch, "stride": stride}
    per_pass = xplain.images_per_forward_pass(torch_model, 0, 0.0)  # ours: forward-only passes
    occ = Occlusion(torch_model.graph)
    results: dict = {}

    def captum():
        with torch.no_grad():
            results["captum"] = occ.attribute(
                x,
                sliding_window_shapes=(3, patch, patch),
                strides=(3, stride, stride),
                baselines=0.0,
                target=t,
                perturbations_per_eval=max(1, per_pass // b),
            )[:, 0]

    fns = {
        "ours_onnxruntime": lambda: results.__setitem__(
            "ort", xplain.explain(ort_model, x, t, "occlusion", params).maps
        ),
        "ours_torch": lambda: results.__setitem__(
            "torch", xplain.explain(torch_model, x, t, "occlusion", params).maps
        ),
        "captum": captum,
    }
    fns["ours_onnxruntime"]()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):  # interleaved; the fastest of each
        for k, fn in fns.items():
            times[k].append(timed(fn))
    secs = {k: min(v) / b for k, v in times.items()}
    row = {
        "rounds": rounds,
        "ours_onnxruntime_s_per_image": secs["ours_onnxruntime"],
        "ours_torch_s_per_image": secs["ours_torch"],
        "captum_s_per_image": secs["captum"],
        "ratio_ort_to_captum": secs["ours_onnxruntime"] / secs["captum"],
        "ratio_torch_to_captum": secs["ours_torch"] / secs["captum"],
        "ort_vs_torch_max_rel_diff": rel(results["ort"], results["torch"]),
        "ort_vs_captum_max_rel_diff": rel(results["ort"], results["captum"]),
        "load": load(),
    }
    log(
        f"  occlusion vs Captum, s/image: ours/ort {secs['ours_onnxruntime']:.2f}, ours/torch "
        f"{secs['ours_torch']:.2f}, Captum {secs['captum']:.2f} (ours/Captum "
        f"{row['ratio_ort_to_captum']:.2f}); ort vs torch rel {row['ort_vs_torch_max_rel_diff']:.1e}, "
        f"vs Captum rel {row['ort_vs_captum_max_rel_diff']:.1e}; {row['load']}"
    )
    return row


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def part_rss(model, batches: int = 600) -> dict:
    """RSS over ``batches`` onnxruntime passes per arena setting: full passes of the memory
    budget's size alternating with a remainder of 1 image (the shapes forward-only work feeds)."""
    per_pass = min(8, xplain.images_per_pass(model, 0, 0.0))
    full, rest = model.example_input(per_pass, seed=2), model.example_input(1, seed=3)
    rows = {}
    for arena in ("on", "off"):
        engine = OnnxRuntimeEngine(
            model.engine.graph, torch.device("cpu"), torch.get_num_threads(), arena
        )
        samples = []
        start = time.perf_counter()
        for i in range(batches):
            engine.run(model, full if i % 2 == 0 else rest)
            if i % 50 == 0 or i == batches - 1:
                samples.append((i, round(rss_mb(), 1)))
        seconds = time.perf_counter() - start
        after = [m for i, m in samples if i >= 100]
        rows[arena] = {
            "rss_mb": samples,
            "growth_mb_after_100": after[-1] - after[0],
            "ms_per_image": 1000 * seconds / (batches // 2 * (per_pass + 1)),
        }
        log(
            f"  rss, arena {arena}: {samples[0][1]:.0f} -> {samples[-1][1]:.0f} MB over {batches} "
            f"batches of {per_pass}/1 (growth after 100: {rows[arena]['growth_mb_after_100']:.1f} MB), "
            f"{rows[arena]['ms_per_image']:.1f} ms/image; {load()}"
        )
        del engine
    return {"per_pass": per_pass, "batches": batches, "arenas": rows}


def part_eval_rss(out: Path, n: int = 5000) -> dict:
    from xplain.data.images import Preprocess

    sys.path.insert(0, str(ROOT))
    from tests.imagenet_style import tiny_imagenet_model

    folder = images(out / "rss-images", n, size=(64, 48))
    model_path = out / "tiny1k.onnx"
    if not model_path.exists():
        tiny_imagenet_model(model_path)
    model = xplain.load_model(model_path, "cpu", engine="auto")
    samples: list[tuple[int, float]] = []

    def progress(done, total):
        if not samples or done - samples[-1][0] >= 500 or done == total:
            samples.append((done, round(rss_mb(), 1)))

    start = time.perf_counter()
    xplain.evaluate(
        model,
        folder,
        methods=["random"],
        metrics=["deletion"],
        metric_params={"deletion": {"step": "32"}},
        out_dir=out / "rss-run",
        batch_size=32,
        resume=False,
        preprocess=Preprocess.from_options((3, 16, 16), preset="unit"),
        plots=False,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    after = [m for d, m in samples if d >= 1000]
    row = {
        "images": n,
        "rss_mb": samples,
        "growth_mb_after_1000": after[-1] - after[0],
        "images_per_second": n / seconds,
        "engine": describe(model),
    }
    log(
        f"  eval RSS over {n} images: "
        + ", ".join(f"{d}: {m:.0f}" for d, m in samples)
        + f"; growth after 1,000: {row['growth_mb_after_1000']:.1f} MB; forwards "
        f"{row['engine'].get('forwards')}; {load()}"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="efficientnet_lite0,resnet50")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--parts", default="forward,deletion,occlusion,rss,eval-rss")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (rss parts: cpu only)")
    a = ap.parse_args()
    CLOCK["clock"] = time.process_time if a.clock == "cpu" else time.perf_counter
    out = a.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="xplain-engines-"))
    out.mkdir(parents=True, exist_ok=True)
    parts = {p.strip() for p in a.parts.split(",") if p.strip()}
    warnings.filterwarnings("ignore")
    report: dict = {
        "torch": torch.__version__,
        "cpus": len(os.sched_getaffinity(0)),
        "clock": a.clock,
        "runs": {},
    }
    import onnxruntime

    report["onnxruntime"] = onnxruntime.__version__
    for name in [m for m in a.models.split(",") if m]:
        path = bench_model_path(name)
        ort_model = xplain.load_model(path, a.device, engine="onnxruntime")
        torch_model = xplain.load_model(path, a.device, engine="torch")
        for threads in [int(t) for t in a.threads.split(",") if t]:
            torch.set_num_threads(threads)
            log(f"== {name}, {threads} thread(s); {load()}")
            run: dict = {}
            if "forward" in parts:
                run["forward"] = part_forward(ort_model, torch_model, a.rounds)
            if "deletion" in parts:
                run["deletion"] = part_deletion(ort_model, torch_model)
            if "occlusion" in parts:
                run["occlusion"] = part_occlusion(ort_model, torch_model)
            run["engine"] = describe(ort_model)
            report["runs"][f"{name}/{threads}"] = run
            (out / "engines.json").write_text(json.dumps(report, indent=2, default=str))
        if "rss" in parts and name == "efficientnet_lite0" and a.device == "cpu":
            log(f"== {name}: onnxruntime RSS per arena setting")
            report["rss"] = part_rss(ort_model)
    if "eval-rss" in parts and a.device == "cpu":
        report["eval_rss"] = part_eval_rss(out)
    (out / "engines.json").write_text(json.dumps(report, indent=2, default=str))
    log(f"wrote {out / 'engines.json'}")


if __name__ == "__main__":
    main()
