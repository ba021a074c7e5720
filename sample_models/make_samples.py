#!/usr/bin/env python
"""Train and export the small sample classifiers shipped in ``sample_models/``.

Everything here is CPU-only, seeded and regenerated from scratch on every run (nothing is
skipped or cached).  Needs the ``samples`` extra (scikit-learn for the digits data set,
onnxscript for the dynamo exporter) on top of the package's own dependencies::

    .venv/bin/python sample_models/make_samples.py            # writes next to this file
    .venv/bin/python sample_models/make_samples.py --out /tmp/samples

Produces (see README.md for the details):

* ``digits_mlp``  -- 784-512-512-10 ReLU MLP (MIP-IN paper, Appendix A, Table 3) on
  scikit-learn's 8x8 handwritten digits upscaled to 28x28.
* ``digits_mlp_softmax`` -- the same weights with a trailing Softmax (classic exporter only).
* ``digits_cnn``  -- the CNN of the MIP-IN paper's Table 4 on the same data.
* ``shapes_cnn``  -- small Conv/BN/ReLU/MaxPool/residual/ReLU6/GAP CNN, trained multi-label on
  a synthetic 64x64 "shapes on textured backgrounds" data set generated here.

plus labels files, ``<file>.onnx.json`` sidecars, sample images and a VOC-annotated held-out
evaluation split (``shapes_eval/``).  Every exported file is checked with onnxruntime against
torch (max abs diff < 1e-4, on a batch size different from the one used for export).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

SEED = 20240601
DIGIT_CLASSES = [str(d) for d in range(10)]
SHAPE_CLASSES = ["circle", "square", "triangle", "cross"]
SHAPES_SIZE = 64
TOL = 1e-4

# --------------------------------------------------------------------------------------------
# utilities
# --------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # nothing here uses the global numpy RNG; belt and braces


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def train_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch: int,
               lr: float, loss_fn, seed: int, augment=None, weight_decay: float = 0.0,
               name: str = "") -> None:
    """Adam + cosine schedule, shuffled mini-batches from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        total, n = 0.0, 0
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, g)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        if ep == 0 or (ep + 1) % max(1, epochs // 4) == 0 or ep == epochs - 1:
            log(f"  {name} epoch {ep + 1}/{epochs} loss {total / n:.4f}")
    model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill)."""
    b, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    out = torch.empty_like(x)
    for i in range(b):
        out[i] = pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


# --------------------------------------------------------------------------------------------
# digits data (scikit-learn's bundled 8x8 handwritten digits, no download)
# --------------------------------------------------------------------------------------------


def load_digits_28(seed: int):
    """8x8 digits (0..16) -> [0,1] -> bilinear 28x28 -> quantised to uint8 levels.

    The uint8 quantisation makes the training tensors identical to what a model sees when it
    is fed a shipped 28x28 PNG with the "unit" preset (x / 255).
    Returns (x_train, y_train, x_test, y_test, u8_test) with a stratified 80/20 split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    u8 = torch.clamp(torch.round(x * 255.0), 0, 255).to(torch.uint8)
    y = torch.tensor(d.target, dtype=torch.long)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=0.2, random_state=seed, stratify=d.target)
    tr, te = torch.tensor(np.sort(tr)), torch.tensor(np.sort(te))
    xf = u8.float() / 255.0
    return xf[tr], y[tr], xf[te], y[te], u8[te]


class DigitsMLP(nn.Module):
    """MIP-IN Table 3: Flatten(28x28) -> Dense 512 ReLU -> Dense 512 ReLU -> Dense 10.

    Dropout is used during training only (the paper says so); it vanishes from eval exports.
    The paper's final softmax is left out: the model returns logits.
    """

    def __init__(self, p: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 512), nn.ReLU(), nn.Dropout(p),
            nn.Linear(512, 512), nn.ReLU(), nn.Dropout(p),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        return self.net(x)


class DigitsCNN(nn.Module):
    """MIP-IN Table 4: Conv 16@5x5 ReLU (24x24) -> Conv 64@3x3 ReLU (22x22) -> MaxPool 2
    (11x11x64) -> Flatten (7744) -> Dense 512 ReLU -> Dense 10 (logits; paper: softmax)."""

    def __init__(self, hidden: int = 512, p: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(),
            nn.Conv2d(16, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(p),
            nn.Linear(64 * 11 * 11, hidden), nn.ReLU(), nn.Dropout(p),
            nn.Linear(hidden, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


# --------------------------------------------------------------------------------------------
# synthetic shapes data
# --------------------------------------------------------------------------------------------


_YY, _XX = np.mgrid[0:SHAPES_SIZE, 0:SHAPES_SIZE].astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A 64x64x3 float background: noise, stripes or blotches (values roughly 0..255)."""
    s = SHAPES_SIZE
    c1 = rng.uniform(0, 255, 3)
    kind = rng.integers(3)
    if kind == 0:  # noise: base colour + per-pixel gaussian noise
        img = c1 + rng.normal(0, rng.uniform(10, 35), (s, s, 3))
    elif kind == 1:  # stripes: two colours, random angle / period / phase, soft edges
        c2 = np.clip(c1 + rng.normal(0, 60, 3), 0, 255)
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(5, 16)
        t = (np.cos(ang) * _XX + np.sin(ang) * _YY) * (2 * np.pi / period) + rng.uniform(0, 6.3)
        w = (0.5 + 0.5 * np.tanh(2.0 * np.sin(t)))[..., None]
        img = w * c1 + (1 - w) * c2 + rng.normal(0, 5, (s, s, 3))
    else:  # blotches: smooth random field blending two colours
        c2 = np.clip(c1 + rng.normal(0, 70, 3), 0, 255)
        k = int(rng.integers(3, 7))
        low = rng.uniform(0, 1, (1, 1, k, k)).astype(np.float32)
        field = F.interpolate(torch.from_numpy(low), size=(s, s), mode="bicubic",
                              align_corners=False)[0, 0].numpy()
        field = np.clip(field, 0, 1)[..., None]
        img = field * c1 + (1 - field) * c2 + rng.normal(0, 5, (s, s, 3))
    return img


def _shape_mask(cls: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask (size x size) of one shape filling its box."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c = size / 2.0
    if cls == "circle":
        m = (xx - c) ** 2 + (yy - c) ** 2 <= c ** 2
    elif cls == "square":
        m = np.ones((size, size), bool)
    elif cls == "triangle":
        # isosceles triangle, apex pointing up/down/left/right
        v = yy / size  # 0 at apex row .. 1 at base
        m = np.abs(xx - c) <= c * v
        m = np.rot90(m, int(rng.integers(4))).copy()
    elif cls == "cross":
        t = max(3.0, size * rng.uniform(0.28, 0.38)) / 2.0
        m = (np.abs(xx - c) <= t) | (np.abs(yy - c) <= t)
    else:  # pragma: no cover
        raise ValueError(cls)
    return m


def _shape_colour(rng: np.random.Generator, bg_mean: np.ndarray) -> np.ndarray:
    for _ in range(100):
        col = rng.uniform(0, 255, 3)
        if np.linalg.norm(col - bg_mean) > 110:
            return col
    return 255.0 - bg_mean


def make_shapes_image(rng: np.random.Generator, n_objects: int):
    """One 64x64 RGB uint8 image with ``n_objects`` (1 or 2) shapes of different classes.

    Returns (image, objects) with objects = [(class_index, (x0, y0, x1, y1))], boxes 0-based
    inclusive pixel coordinates of the tight box around the painted pixels, largest object first.
    """
    s = SHAPES_SIZE
    img = _background(rng)
    classes = rng.choice(len(SHAPE_CLASSES), size=n_objects, replace=False)
    # choose sizes and non-overlapping positions (2 px gap); start over if a layout is stuck
    while True:
        layout: list[tuple[int, int, int, int]] = []  # (size, x0, y0, class)
        for ci in classes:
            size = int(rng.integers(14, 27))
            for _ in range(50):
                x0 = int(rng.integers(1, s - size))
                y0 = int(rng.integers(1, s - size))
                if all(x0 > bx + bs + 1 or x0 + size < bx - 1 or y0 > by + bs + 1
                       or y0 + size < by - 1 for bs, bx, by, _ in layout):
                    layout.append((size, x0, y0, int(ci)))
                    break
            else:
                break
        if len(layout) == n_objects:
            break
    placed: list[tuple[int, tuple[int, int, int, int]]] = []
    for size, x0, y0, ci in layout:
        mask = _shape_mask(SHAPE_CLASSES[ci], size, rng)
        region = img[y0:y0 + size, x0:x0 + size]
        col = _shape_colour(rng, region.reshape(-1, 3).mean(0))
        fill = col + rng.normal(0, 6, (size, size, 3))
        region[mask] = fill[mask]
        ys, xs = np.nonzero(mask)
        tight = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()), y0 + int(ys.max()))
        placed.append((ci, tight))
    placed.sort(key=lambda o: -(o[1][2] - o[1][0] + 1) * (o[1][3] - o[1][1] + 1))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), placed


def make_shapes_set(seed: int, n: int, p_two: float):
    rng = np.random.default_rng(seed)
    imgs = np.empty((n, SHAPES_SIZE, SHAPES_SIZE, 3), np.uint8)
    objs = []
    for i in range(n):
        k = 2 if rng.uniform() < p_two else 1
        imgs[i], o = make_shapes_image(rng, k)
        objs.append(o)
    return imgs, objs


def shapes_tensors(imgs: np.ndarray, objs):
    # NCHW view of NHWC memory ("channels_last"): trains ~2x faster on CPU.  Export examples must
    # be made .contiguous() -- with channels-last strides the dynamo exporter traces
    # torch.flatten as an as_strided gather (Range/Gather/Reshape ops).
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    y = torch.zeros(len(objs), len(SHAPE_CLASSES))
    for i, o in enumerate(objs):
        for ci, _ in o:
            y[i, ci] = 1.0
    return x, y


class ResidualBlock(nn.Module):
    """y = relu(x + bn2(conv2(relu(bn1(conv1(x))))))"""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ShapesCNN(nn.Module):
    """3x64x64 -> conv/BN/ReLU -> maxpool -> conv s2/BN/ReLU -> residual block ->
    conv s2/BN/ReLU6 -> global average pool -> linear (4 logits)."""

    def __init__(self, n_classes: int = len(SHAPE_CLASSES)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())                                   # 64x64
        self.pool = nn.MaxPool2d(2)                                             # 32x32
        self.down1 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(32), nn.ReLU())               # 16x16
        self.res = ResidualBlock(32)                                            # 16x16
        self.down2 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(64), nn.ReLU6())              # 8x8
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, n_classes)

    def forward(self, x):
        x = self.down2(self.res(self.down1(self.pool(self.stem(x)))))
        return self.head(torch.flatten(self.gap(x), 1))


def shapes_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal / vertical flips (labels are flip-invariant; boxes are not needed)."""
    fh = torch.rand(len(x), generator=g) < 0.5
    fv = torch.rand(len(x), generator=g) < 0.5
    x = x.clone()
    x[fh] = x[fh].flip(3)
    x[fv] = x[fv].flip(2)
    return x


def shapes_metrics(logits: torch.Tensor, objs) -> dict[str, float]:
    top2 = logits.topk(2, dim=1).indices
    single_ok, single_n, two_ok, two_n = 0, 0, 0, 0
    for i, o in enumerate(objs):
        classes = {ci for ci, _ in o}
        if len(o) == 1:
            single_n += 1
            single_ok += int(top2[i, 0]) in classes
        else:
            two_n += 1
            two_ok += set(top2[i].tolist()) == classes
    return {"single_top1": single_ok / max(single_n, 1), "single_n": single_n,
            "two_both_top2": two_ok / max(two_n, 1), "two_n": two_n}


def voc_xml(filename: str, folder: str, objs) -> str:
    """Pascal VOC annotation; boxes converted to VOC's 1-based inclusive pixel convention."""
    lines = ["<annotation>", f"  <folder>{escape(folder)}</folder>",
             f"  <filename>{escape(filename)}</filename>",
             "  <source><database>xplain synthetic shapes</database></source>",
             f"  <size><width>{SHAPES_SIZE}</width><height>{SHAPES_SIZE}</height>"
             "<depth>3</depth></size>",
             "  <segmented>0</segmented>"]
    for ci, (x0, y0, x1, y1) in objs:
        lines += ["  <object>", f"    <name>{SHAPE_CLASSES[ci]}</name>",
                  "    <pose>Unspecified</pose>", "    <truncated>0</truncated>",
                  "    <difficult>0</difficult>",
                  f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                  f"<xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox>",
                  "  </object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# export + verification
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet():
    """Silence the exporters' progress prints and deprecation warnings (errors still raise)."""
    buf = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield


def export_classic(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with quiet():
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, external: bool) -> None:
    with quiet():
        torch.onnx.export(model, (example,), str(path), dynamo=True,
                          input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},),
                          external_data=external)


def verify(path: Path, model: nn.Module, x: torch.Tensor) -> dict:
    """Check the file, run it in onnxruntime and compare with torch; return a summary."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))  # path form: follows external data
    proto = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in dims]
    assert isinstance(shape[0], str) and shape[0], f"{path.name}: batch axis not dynamic: {shape}"
    ext = sorted({e.value for t in proto.graph.initializer for e in t.external_data
                  if e.key == "location"})
    ops: dict[str, int] = {}
    for n in proto.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"], sess.get_inputs()
    got = sess.run(None, {"input": np.ascontiguousarray(x.numpy())})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    diff = float(np.abs(got - ref).max())
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert diff < TOL, f"{path.name}: onnxruntime differs from torch by {diff}"
    return {"file": path.name, "opset": opset, "input": shape,
            "output": [d.dim_param or d.dim_value
                       for d in proto.graph.output[0].type.tensor_type.shape.dim],
            "external_data": ext, "ops": ops, "max_abs_diff": diff}


def export_all(name: str, model: nn.Module, example: torch.Tensor, check_x: torch.Tensor,
               out: Path, labels_file: str, dynamo_external: bool, extra_sidecar=None):
    model.eval()
    results = []
    for fname, dyn in ((f"{name}.onnx", False), (f"{name}.dynamo.onnx", True)):
        p = out / fname
        if dyn:
            export_dynamo(model, example, p, external=dynamo_external)
        else:
            export_classic(model, example, p)
        side = {"preset": "unit", "labels": labels_file}
        side.update(extra_sidecar or {})
        write_json(out / f"{fname}.json", side)
        results.append(verify(p, model, check_x))
        r = results[-1]
        log(f"  {fname}: opset {r['opset']}, input {r['input']}, ext {r['external_data']}, "
            f"diff {r['max_abs_diff']:.2e}, ops {r['ops']}")
    if dynamo_external:
        assert results[1]["external_data"], f"{name}.dynamo.onnx was expected to use external data"
    else:
        assert not results[1]["external_data"], f"{name}.dynamo.onnx must be self-contained"
    return results


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

GENERATED = ["*.onnx", "*.onnx.data", "*.onnx.json", "*.labels.txt", "results.json"]


def clean(out: Path) -> None:
    for pat in GENERATED:
        for p in out.glob(pat):
            p.unlink()
    for d in ("images", "shapes_eval"):
        if (out / d).is_dir():
            shutil.rmtree(out / d)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                    help="output folder (default: the folder holding this script)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--digits-cnn-hidden", type=int, default=512,
                    help="width of digits_cnn's Dense1 (paper: 512; dominates the file size)")
    args = ap.parse_args(argv)

    t_start = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    clean(out)
    (out / "images").mkdir()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(SEED)
    summary: dict = {"seed": SEED, "torch": torch.__version__, "models": {}, "files": {}}

    (out / "digits.labels.txt").write_text("\n".join(DIGIT_CLASSES) + "\n", encoding="utf-8")
    (out / "shapes.labels.txt").write_text("\n".join(SHAPE_CLASSES) + "\n", encoding="utf-8")

    # ---------------- digits ----------------
    log("digits: loading scikit-learn digits, 8x8 -> 28x28")
    xtr, ytr, xte, yte, u8te = load_digits_28(SEED)
    log(f"  train {len(xtr)}, held-out test {len(xte)}")
    ce = nn.CrossEntropyLoss()
    shift = lambda xb, g: random_shift(xb, g, 2)  # noqa: E731

    seed_everything(SEED + 1)
    mlp = DigitsMLP()
    t0 = time.time()
    train_loop(mlp, xtr, ytr, epochs=40, batch=64, lr=1e-3, loss_fn=ce, seed=SEED + 1,
               augment=shift, name="digits_mlp")
    acc_mlp = float((predict(mlp, xte).argmax(1) == yte).float().mean())
    log(f"  digits_mlp test accuracy {acc_mlp:.4f} ({time.time() - t0:.0f}s)")

    seed_everything(SEED + 2)
    cnn = DigitsCNN(hidden=args.digits_cnn_hidden)
    t0 = time.time()
    train_loop(cnn, xtr, ytr, epochs=15, batch=64, lr=1e-3, loss_fn=ce, seed=SEED + 2,
               augment=shift, name="digits_cnn")
    acc_cnn = float((predict(cnn, xte).argmax(1) == yte).float().mean())
    log(f"  digits_cnn test accuracy {acc_cnn:.4f} ({time.time() - t0:.0f}s)")

    # sample digit images: first held-out example of each chosen class that both models get right
    pm, pc = predict(mlp, xte).argmax(1), predict(cnn, xte).argmax(1)
    digit_images = []
    for d in (0, 3, 7, 9):
        i = next(int(i) for i in range(len(yte)) if yte[i] == d and pm[i] == d and pc[i] == d)
        Image.fromarray(u8te[i, 0].numpy(), "L").save(out / "images" / f"digit_{d}.png")
        digit_images.append(f"images/digit_{d}.png")

    log("digits: exporting")
    ex_d = xte[:2]
    chk_d = xte[:7]
    summary["models"]["digits_mlp"] = {
        "test_accuracy": acc_mlp, "test_n": len(yte), "input": [1, 28, 28],
        "files": export_all("digits_mlp", mlp, ex_d, chk_d, out, "digits.labels.txt",
                            dynamo_external=False)}
    soft = nn.Sequential(mlp, nn.Softmax(dim=1)).eval()
    export_classic(soft, ex_d, out / "digits_mlp_softmax.onnx")
    write_json(out / "digits_mlp_softmax.onnx.json", {"preset": "unit", "labels": "digits.labels.txt"})
    r = verify(out / "digits_mlp_softmax.onnx", soft, chk_d)
    log(f"  digits_mlp_softmax.onnx: opset {r['opset']}, diff {r['max_abs_diff']:.2e}, ops {r['ops']}")
    summary["models"]["digits_mlp_softmax"] = {
        "test_accuracy": acc_mlp, "test_n": len(yte), "input": [1, 28, 28], "files": [r],
        "note": "digits_mlp weights + trailing Softmax; outputs probabilities"}
    summary["models"]["digits_cnn"] = {
        "test_accuracy": acc_cnn, "test_n": len(yte), "input": [1, 28, 28],
        "files": export_all("digits_cnn", cnn, ex_d, chk_d, out, "digits.labels.txt",
                            dynamo_external=True)}

    # ---------------- shapes ----------------
    log("shapes: generating synthetic data")
    t0 = time.time()
    tr_imgs, tr_objs = make_shapes_set(SEED + 10, 8000, p_two=0.5)
    te_imgs, te_objs = make_shapes_set(SEED + 11, 2000, p_two=0.5)
    log(f"  train {len(tr_imgs)}, held-out test {len(te_imgs)} ({time.time() - t0:.0f}s)")
    xs_tr, ys_tr = shapes_tensors(tr_imgs, tr_objs)
    xs_te, _ = shapes_tensors(te_imgs, te_objs)

    seed_everything(SEED + 3)
    shp = ShapesCNN()
    t0 = time.time()
    train_loop(shp, xs_tr, ys_tr, epochs=12, batch=64, lr=3e-3, loss_fn=nn.BCEWithLogitsLoss(),
               seed=SEED + 3, augment=shapes_augment, weight_decay=1e-5, name="shapes_cnn")
    m_te = shapes_metrics(predict(shp, xs_te), te_objs)
    log(f"  shapes_cnn held-out: {m_te} ({time.time() - t0:.0f}s)")

    # evaluation split with VOC annotations: 20 one-object + 20 two-object images
    log("shapes: writing shapes_eval/ and sample images")
    ev = out / "shapes_eval"
    (ev / "images").mkdir(parents=True)
    (ev / "annotations").mkdir()
    rng = np.random.default_rng(SEED + 12)
    ev_imgs, ev_objs, rows = [], [], []
    for i in range(40):
        img, objs = make_shapes_image(rng, 1 if i % 2 == 0 else 2)
        stem = f"shapes_{i:03d}"
        Image.fromarray(img, "RGB").save(ev / "images" / f"{stem}.png")
        (ev / "annotations" / f"{stem}.xml").write_text(
            voc_xml(f"{stem}.png", "images", objs), encoding="utf-8")
        rows.append((f"images/{stem}.png", SHAPE_CLASSES[objs[0][0]], f"annotations/{stem}.xml"))
        ev_imgs.append(img)
        ev_objs.append(objs)
    with open(ev / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["path", "label", "boxes"])
        w.writerows(rows)
    # re-read the PNGs so the reported numbers are for the shipped files
    ev_x = (torch.from_numpy(np.stack([np.asarray(Image.open(ev / r[0]).convert("RGB"))
                                       for r in rows])).permute(0, 3, 1, 2).float() / 255.0
            ).contiguous()
    m_ev = shapes_metrics(predict(shp, ev_x), ev_objs)
    log(f"  shapes_cnn on shapes_eval/: {m_ev}")

    # quickstart images: first held-out image of each wanted composition that is classified right
    rng = np.random.default_rng(SEED + 13)
    wanted = [("circle",), ("triangle",), ("square", "cross"), ("circle", "triangle")]
    shape_images = []
    for combo in wanted:
        want = {SHAPE_CLASSES.index(c) for c in combo}
        for _ in range(10000):
            img, objs = make_shapes_image(rng, len(combo))
            if {ci for ci, _ in objs} != want:
                continue
            lg = predict(shp, torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0)
            if set(lg.topk(len(combo), 1).indices[0].tolist()) == want:
                break
        else:  # pragma: no cover
            raise RuntimeError(f"no correctly classified sample for {combo}")
        stem = "shapes_" + "_".join(SHAPE_CLASSES[ci] for ci, _ in objs)
        Image.fromarray(img, "RGB").save(out / "images" / f"{stem}.png")
        (out / "images" / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", "images", objs),
                                                    encoding="utf-8")
        shape_images.append(f"images/{stem}.png")

    log("shapes: exporting")
    summary["models"]["shapes_cnn"] = {
        "held_out": m_te, "shapes_eval": m_ev, "input": [3, SHAPES_SIZE, SHAPES_SIZE],
        "files": export_all("shapes_cnn", shp, xs_te[:2].contiguous(), xs_te[:7].contiguous(), out,
                            "shapes.labels.txt",
                            dynamo_external=False)}
    summary["images"] = digit_images + shape_images

    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name not in ("make_samples.py", "README.md"):
            summary["files"][str(p.relative_to(out))] = p.stat().st_size
    write_json(out / "results.json", summary)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"done in {time.time() - t_start:.0f}s; {out} holds {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
