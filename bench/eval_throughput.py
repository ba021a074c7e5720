"""Throughput of ``xplain eval`` at ImageNet size, and its perturbation metrics against Quantus.

    python bench/eval_throughput.py [--device cpu|cuda] [--model efficientnet_b0|efficientnet_lite0]
                                    [--out DIR]
                                    [--parts pipeline,forward,metrics,quantus,defaults,eval,rss]

Parts (each prints a table and adds to ``OUT/eval_throughput.json``):

- ``pipeline``: decoding + preprocessing (Pillow, 500x375 JPEG -> 224x224) in images/s with no
  pool, 1 and 2 threads, 2 processes: the measurement behind ``--workers``' default kind.
- ``forward``: ms per image of one forward pass at batch sizes 1..64 (the memory effect).
- ``metrics``: deletion, insertion, pixel-perturbation and sensitivity-n in ms per image-step and
  as a ratio to one forward pass (batch 1, measured in the same rounds).
- ``quantus``: Quantus 0.6 PixelFlipping and RegionPerturbation on the same model, images and maps
  (ms per image-step, and the agreement of the values), and PointingGame against bbox-accuracy
  on one-pixel boxes, where the two definitions coincide.
- ``defaults``: the ratio at Quantus' defaults (PixelFlipping: one pixel per step, i.e. one forward
  per pixel) on the 28x28 digits model, where a whole curve is affordable.
- ``eval``: images/s of ``xplain eval`` (saliency, grad-cam x deletion, insertion, ebpg,
  bbox-accuracy) on a generated ImageNet-style folder: 1 process, 2 shards at once, Ray with 2
  workers.
- ``rss``: resident memory of ``xplain.evaluate`` over 5,000 images (must stay flat).

The model is torchvision's architecture with random weights (seeded), exported to ONNX once into
OUT (no download). Timings on a shared machine are noisy: compare the ratios of each table, whose
numbers are measured in interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import xplain

ROOT = Path(__file__).resolve().parent.parent
H = W = 224


def log(*args) -> None:
    print(*args, flush=True)


def export(name: str, out: Path) -> Path:
    import torchvision

    if name == "efficientnet_lite0":  # pretrained, built and cached by `xplain bench` itself
        from xplain.run.reference_networks import bench_model_path

        return bench_model_path(name)
    path = out / f"{name}.onnx"
    if path.exists():
        return path
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(1, 3, H, W),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}},
        )
    return path


def images(
    folder: Path, n: int, size=(500, 375), seed: int = 0, classes=4, boxes: Path | None = None
) -> Path:
    """``n`` smooth random JPEGs (JPEG-realistic sizes) in WordNet-id class folders, VOC boxes."""
    from PIL import Image

    from xplain.data.datasets import imagenet_wnids

    rng = np.random.default_rng(seed)
    wnids = imagenet_wnids()[:classes]
    done = sum(1 for _ in folder.rglob("*.JPEG")) if folder.exists() else 0
    if done >= n:
        return folder
    for k in range(n):
        wnid = wnids[k % classes]
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        stem = f"ILSVRC2012_val_{k + 1:08d}"
        low = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize(size, Image.BICUBIC)
        img.save(folder / wnid / f"{stem}.JPEG", quality=90)
        if boxes is not None:
            boxes.mkdir(parents=True, exist_ok=True)
            w, h = size
            (boxes / f"{stem}.xml").write_text(
                f"<annotation><object><name>{wnid}</name><bndbox><xmin>{w // 4}</xmin><ymin>{h // 4}</ymin>"
                f"<xmax>{3 * w // 4}</xmax><ymax>{3 * h // 4}</ymax></bndbox></object></annotation>"
            )
    return folder


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- parts
def part_pipeline(out: Path, n: int = 48) -> dict:
    from xplain.data.datasets import read_dataset
    from xplain.data.images import Preprocess
    from xplain.data.pipeline import prefetch

    folder = images(out / "pipeline", n)
    samples = read_dataset(folder)
    pre = Preprocess.from_options((3, H, W), preset="imagenet")
    batches = [list(enumerate(samples))[k : k + 16] for k in range(0, len(samples), 16)]
    rows = {}
    for label, workers, kind in [
        ("no pool", 0, "thread"),
        ("1 thread", 1, "thread"),
        ("2 threads", 2, "thread"),
        ("2 processes", 2, "process"),
    ]:

        def run():
            for _ in prefetch(batches, pre, workers=workers, kind=kind):
                pass

        run()  # warm (process start-up is then paid in every run below: it is part of the cost)
        rows[label] = n / timed(run, 3)
    log("\npipeline (decode+preprocess 500x375 JPEG -> 224x224), images/s")
    for k, v in rows.items():
        log(f"  {k:12s} {v:8.1f}")
    return {"images_per_second": rows, "images": n}


def part_forward(model, device) -> dict:
    x = torch.randn(64, 3, H, W, device=device)
    rows = {}
    with torch.no_grad():
        for bs in (1, 2, 4, 8, 16, 32, 64):
            model(x[:bs])
            sync(device)
            rows[bs] = 1000 * timed(lambda: (model(x[:bs]), sync(device)), 3) / bs
    log("\nforward ms/image by batch size: " + ", ".join(f"{b}: {v:.1f}" for b, v in rows.items()))
    return {"ms_per_image": rows}


def _metric(name):
    return xplain.get_registry().metric(name)


def _run_metric(name, model, x, t, maps, params, context=None):
    metric = _metric(name)
    p = xplain.validate_params(metric.params, params, name)
    with torch.no_grad():
        return metric.compute(
            model, x, t, xplain.Attribution(maps), params=p, seed=0, cache={}, **(context or {})
        )


def _maps(model, x, t):
    xx = x.clone().requires_grad_(True)
    out = model(xx).gather(1, t[:, None]).sum()
    (g,) = torch.autograd.grad(out, xx)
    m = g.abs().amax(1).detach()
    return m + 1e-7 * m.flatten(1).amax(1).view(-1, 1, 1) * torch.rand(
        m.shape, generator=torch.Generator().manual_seed(0)
    ).to(m.device)  # untie: Quantus sorts unstably


def part_metrics(model, device, b: int = 2) -> dict:
    torch.manual_seed(0)
    x = torch.randn(b, 3, H, W, device=device)
    with torch.no_grad():
        t = model(x).argmax(1)
    maps = _maps(model, x, t)
    step = W * 8
    cases = {  # metric -> (params, forwards per image)
        "deletion": ({"step": str(step)}, -(-H * W // step) + 1),
        "insertion": ({"step": str(step)}, -(-H * W // step) + 1),
        "pixel-perturbation": ({"steps": "16"}, 2 * 17),
        "sensitivity-n": ({"num_n": "4", "subsets": "8"}, 4 * 8 + 1),
    }
    rows = {}
    for name, (params, steps) in cases.items():
        fwd, ours = [], []
        for _ in range(2):  # interleaved rounds
            with torch.no_grad():
                fwd.append(timed(lambda: (model(x[:1]), sync(device)), 3))
            ours.append(
                timed(lambda: (_run_metric(name, model, x, t, maps, params), sync(device)), 1)
                / (b * steps)
            )
        f, o = statistics.median(fwd), statistics.median(ours)
        rows[name] = {
            "ms_per_image_step": 1000 * o,
            "forward_ms": 1000 * f,
            "ratio_to_forward": o / f,
            "image_steps": b * steps,
        }
    log("\nperturbation metrics, ms per image-step and x one forward (batch 1) in the same rounds")
    for k, r in rows.items():
        log(
            f"  {k:20s} {r['ms_per_image_step']:7.1f} ms  forward {r['forward_ms']:6.1f} ms  "
            f"ratio {r['ratio_to_forward']:.2f}"
        )
    return rows


def part_quantus(model, device, b: int = 2) -> dict:
    import quantus

    q = {"disable_warnings": True}
    torch.manual_seed(1)
    x = torch.randn(b, 3, H, W, device=device)
    with torch.no_grad():
        t = model(x).argmax(1)
    maps = _maps(model, x, t)
    X, Y, A = x.cpu().numpy(), t.cpu().numpy(), maps[:, None].cpu().numpy()
    step = W * 8
    n_steps = H * W // step
    rows = {}
    # deletion (zeros, `step` pixels per step) vs PixelFlipping(features_in_step=step, baseline 0).
    # Quantus spreads the 1-channel map over the 3 channels and flips `step` channel values per
    # step, so it takes 3 steps (3 forwards) for each of ours; every third of its points is ours
    # (a pixel's three equal values sort next to each other on an untied map).
    ours_t = timed(lambda: _run_metric("deletion", model, x, t, maps, {"step": str(step)}), 1)
    r = _run_metric("deletion", model, x, t, maps, {"step": str(step)})
    pf = quantus.PixelFlipping(features_in_step=step, perturb_baseline=0.0, **q)
    theirs_t = timed(
        lambda: pf(model=model.graph, x_batch=X, y_batch=Y, a_batch=A, device=str(device)), 1
    )
    pf_curve = np.array(pf(model=model.graph, x_batch=X, y_batch=Y, a_batch=A, device=str(device)))
    ours_curve = r["deletion-curve"].cpu().numpy()[:, 1:]
    same = pf_curve[:, 2::3]
    rows["deletion vs PixelFlipping"] = {
        "ours_ms_per_image_step": 1000 * ours_t / (b * (n_steps + 1)),
        "quantus_ms_per_image_step": 1000 * theirs_t / (b * pf_curve.shape[-1]),
        "ours_seconds_per_curve": ours_t / b,
        "quantus_seconds_per_curve": theirs_t / b,
        "max_abs_difference": float(np.abs(ours_curve - same).max())
        if same.shape == ours_curve.shape
        else None,
    }
    # pixel-perturbation MoRF (16x16 tiles, one tile per step: 196 steps) vs RegionPerturbation
    tile, regions = 16, 32
    tiles = (H // tile) * (W // tile)
    params = {"tile": str(tile), "steps": str(tiles)}
    rp = quantus.RegionPerturbation(
        patch_size=tile, order="morf", regions_evaluation=regions, perturb_baseline=0.0, **q
    )
    theirs_t = timed(
        lambda: rp(model=model.graph, x_batch=X, y_batch=Y, a_batch=A, device=str(device)), 1
    )
    rq = np.array(rp(model=model.graph, x_batch=X, y_batch=Y, a_batch=A, device=str(device)))
    ours_t = timed(lambda: _run_metric("pixel-perturbation", model, x, t, maps, params), 1)
    r = _run_metric("pixel-perturbation", model, x, t, maps, params)
    morf = r["morf-curve"].cpu().numpy()
    diff = (
        float(np.abs((morf[:, :1] - morf[:, 1 : regions + 1]) - rq).max())
        if rq.shape == (b, regions)
        else None
    )
    rows["pixel-perturbation vs RegionPerturbation"] = {
        "ours_ms_per_image_step": 1000 * ours_t / (b * 2 * (tiles + 1)),
        "quantus_ms_per_image_step": 1000 * theirs_t / (b * regions),
        "max_abs_difference": diff,
        "note": f"ours: MoRF and LeRF over all {tiles} tiles; Quantus: MoRF over the first {regions}",
    }
    # bbox-accuracy on one-pixel boxes == PointingGame
    flat = maps.flatten(1)
    where = [int(flat[0].argmax()), int(flat[1].argmin())]
    boxes = [
        torch.tensor([[p % W, p // W, p % W + 1, p // W + 1]], dtype=torch.float32) for p in where
    ]
    ours = _run_metric(
        "bbox-accuracy", model, x, t, maps, {}, {"boxes": boxes, "box_labels": [None] * b}
    )
    mask = np.zeros((b, 1, H, W), np.uint8)
    for i, p in enumerate(where):
        mask[i, 0, p // W, p % W] = 1
    pg = np.array(
        quantus.PointingGame(**q)(model=None, x_batch=X, y_batch=Y, a_batch=A, s_batch=mask), float
    )
    rows["bbox-accuracy (1-pixel boxes) vs PointingGame"] = {
        "ours": ours["bbox-accuracy"].cpu().tolist(),
        "quantus": pg.tolist(),
        "max_abs_difference": float(np.abs(ours["bbox-accuracy"].cpu().numpy() - pg).max()),
    }
    log("\nagainst Quantus (same model, images, maps)")
    for k, r in rows.items():
        log(
            f"  {k}: "
            + ", ".join(
                f"{a}={v:.4g}" if isinstance(v, float) else f"{a}={v}" for a, v in r.items()
            )
        )
    return rows


def part_defaults(device) -> dict:
    """Quantus' defaults: PixelFlipping(features_in_step=1) = one forward per pixel, on digits."""
    import quantus

    model = xplain.load_model(ROOT / "sample_models" / "digits_cnn.onnx", device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 28, 28, generator=g).to(device)
    with torch.no_grad():
        t = model(x).argmax(1)
    maps = _maps(model, x, t)
    X, Y, A = x.cpu().numpy(), t.cpu().numpy(), maps[:, None].cpu().numpy()
    pf = quantus.PixelFlipping(perturb_baseline=0.0, disable_warnings=True)  # features_in_step=1
    theirs = timed(
        lambda: pf(model=model.graph, x_batch=X, y_batch=Y, a_batch=A, device=str(device)), 1
    )
    curve = np.array(pf(model=model.graph, x_batch=X, y_batch=Y, a_batch=A, device=str(device)))
    ours = timed(lambda: _run_metric("deletion", model, x, t, maps, {"step": "1"}), 1)
    r = _run_metric("deletion", model, x, t, maps, {"step": "1"})
    diff = float(np.abs(r["deletion-curve"].cpu().numpy()[:, 1:] - curve).max())
    row = {
        "image_steps": 4 * 784,
        "ours_seconds": ours,
        "quantus_seconds": theirs,
        "ours_over_quantus": ours / theirs,
        "max_abs_difference": diff,
    }
    log(
        f"\nQuantus defaults (PixelFlipping, 1 pixel/step, digits 28x28, 4 images): ours {ours:.2f} s, "
        f"Quantus {theirs:.2f} s, ratio {ours / theirs:.3f}, max |diff| {diff:.2g}"
    )
    return row


def part_eval(model_path: Path, out: Path, device: str, n: int = 16) -> dict:
    folder, boxes = out / "eval-images", out / "eval-boxes"
    images(folder, n, boxes=boxes)
    args = [
        "eval",
        str(model_path),
        str(folder),
        "--boxes",
        str(boxes),
        "--methods",
        "saliency,grad-cam",
        "--metrics",
        "deletion,insertion,ebpg,bbox-accuracy",
        "--metric-param",
        f"deletion.step={W * 16}",
        "--metric-param",
        f"insertion.step={W * 16}",
        "--batch-size",
        "4",
        "--device",
        device,
        "--no-plots",
        "--preset",
        "imagenet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = {}

    def run(label, commands):
        target = out / f"eval-{label.replace(' ', '-')}"
        subprocess.run(["rm", "-rf", str(target)], check=True)
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "xplain", *args, "--out", str(target), *extra],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for extra in commands
        ]
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"{label}: {p.stderr.read()}")
        rows[label] = n / (time.perf_counter() - start)

    run("1 process", [[]])
    run("2 shards", [["--shard", "0/2"], ["--shard", "1/2"]])
    try:
        import ray  # noqa: F401

        gpus = ["--gpus-per-worker", "0.5"] if device.startswith("cuda") else []
        run("ray 2 workers", [["--ray", "local", "--ray-workers", "2", *gpus]])
    except ImportError:
        log("ray not installed: skipped")
    log(
        f"\nxplain eval, {n} images 224x224 (2 methods x 4 metrics, incl. process start-up), images/s"
    )
    for k, v in rows.items():
        log(f"  {k:14s} {v:6.2f}")
    return {"images": n, "images_per_second": rows}


def part_rss(out: Path, n: int = 5000) -> dict:
    """RSS of one evaluate() over n small images (cheap method and metric: the pipeline and
    the writer are what is measured)."""
    from xplain.data.images import Preprocess

    sys.path.insert(0, str(ROOT))
    from tests.imagenet_style import tiny_imagenet_model

    folder = images(out / "rss-images", n, size=(64, 48))
    model_path = out / "tiny1k.onnx"
    if not model_path.exists():
        tiny_imagenet_model(model_path)
    model = xplain.load_model(model_path, "cpu")
    samples: list[tuple[int, float]] = []

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def progress(done, total):
        if not samples or done - samples[-1][0] >= 500 or done == total:
            samples.append((done, rss_mb()))

    target = out / "rss-run"
    subprocess.run(["rm", "-rf", str(target)], check=True)
    start = time.perf_counter()
    xplain.evaluate(
        model,
        folder,
        methods=["random"],
        metrics=["ibd"],
        out_dir=target,
        batch_size=32,
        preprocess=Preprocess.from_options((3, 16, 16), preset="unit"),
        plots=False,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    log(
        f"\nRSS over {n} images (MB at images done): "
        + ", ".join(f"{d}: {m:.0f}" for d, m in samples)
    )
    after_warmup = [m for d, m in samples if d >= 1000]
    growth = (after_warmup[-1] - after_warmup[0]) if len(after_warmup) > 1 else None
    log(f"  growth from 1,000 to {n} images: {growth:.1f} MB; {n / seconds:.0f} images/s")
    return {
        "images": n,
        "rss_mb": samples,
        "growth_mb_after_1000": growth,
        "images_per_second": n / seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="efficientnet_b0")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--parts", default="pipeline,forward,metrics,quantus,defaults,eval,rss")
    ap.add_argument("--eval-images", type=int, default=16)
    ap.add_argument("--rss-images", type=int, default=5000)
    a = ap.parse_args()
    out = a.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="xplain-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    model_path = export(a.model, out)
    model = xplain.load_model(model_path, a.device)
    report = {
        "device": a.device,
        "model": a.model,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": len(os.sched_getaffinity(0)),
    }
    if a.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    if "pipeline" in parts:
        report["pipeline"] = part_pipeline(out)
    if "forward" in parts:
        report["forward"] = part_forward(model, a.device)
    if "metrics" in parts:
        report["metrics"] = part_metrics(model, a.device)
    if "quantus" in parts:
        report["quantus"] = part_quantus(model, a.device)
    if "defaults" in parts:
        report["quantus_defaults"] = part_defaults(a.device)
    if "eval" in parts:
        report["eval"] = part_eval(model_path, out, a.device, a.eval_images)
    if "rss" in parts:
        report["rss"] = part_rss(out, a.rss_images)
    (out / "eval_throughput.json").write_text(json.dumps(report, indent=2, default=str))
    log(f"\nwrote {out / 'eval_throughput.json'}")


if __name__ == "__main__":
    main()
