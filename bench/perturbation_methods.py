"""lime, kernel-shap and rise at 224×224: parity with the references and speed (issue 22).

On the pretrained EfficientNet-Lite0 and a random-weight ResNet-50 (``xplain.run.reference_networks``,
nothing downloaded), one skimage photo per model:

* parity: ``lime`` / ``kernel-shap`` against Captum's ``Lime`` / ``KernelShap`` (their default
  surrogates) given our segments and coalitions through ``perturb_func``, and against Captum's
  collected samples refitted in float64; ``rise`` against the paper's formula with masks built
  from the same draws by the authors' recipe (skimage ``resize`` + crop). max |diff| / max |ref|.
* speed: our time over the time of the method's forward passes alone (``model.infer`` on batches
  of the size the method uses), and over Captum's time (``perturbations_per_eval`` = our pass
  size) or, for RISE, over the authors' algorithm (skimage masks, batched forwards, one matmul).

Times are process CPU seconds with one torch thread, best of ``--repeats``, so they hold on a
shared machine; all ratios of one table come from one run. ``--rise-masks`` defaults to 400
(the paper's 4000 costs 10× more and changes no ratio).

    python bench/perturbation_methods.py [--models efficientnet_lite0 resnet50] [--repeats 2]
        [--rise-masks 400] [--only lime kernel-shap lime-slic rise]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

import xplain
from xplain.run.reference_networks import bench_model_path
from xplain_builtins.methods import rise as R
from xplain_builtins.methods import surrogates as S

PHOTOS = {"efficientnet_lite0": "chelsea", "resnet50": "coffee"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(name: str) -> torch.Tensor:
    """A skimage sample photo, centre-cropped, resized to 224×224, ImageNet-normalised."""
    import skimage.data
    from skimage.transform import resize

    img = getattr(skimage.data, name)().astype(np.float64) / 255.0
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = resize(img[top : top + side, left : left + side], (224, 224), anti_aliasing=True)
    x = torch.tensor(img, dtype=torch.float32).permute(2, 0, 1)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x[None]


def cpu_time(fn, repeats: int):
    """Best process CPU time of ``repeats`` calls after one warm-up call (imports, allocator)."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        out = fn()
        best = min(best, time.process_time() - start)
    return best, out


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


class Float64Fit:
    """Captum interpretable model: scikit-learn's estimator on Captum's data, in float64."""

    def __init__(self, make):
        self.make, self.coef = make, None

    def fit(self, train_data, **kwargs):
        z, y, w = (t.double().numpy() for t in next(iter(train_data)))
        self.coef = torch.from_numpy(self.make().fit(z, y, sample_weight=w).coef_).float()

    def representation(self):
        return self.coef[None]


def captum_surrogate(
    name,
    model,
    x,
    target,
    segments,
    coalitions=None,
    *,
    baseline=0.0,
    alpha=0.01,
    per_pass=1,
    f64=False,
):
    """Captum's ``Lime`` (``SkLearnLasso(alpha)``) or ``KernelShap`` on one image (1×C×H×W)
    with ``segments`` as the feature mask; ``coalitions`` (n×M), when given, are fed to its
    ``perturb_func`` (else Captum draws its own 25); ``f64``: its estimator refitted in float64
    on the samples Captum collected. Returns the H×W map. Also used by the tests."""
    import captum.attr as ca
    from captum._utils.models.linear_model import SkLearnLasso
    from sklearn.linear_model import Lasso, LinearRegression

    if name == "lime":
        explainer = ca.Lime(model.graph, SkLearnLasso(alpha=alpha))
    else:
        explainer = ca.KernelShap(model.graph)
    if f64:
        explainer.interpretable_model = Float64Fit(
            (lambda: Lasso(alpha=alpha)) if name == "lime" else LinearRegression
        )
    if coalitions is not None:

        def ours(original_inp, **kwargs):
            for row in coalitions:
                yield row[None]

        explainer.perturb_func = ours
    mask = segments[None, None].expand(1, x.shape[1], *segments.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = explainer.attribute(
            x.clone(),
            target=int(target),
            feature_mask=mask,
            n_samples=25 if coalitions is None else len(coalitions),
            baselines=baseline,
            perturbations_per_eval=per_pass,
        )
    return out[0, 0]


def authors_rise(model, x, target, n, s, p, gen, per_pass):
    """The authors' algorithm (github.com/eclique/RISE): skimage masks, batched softmax, matmul;
    the grids and shifts from our draws."""
    from skimage.transform import resize

    height, width = x.shape[-2:]
    cell = -(-height // s)
    masks = []
    while len(masks) < n:
        grid, sh, sw = R.draw_block(gen, s, p, cell, cell)
        for k in range(grid.shape[0]):
            big = resize(
                grid[k].numpy().astype("float32"),
                ((s + 1) * cell, (s + 1) * cell),
                order=1,
                mode="reflect",
                anti_aliasing=False,
            )
            masks.append(big[int(sh[k]) : int(sh[k]) + height, int(sw[k]) : int(sw[k]) + width])
    m = torch.from_numpy(np.stack(masks[:n])).float()
    probs = []
    with torch.no_grad():
        for lo in range(0, n, per_pass):
            probs.append(torch.softmax(model.graph(m[lo : lo + per_pass, None] * x), dim=1))
    prob = torch.cat(probs)[:, target]
    return (prob @ m.view(n, -1)).view(height, width) / (n * p)


def bench_model(name: str, repeats: int, rise_masks: int, only=()) -> dict:
    model = xplain.load_model(bench_model_path(name), device="cpu")
    x = photo(PHOTOS[name])
    target = int(model.infer(x).argmax())
    t = torch.tensor([target])
    per_pass = xplain.images_per_forward_pass(model)  # ours: forward-only passes
    batch = x.expand(per_pass, -1, -1, -1).contiguous()
    fwd, _ = cpu_time(lambda: model.infer(batch), 3 * repeats)
    fwd_image = fwd / per_pass
    rows = []
    for method, params, forwards in (
        ("lime", {}, 25),
        ("kernel-shap", {}, 25),
        ("lime", {"segmentation": "slic"}, 25),
        ("rise", {"n_masks": rise_masks}, rise_masks),
    ):
        label = "lime-slic" if params.get("segmentation") else method
        if only and label not in only:
            continue
        ours_s, result = cpu_time(lambda: xplain.explain(model, x, t, method, params), repeats)
        row = {
            "method": method,
            "params": params,
            "forwards": forwards,
            "ours_s": ours_s,
            "x_forwards": ours_s / (forwards * fwd_image),
        }
        gen = xplain.sample_generators(x, 0)[0]
        if method == "rise":
            ref_s, ref = cpu_time(
                lambda: authors_rise(
                    model,
                    x,
                    target,
                    rise_masks,
                    7,
                    0.5,
                    xplain.sample_generators(x, 0)[0],
                    per_pass,
                ),
                repeats,
            )
            row.update(parity=rel(result.maps[0], ref), ref_s=ref_s, ours_over_ref=ours_s / ref_s)
        else:
            p = xplain.validate_params(xplain.get_registry().method(method).params, params, method)
            seg = S.segments_for(x, p)[0]
            draw = S.lime_coalitions if method == "lime" else S.kernel_shap_coalitions
            z = draw(p["n_samples"], int(seg.max()) + 1, gen)
            row["segments"] = int(seg.max()) + 1
            row["parity"] = rel(result.maps[0], captum_surrogate(method, model, x, target, seg, z))
            row["parity_f64"] = rel(
                result.maps[0], captum_surrogate(method, model, x, target, seg, z, f64=True)
            )
            row["nonzero"] = int((result.maps[0] != 0).sum())
            ref_s, _ = cpu_time(
                lambda: captum_surrogate(method, model, x, target, seg, per_pass=per_pass),
                repeats,
            )
            row.update(ref_s=ref_s, ours_over_ref=ours_s / ref_s)
        rows.append(row)
        print(json.dumps({"model": name, **row}), flush=True)
    return {
        "model": name,
        "forward_ms_per_image": 1e3 * fwd_image,
        "per_pass": per_pass,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["efficientnet_lite0", "resnet50"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rise-masks", type=int, default=400)
    parser.add_argument("--only", nargs="*", default=[], help="lime kernel-shap lime-slic rise")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {
        "load": os.getloadavg(),
        "torch": torch.__version__,
        "models": [bench_model(m, args.repeats, args.rise_masks, args.only) for m in args.models],
    }
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
