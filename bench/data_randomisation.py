"""Data randomisation test (Adebayo et al. 2018, section 5): docs/sanity-checks.md (issue 24).

A small ReLU CNN (16-32-64-64 channels) is trained twice from the same seeded initialisation on the
same generated shapes images (sample_models/make_samples.py's generator, one object per image,
4 classes, downsampled to 32×32, 2048 training images): once with the true labels and once with
the labels permuted (it then memorises them; each run stops at 99 % training accuracy). A method
whose maps for the same test images and the same target class stay alike under both models does not depend on the relation between data and labels. Nothing is
downloaded; training takes a few minutes on the CPU.

    .venv/bin/python bench/data_randomisation.py OUT    # OUT/data-randomisation.json, table, figure
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sample_models"))
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
N_TRAIN, N_TEST, SIDE = 2048, 32, 32


def _net():
    import torch
    from torch import nn

    torch.manual_seed(0)  # the same initialisation for both label sets
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 16×16
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8×8
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4×4: some translation invariance, so the true labels generalise
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 4),
    )


def _data():
    import torch
    import torch.nn.functional as F
    from make_samples import make_shapes_set, shapes_tensors

    imgs, objs = make_shapes_set(0, N_TRAIN + N_TEST, p_two=0.0)
    x, y = shapes_tensors(imgs, objs)
    x = F.avg_pool2d(x.contiguous(), 64 // SIDE)
    x = (x - 0.5) / 0.25
    return x, y.argmax(1), torch


def _train(x, y, epochs, target=0.99):
    """Adam from the shared initialisation until the training accuracy reaches `target`
    (checked every 5 epochs) or `epochs` have run; returns (net, train accuracy, epochs run)."""
    import torch
    import torch.nn.functional as F

    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    acc, done = 0.0, 0
    for done in range(1, epochs + 1):
        net.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        if done % 5 == 0 or done == epochs:
            net.eval()
            with torch.no_grad():
                acc = float((net(x).argmax(1) == y).float().mean())
            print(f"  epoch {done}: train accuracy {acc:.3f}", flush=True)
            if acc >= target:
                break
    net.eval()
    return net, acc, done


def figure(out: Path) -> None:
    """docs/img/data-randomisation.png: |map| under the true-label and the random-label model for
    two test images, one row per method (each map scaled to its 99th percentile)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.load(out / "data-random-images.npy")
    names = [n for n in METHODS if (out / f"data-random-{n}.npy").exists()]
    fig, axes = plt.subplots(len(names), 6, figsize=(6.6, 1.15 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        maps = np.load(out / f"data-random-{name}.npy")
        for j, k in enumerate((0, 1)):
            axes[i, 3 * j].imshow(images[k])
            for c, (which, title) in enumerate(((0, "true labels"), (1, "random labels"))):
                m = np.abs(maps[which, k])
                ax = axes[i, 3 * j + 1 + c]
                ax.imshow(np.clip(m / max(np.percentile(m, 99), 1e-30), 0, 1), cmap="gray")
                if i == 0:
                    ax.set_title(title, fontsize=6)
        axes[i, 0].set_ylabel(name, fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "img" / "data-randomisation.png", dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--figure", action="store_true", help="only redraw the figure from OUT")
    p.add_argument("--epochs-true", type=int, default=30, help="at most (stops at 99 %%)")
    p.add_argument("--epochs-random", type=int, default=300, help="at most (stops at 99 %%)")
    a = p.parse_args()
    if a.figure:
        figure(a.out)
        return
    import torch

    import xplain
    from xplain.run.api import run_method
    from xplain_builtins.metrics.properties import _unit, spearman, ssim
    from xplain_builtins.metrics.similarity import hog_similarity

    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    x, y, _ = _data()
    xtr, ytr, xte, yte = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    perm = ytr[torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(2))]
    start = time.perf_counter()
    true_net, true_acc, true_epochs = _train(xtr, ytr, a.epochs_true)
    rand_net, rand_acc, rand_epochs = _train(xtr, perm, a.epochs_random)
    with torch.no_grad():
        test_acc = float((true_net(xte).argmax(1) == yte).float().mean())
        rand_test = float((rand_net(xte).argmax(1) == yte).float().mean())
    train_s = time.perf_counter() - start
    models = {}
    for name, net in (("true", true_net), ("random", rand_net)):
        path = a.out / f"shapes32_{name}.onnx"
        torch.onnx.export(
            net,
            (xte[:1].contiguous(),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        models[name] = xplain.load_model(path, device="cpu")
    reg = xplain.get_registry()
    result = {
        "train_accuracy": {"true": true_acc, "random": rand_acc},
        "test_accuracy": {"true": test_acc, "random": rand_test},
        "epochs": {"true": true_epochs, "random": rand_epochs},
        "train_seconds": round(train_s, 1),
        "n_test": N_TEST,
        "methods": {},
    }
    for name, extra in METHODS.items():
        method = reg.method(name)
        params = xplain.validate_params(method.params, extra, name)
        begin = time.perf_counter()
        maps = {
            k: run_method(m, method, xte, yte, params, 0).maps.float() for k, m in models.items()
        }
        t, r = maps["true"], maps["random"]
        result["methods"][name] = {
            "spearman-abs": spearman(t.abs(), r.abs()).tolist(),
            "spearman-signed": spearman(t, r).tolist(),
            "ssim": ssim(_unit(t.abs()), _unit(r.abs())).tolist(),
            "hog": hog_similarity(t.abs(), r.abs()).tolist(),
            "seconds": round(time.perf_counter() - begin, 1),
        }
        print(f"{name}: {result['methods'][name]['seconds']} s", flush=True)
        np.save(a.out / f"data-random-{name}.npy", np.stack([t[:4].numpy(), r[:4].numpy()]))
    shown = (xte[:4] * 0.25 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.save(a.out / "data-random-images.npy", shown)
    (a.out / "data-randomisation.json").write_text(json.dumps(result, indent=1))
    rows = [
        "| method | Spearman \\|map\\| | Spearman signed | SSIM | HOG |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["methods"].items():
        cells = [
            f"{np.mean(r[k]):.2f} ± {np.std(r[k]):.2f}"
            for k in ("spearman-abs", "spearman-signed", "ssim", "hog")
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    print(json.dumps({k: v for k, v in result.items() if k != "methods"}))
    print("\n".join(rows))
    (a.out / "data-randomisation.md").write_text("\n".join(rows) + "\n")
    figure(a.out)


if __name__ == "__main__":
    main()
