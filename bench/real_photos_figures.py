"""Figures and numbers for docs/real-photos.md and docs/tr-gbp.md (after bench/real_photos.py).

    .venv/bin/python bench/real_photos_figures.py shares OUT      # TR-GBP per-layer map shares
    .venv/bin/python bench/real_photos_figures.py classes OUT     # TR-GBP class sensitivity, composites
    .venv/bin/python bench/real_photos_figures.py inputiba OUT    # InputIBA stages on two photos
    .venv/bin/python bench/real_photos_figures.py summary EVAL_DIR  # eval summary as a markdown table
    .venv/bin/python bench/real_photos_figures.py ganmasks LABEL=RUN.npz ...  # λ_G pictures (shapes)

Figures go to docs/img/ (small PNGs); numbers are printed as markdown.
"""

from __future__ import annotations

import argparse
import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import xplain
from xplain.data.images import Preprocess, load_image
from xplain_builtins.methods.tr_gbp import bias_terms

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
SINGLES = ["coffee", "rocket", "camera", "stereo_motorcycle"]
PAIRS = ["chelsea+coffee", "camera+coffee", "stereo_motorcycle+chelsea"]


def _load(out: Path, name: str):
    model = xplain.load_model(out / f"{name}.onnx", device="cpu")
    return model, Preprocess.from_options((3, 224, 224), sidecar=model.sidecar)


def _image(out: Path, pre, stem: str):
    raw = load_image(out / "photos" / "images" / f"{stem}.png")
    return torch.from_numpy(pre(raw)[0])[None], np.asarray(raw.convert("RGB")) if hasattr(
        raw, "convert"
    ) else None


def _rgb(out: Path, stem: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(out / "photos" / "images" / f"{stem}.png").convert("RGB"))


def _boxes(out: Path, stem: str) -> dict[str, np.ndarray]:
    boxes = {}
    for obj in ET.parse(out / "photos" / "annotations" / f"{stem}.xml").findall("object"):
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (int(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        m = np.zeros((224, 224), bool)
        m[y0 - 1 : y1, x0 - 1 : x1] = True
        boxes[obj.find("name").text] = m
    return boxes


def _save(fig: Figure, name: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(IMG / name, dpi=60)
    print(f"wrote docs/img/{name} ({(IMG / name).stat().st_size // 1024} KB)")


def _signed(ax, m: np.ndarray, title: str) -> None:
    v = float(np.abs(m).max()) or 1.0
    ax.imshow(m, cmap="bwr", vmin=-v, vmax=v)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _explain(model, x, method, targets=None, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xplain.explain(model, x, targets=targets, method=method, params=params)


# ----------------------------------------------------------------------------- TR-GBP shares
def shares(out: Path) -> None:
    """Mean map_shares per bias layer (fc_bias=none: the convolution terms and the input) on a
    BatchNorm network (EfficientNet-Lite0, trained), VGG16's convolutions (random weights) and
    digits_cnn (trained, VGG-like, no BatchNorm); maps of one photo with all layers, with the
    early layers only, and without biases."""
    nets = [
        ("efficientnet_lite0", "EfficientNet-Lite0 (ImageNet, BatchNorm folded)"),
        ("vgg16_random", "VGG16 convolutions, random weights (no BatchNorm)"),
    ]
    fig = Figure(figsize=(9, 4.2))
    rows = []
    for k, (name, title) in enumerate(nets):
        model, pre = _load(out, name)
        x = torch.cat([_image(out, pre, s)[0] for s in SINGLES[:2]])
        a = _explain(model, x, "tr-gbp", fc_bias="none")
        keys = list(a.sample_info[0]["map_shares"])
        mean = np.array([[info["map_shares"][k2] for k2 in keys] for info in a.sample_info]).mean(0)
        terms = {t.name: t for t in bias_terms(model)}
        grids = ["input"] + [f"{terms[k2].in_hw[0]}" if terms[k2].in_hw else "1" for k2 in keys[1:]]
        ax = fig.add_subplot(1, 2, k + 1)
        ax.bar(range(len(keys)), mean, color=["tab:red"] + ["tab:blue"] * (len(keys) - 1))
        ax.set_yscale("log")
        ax.set_ylim(1e-6, 1)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("term, input (red) then bias layers input → output", fontsize=7)
        ax.set_ylabel("share of the map's L1 mass", fontsize=7)
        ax.tick_params(labelsize=6)
        by_grid: dict[str, float] = {}
        for g, v in zip(grids, mean):
            by_grid[g] = by_grid.get(g, 0.0) + float(v)
        rows.append(
            (
                name,
                float(mean[0]),
                by_grid,
                [(k2, float(v)) for k2, v in sorted(zip(keys, mean), key=lambda kv: -kv[1])[:3]],
            )
        )
    fig.tight_layout()
    _save(fig, "tr-gbp-shares.png")
    for name, inp, by_grid, top in rows:
        grid = ", ".join(f"{g}: {v:.3f}" for g, v in by_grid.items())
        print(f"| {name} | {inp:.2e} | {grid} | {', '.join(f'{n} {v:.2f}' for n, v in top)} |")

    # maps: all layers / early layers / no bias, on the espresso photo
    fig = Figure(figsize=(9, 4.6))
    for k, (name, title) in enumerate(nets):
        model, pre = _load(out, name)
        x = _image(out, pre, "coffee")[0]
        early = [t.name for t in bias_terms(model) if t.in_hw and t.in_hw[0] >= 56]
        variants = [
            ("default (all layers)", {}),
            (f"layers = the {len(early)} layers at >= 56x56", {"layers": ",".join(early)}),
            ("bias=false (GBP + centring)", {"bias": False}),
        ]
        ax = fig.add_subplot(2, 4, 4 * k + 1)
        ax.imshow(_rgb(out, "coffee"))
        ax.set_title(title.split(" (")[0], fontsize=8)
        ax.axis("off")
        for j, (label, params) in enumerate(variants):
            a = _explain(model, x, "tr-gbp", **params)
            inp = a.sample_info[0]["map_shares"]["input"]
            _signed(
                fig.add_subplot(2, 4, 4 * k + j + 2),
                a.maps[0].numpy(),
                f"{label}\ninput share {inp:.3f}",
            )
            print(f"{name}: {label}: input share {inp:.4f}")
    fig.tight_layout()
    _save(fig, "tr-gbp-layers.png")


# ----------------------------------------------------------------------------- TR-GBP classes
def classes(out: Path) -> None:
    """Each class's positive mass on its own object as a share of its positive mass on both
    objects (0.5 = no class sensitivity), composites."""
    model, pre = _load(out, "efficientnet_lite0")
    fig = Figure(figsize=(9, 2.3 * len(PAIRS)))
    print("| image | class | rank | TR-GBP own share | TR-GBP fc_bias=none | guided BP own share |")
    print("|---|---|---|---|---|---|")
    for r, stem in enumerate(PAIRS):
        x = _image(out, pre, stem)[0]
        boxes = _boxes(out, stem)
        names = list(boxes)
        t = torch.tensor([model.labels.index(n) for n in names])
        with torch.no_grad():
            order = model(x)[0].argsort(descending=True).tolist()
        xs = x.repeat(2, 1, 1, 1)
        runs = {
            "tr": _explain(model, xs, "tr-gbp", t).maps.numpy(),
            "none": _explain(model, xs, "tr-gbp", t, fc_bias="none").maps.numpy(),
            "gbp": _explain(model, xs, "guided-backprop", t).maps.numpy(),
        }
        ax = fig.add_subplot(len(PAIRS), 5, 5 * r + 1)
        ax.imshow(_rgb(out, stem))
        ax.axis("off")
        for i, n in enumerate(names):
            ratio = {}
            for key, maps in runs.items():
                pos = np.clip(maps[i], 0, None)
                own, other = pos[boxes[n]].sum(), pos[boxes[names[1 - i]]].sum()
                ratio[key] = own / max(own + other, 1e-30)  # share of the two boxes' positive mass
            print(
                f"| {stem} | {n} | {order.index(int(t[i])) + 1} | {ratio['tr']:.2f} | {ratio['none']:.2f} | "
                f"{ratio['gbp']:.2f} |"
            )
            _signed(
                fig.add_subplot(len(PAIRS), 5, 5 * r + 2 + i),
                runs["tr"][i],
                f"TR-GBP: {n}\nown share {ratio['tr']:.2f}",
            )
            _signed(
                fig.add_subplot(len(PAIRS), 5, 5 * r + 4 + i),
                runs["gbp"][i],
                f"GBP: {n}\nown share {ratio['gbp']:.2f}",
            )
    fig.tight_layout()
    _save(fig, "tr-gbp-classes.png")


# ----------------------------------------------------------------------------- InputIBA
def inputiba(
    out: Path, state: Path | None = None, stems=("coffee", "chelsea+coffee"), **params
) -> None:
    model, pre = _load(out, "efficientnet_lite0")
    if state is not None:
        model.state_dir = state
    fig = Figure(figsize=(9, 2.3 * len(stems)))
    for r, stem in enumerate(stems):
        x = _image(out, pre, stem)[0]
        a = _explain(model, x, "input-iba", **params)
        feat = a.extras["feature_map"][0].numpy()
        gan = a.extras["gan_mask"][0].numpy()
        panels = [
            ("photo", _rgb(out, stem), None),
            ("stage 1 (bits)", feat, "viridis"),
            ("lambda_G (stage 2)", gan, "viridis"),
            ("Lambda* (InputIBA)", a.maps[0].numpy(), "viridis"),
        ]
        for j, (title, img, cmap) in enumerate(panels):
            ax = fig.add_subplot(len(stems), 4, 4 * r + j + 1)
            ax.imshow(img, cmap=cmap)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        print(
            stem,
            json.dumps(
                {k: v for k, v in a.info.items() if k in ("stage_seconds", "layer", "stats")}
            ),
            json.dumps(a.sample_info[0]),
        )
    fig.tight_layout()
    _save(fig, "input-iba-photos.png")


# ----------------------------------------------------------------------------- GAN masks
def ganmasks(files: list[Path]) -> None:
    """λ_G at the start and after stage 2 for runs saved by ``bench/input_iba_gan.py --save``
    (label=path pairs), circle and triangle of shapes_cnn."""
    runs = [(f.rsplit("=", 1)[0], np.load(f.rsplit("=", 1)[1])) for f in files]
    fig = Figure(figsize=(1.9 * (len(runs) + 1), 4))
    for r, name in enumerate(("circle", "triangle")):
        cols = [("start: sigmoid(stage-1 bits)", runs[0][1]["start"][r], None)]
        cols += [(label, d["end"][r], d["w2"][:, r]) for label, d in runs]
        for j, (title, img, w2) in enumerate(cols):
            ax = fig.add_subplot(2, len(cols), r * len(cols) + j + 1)
            ax.imshow(img, vmin=0, vmax=1, cmap="viridis")
            extra = f"\nw2 {w2[0]:.2f} -> {w2[1]:.2f}" if w2 is not None else f"\n{name}"
            ax.set_title(title + extra, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    _save(fig, "input-iba-gan.png")


# ----------------------------------------------------------------------------- eval summary
def summary(folder: Path) -> None:
    """The eval summary of the five headline scores as a markdown table (mean ± standard error)."""
    table = json.loads((folder / "summary.json").read_text())["table"]
    keys = ["ebpg", "bbox-accuracy", "ehr", "insertion", "deletion"]
    print("| method | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for method, scores in sorted(table.items()):
        cells = []
        for k in keys:
            v = scores.get(k) or {}
            cells.append("n/a" if v.get("mean") is None else f"{v['mean']:.3f} ± {v['stderr']:.3f}")
        print(f"| {method} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("shares", "classes", "inputiba", "summary", "ganmasks"))
    ap.add_argument("out", nargs="+")
    ap.add_argument("--state", type=Path)
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--stems", default="coffee,chelsea+coffee")
    args = ap.parse_args()
    if args.what == "ganmasks":
        return ganmasks(args.out)
    args.out = Path(args.out[0])
    if args.what == "inputiba":
        params = {}
        for p in args.param:
            k, v = p.split("=", 1)
            params[k] = (
                (int(v) if v.isdigit() else float(v))
                if v.replace(".", "", 1).replace("-", "", 1).isdigit()
                else v
            )
        inputiba(args.out, args.state, args.stems.split(","), **params)
    else:
        {"shares": shares, "classes": classes, "summary": summary}[args.what](args.out)


if __name__ == "__main__":
    main()
