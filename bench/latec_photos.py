"""LATEC's image protocol on real photos with the pretrained EfficientNet-Lite0 (issue 23 item 4).

    .venv/bin/python bench/latec_photos.py prepare OUT      # model, photos, reference set
    nice -n 15 .venv/bin/python bench/latec_photos.py run OUT [--images 3] [--skip score-cam]
    .venv/bin/python bench/latec_photos.py report OUT [--workers 8]   # tables + estimate
    flock /tmp/xplain-timing.lock env OMP_NUM_THREADS=1 \
        .venv/bin/python bench/latec_photos.py speed OUT  # ROAD: LU vs CG; IROF; forward

``prepare``: the ImageNet-pretrained EfficientNet-Lite0 exported to ONNX with its preprocessing
sidecar (``bench/real_photos.py``), scikit-image photos squared and resized to 224×224 with their
ImageNet labels (``OUT/photos/manifest.csv``), and ``OUT/references.npy``: the preprocessed photos,
the fixed reference set of ``expected-gradients`` and ``deeplift-shap`` (LATEC hands Captum the
evaluated images as baselines; a file keeps every map independent of the eval batch).

``run``: ``xplain eval --protocol FILE`` (the shipped ``latec.json``, minus the methods given with
``--skip``, which are named as missing with the reason) one image more per invocation
(``--limit k``, resumed), so each invocation's wall and CPU time (``getrusage`` of the child) is
one image's cost; appended to ``OUT/run_times.json``. Every record also holds the method's
seconds and each metric's wall and CPU seconds (``metric_seconds``).

``report``: per method × metric CPU seconds per image from the records, per-image wall/CPU, the
protocol's ranking table (``OUT/eval/protocol.md``) and the time the full LATEC ImageNet run would
take: LATEC scores 1,000 ImageNet validation images (``configs/data/imagenet.yaml``: one batch of
1000) for each of its 3 ImageNet models (ResNet-50, EfficientNet-B0, DeiT-S); at the measured
per-image cost of one model, on one machine and split over N Ray workers (``--ray`` shards the
images; each worker loads the model once, measured as the invocation overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

#: (scikit-image photo, ImageNet label), in the order the run takes them
PHOTOS = [
    ("chelsea", "Egyptian cat"),
    ("coffee", "espresso"),
    ("rocket", "missile"),
    ("camera", "tripod"),
    ("stereo_motorcycle", "moped"),
]
#: LATEC's ImageNet evaluation: images per model and models (see the module docstring)
LATEC_IMAGES, LATEC_MODELS = 1000, 3


def prepare(out: Path) -> None:
    import numpy as np
    from real_photos import SIZE, _square, export_lite0

    model = export_lite0(out / "model")
    photos = out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for name, label in PHOTOS:
        _square(name, SIZE).save(photos / f"{name}.png")
        rows.append(f"{name}.png,{label}")
    (photos / "manifest.csv").write_text("\n".join(rows) + "\n")
    import xplain
    from xplain.data.images import Preprocess, load_image

    loaded = xplain.load_model(model, device="cpu")
    pre = Preprocess.from_options((3, SIZE, SIZE), sidecar=loaded.sidecar)
    refs = np.stack([pre(load_image(photos / f"{n}.png"))[0] for n, _ in PHOTOS])
    np.save(out / "references.npy", refs.astype(np.float32))
    print(f"{model}; {len(PHOTOS)} photos in {photos}; references {refs.shape}")


def protocol_file(out: Path, skip: list[str]) -> Path:
    """latec.json with the methods in ``skip`` named as missing (why: cost on this CPU) and the
    reference-set methods pointed at OUT/references.npy."""
    data = json.loads((ROOT / "xplain" / "data" / "protocols" / "latec.json").read_text())
    refs = str((out / "references.npy").resolve())
    for entry in data["methods"]:
        if entry.get("method") in skip:
            entry.pop("params", None)
            entry["missing"] = f"left out of this CPU run ({entry.pop('method')}): see docs"
        elif entry.get("method") in ("expected-gradients", "deeplift-shap"):
            entry.setdefault("params", {})["baselines"] = refs
    path = out / "latec-photos.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def run(out: Path, images: int, skip: list[str]) -> None:
    proto = protocol_file(out, skip)
    times_path = out / "run_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else []
    for k in range(len(times) + 1, images + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load0 = os.getloadavg()[0]
        began = time.perf_counter()
        cmd = [
            str(ROOT / ".venv" / "bin" / "xplain"),
            "eval",
            str(out / "model" / "efficientnet_lite0.onnx"),
            str(out / "photos" / "manifest.csv"),
            "--protocol",
            str(proto),
            "--limit",
            str(k),
            "--batch-size",
            "1",
            "--out",
            str(out / "eval"),
            "--no-plots",
            "--report-images",
            "0",
            "--montage",
            "0",
        ]
        done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        row = {
            "image": PHOTOS[k - 1][0],
            "wall_s": round(time.perf_counter() - began, 1),
            "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "load_start": round(load0, 1),
            "load_end": round(os.getloadavg()[0], 1),
            "exit": done.returncode,
        }
        times.append(row)
        times_path.write_text(json.dumps(times, indent=1))
        print(json.dumps(row), flush=True)


def report(out: Path, workers: int) -> str:
    records = [
        json.loads(line)
        for line in (out / "eval" / "results.jsonl").read_text().splitlines()
        if line.strip()
    ]
    methods = sorted({r["method"] for r in records})
    metrics = sorted({m for r in records for m in r.get("metric_seconds", {})})
    cpu: dict[tuple[str, str], list[float]] = {}
    explain: dict[str, list[float]] = {}
    for r in records:
        explain.setdefault(r["method"], []).append(r.get("cpu_seconds", r["seconds"]))
        for m, (_wall, c) in r.get("metric_seconds", {}).items():
            cpu.setdefault((r["method"], m), []).append(c)
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    lines = ["| method | explain | " + " | ".join(metrics) + " | total |"]
    lines.append("|---" * (len(metrics) + 3) + "|")
    per_method = {}
    for meth in methods:
        cells = [mean(cpu.get((meth, m), [])) for m in metrics]
        total = mean(explain[meth]) + sum(c for c in cells if c == c)
        per_method[meth] = total
        lines.append(
            f"| {meth} | {mean(explain[meth]):.1f} | "
            + " | ".join(f"{c:.1f}" for c in cells)
            + f" | {total:.0f} |"
        )
    per_metric = {m: sum(mean(cpu.get((meth, m), [])) for meth in methods) for m in metrics}
    lines.append(
        "| all methods | "
        + f"{sum(mean(v) for v in explain.values()):.0f} | "
        + " | ".join(f"{per_metric[m]:.0f}" for m in metrics)
        + f" | {sum(per_method.values()):.0f} |"
    )
    table = "\n".join(lines)
    times = json.loads((out / "run_times.json").read_text())
    full = [t for t in times if t["exit"] == 0]
    text = [
        "CPU seconds per image (mean over the images), by method × metric:",
        table,
        "",
        "per image (wall / CPU s, load average at start → end):",
    ]
    text += [
        f"- {t['image']}: {t['wall_s']:.0f} / {t['cpu_s']:.0f} s ({t['load_start']} → {t['load_end']})"
        for t in times
    ]
    if full:
        cpu_img = sum(t["cpu_s"] for t in full) / len(full)
        one = cpu_img * LATEC_IMAGES * LATEC_MODELS
        text += [
            "",
            f"full LATEC ImageNet run ({LATEC_IMAGES} images × {LATEC_MODELS} models) at "
            f"{cpu_img:.0f} CPU s per image and model: {one / 3600:.0f} core-hours on one "
            f"core, {one / 3600 / 16:.1f} h on a 16-core machine (16 single-thread workers), "
            f"{one / 3600 / workers:.1f} h on {workers} single-core Ray workers",
        ]
    proto = out / "eval" / "protocol.md"
    if proto.exists():
        text += ["", proto.read_text()]
    result = "\n".join(text)
    (out / "latec_photos.md").write_text(result + "\n")
    return result


def speed(out: Path, rounds: int, method: str = "gradient") -> None:
    """ROAD at LATEC's settings with the sparse-LU imputation against the conjugate-gradient one
    (interleaved rounds, CPU clock, same image and map: the input gradient of chelsea, or
    ``--map METHOD``'s map), IROF,
    and one forward, in one process; prints CPU seconds per image and the ROAD values."""
    import statistics

    import torch

    import xplain
    from xplain.data.images import Preprocess, load_image
    from xplain_builtins.metrics import road

    torch.set_num_threads(1)
    model = xplain.load_model(out / "model" / "efficientnet_lite0.onnx", device="cpu")
    pre = Preprocess.from_options((3, 224, 224), sidecar=model.sidecar)
    x = torch.from_numpy(pre(load_image(out / "photos" / "chelsea.png"))[0])[None]
    with torch.no_grad():
        t = model(x).argmax(1)
    registry = xplain.get_registry()
    if method == "gradient":
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model.graph(xg)[0, int(t)], xg)
        maps = xplain.Attribution(g.sum(1).detach(), {})
    else:  # a smooth map (grad-cam): blob-shaped masks, the slow case for CG
        from xplain.plugins.registry import validate_params
        from xplain.run.api import run_method

        chosen = registry.method(method)
        maps = run_method(model, chosen, x, t, validate_params(chosen.params, {}, method), 0)

    def score(name, params):
        return registry.metric(name).compute(
            model, x, t, maps, params=params, seed=0, cache={}, batch_size=1
        )

    direct = road.impute
    results: dict[str, list[float]] = {"road-lu": [], "road-cg": [], "irof": [], "forward": []}
    values = {}
    load0 = os.getloadavg()[0]
    for _ in range(rounds):
        for key in results:
            road.impute = road.impute_cg if key == "road-cg" else direct
            began = time.process_time()
            if key == "forward":
                model.infer(x)
            else:
                name = "irof" if key == "irof" else "road"
                got = score(name, {"baseline": "mean"} if key == "irof" else {"noise": 0.1})
                values[key] = float(got[name][0])
            results[key].append(time.process_time() - began)
    road.impute = direct
    for key, v in results.items():
        print(f"{key}: {statistics.median(v):.2f} CPU s per image (median of {rounds})")
    print(f"values: {values}")
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("prepare", "run", "report", "speed"))
    ap.add_argument("out", type=Path)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--skip", default="score-cam")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--map", default="gradient")
    args = ap.parse_args()
    if args.what == "prepare":
        prepare(args.out)
    elif args.what == "run":
        run(args.out, args.images, [s for s in args.skip.split(",") if s])
    elif args.what == "speed":
        speed(args.out, args.rounds, args.map)
    else:
        print(report(args.out, args.workers))


if __name__ == "__main__":
    main()
