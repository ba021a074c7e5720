"""The work behind ``lime`` and ``kernel-shap``: segments, coalitions, masked forwards and the two
surrogate fits, equal to Captum's ``Lime`` / ``KernelShap`` with their defaults.

Both methods explain an image by a linear model over binary *interpretable features* (segments):
a coalition ``z ∈ {0, 1}^M`` keeps the pixels of the segments with ``z_j = 1`` and sets the rest
to a baseline, the model's target logit on that image is the regression target, and the fitted
coefficients, painted back onto their segments, are the map. They differ only in how coalitions
are drawn, how they are weighted and which linear model is fitted (Captum's ``KernelShap`` is a
``Lime`` with three functions swapped), so one module serves both.

The fits run on the host in float64: the problems are tiny (``n_samples × M``, e.g. 25 × 196)
and sequential (coordinate descent). They are what Captum calls, not approximations:
scikit-learn's ``LinearRegression`` (weighted centring, minimum-norm least squares with the
singular-value cut-off ``1e-6``) in NumPy, and scikit-learn's ``Lasso`` itself where installed,
else :func:`lasso_cd`, its algorithm ported step for step (weighted centring, ``sqrt(w)`` row
scaling, cyclic coordinate descent with gap-safe screening and the duality-gap stop). Captum
fits in float32, which is measurably wrong when the coalitions barely determine the
coefficients (see the tests); float64 is not.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch

import xplain

#: the extra that brings scikit-image, named in the error when SLIC is asked for without it
SEGMENTS_EXTRA = "segments"
#: Captum's ``KernelShap.inf_weight``: the weight of the empty and the full coalition
KERNEL_SHAP_INF_WEIGHT = 1_000_000.0


# ----------------------------------------------------------------------------- segments
def grid_cell(height: int, width: int, cell: int = 0) -> int:
    """The side of a grid segment: ``cell`` when positive, else round(min(H, W) / 14), at least 1
    (16 px on 224×224: LATEC's 14×14 grid of 16×16 squares)."""
    return int(cell) if cell > 0 else max(1, round(min(height, width) / 14))


def grid_segments(height: int, width: int, cell: int, device=None) -> torch.Tensor:
    """H×W long tensor of segment ids: squares of ``cell`` pixels, row-major (the last row and
    column of squares cut off at the border)."""
    rows = torch.arange(height, device=device) // cell
    cols = torch.arange(width, device=device) // cell
    per_row = -(-width // cell)
    return rows[:, None] * per_row + cols[None, :]


def slic_segments(image: torch.Tensor, n_segments: int, compactness: float) -> torch.Tensor:
    """H×W long tensor of SLIC superpixels of one preprocessed image (C×H×W), ids 0..M−1.

    scikit-image's ``slic`` expects colours in [0, 1] (it converts 3-channel images to CIELAB), so
    the image is first scaled to [0, 1] by its own minimum and maximum (xplain does not know the
    preprocessing's mean and std; for one mean/std across channels this undoes it up to a
    constant). Without scikit-image: a UsageError (exit 2) naming the extra."""
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise xplain.UsageError(
            "lime/kernel-shap segmentation=slic needs scikit-image, which is not installed",
            hint=f"pip install 'xplain[{SEGMENTS_EXTRA}]', or use --param segmentation=grid",
        ) from None
    array = image.detach().to("cpu", torch.float64).numpy()
    lo, hi = float(array.min()), float(array.max())
    array = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
    if array.shape[0] == 1:
        labels = slic(
            array[0],
            n_segments=n_segments,
            compactness=compactness,
            start_label=0,
            channel_axis=None,
        )
    else:
        labels = slic(
            np.moveaxis(array, 0, -1),
            n_segments=n_segments,
            compactness=compactness,
            start_label=0,
            channel_axis=-1,
            convert2lab=array.shape[0] == 3,
        )
    _, dense = np.unique(labels, return_inverse=True)  # ids 0..M−1 with no gaps
    return torch.from_numpy(dense.reshape(labels.shape).astype(np.int64)).to(image.device)


def segments_for(x: torch.Tensor, params) -> list[torch.Tensor]:
    """One H×W segment map per image of ``x``, as the parameters ask."""
    height, width = x.shape[-2:]
    if params["segmentation"] == "slic":
        return [slic_segments(xi, params["n_segments"], params["compactness"]) for xi in x]
    cell = grid_cell(height, width, params["cell"])
    if cell > min(height, width):
        raise xplain.UsageError(
            f"grid cell {cell} is larger than the {height}×{width} input",
            hint=f"use --param cell=N with N <= {min(height, width)}",
        )
    grid = grid_segments(height, width, cell, x.device)
    return [grid] * x.shape[0]


# ----------------------------------------------------------------------------- coalitions
def lime_coalitions(n_samples: int, n_features: int, gen: torch.Generator) -> torch.Tensor:
    """Captum ``Lime``'s default draws: each of ``n_samples`` rows independent Bernoulli(0.5) per
    feature (``n_samples × M``, long), from ``gen``."""
    probs = torch.full((n_samples, n_features), 0.5, device=gen.device)
    return torch.bernoulli(probs, generator=gen).long()


def kernel_shap_coalitions(n_samples: int, n_features: int, gen: torch.Generator) -> torch.Tensor:
    """Captum ``KernelShap``'s draws (``n_samples × M``, long): the full and the empty coalition
    first, then coalitions whose size k is drawn with probability ∝ (M − 1) / (k (M − k)),
    k = 1..M−1 (the Shapley kernel's mass per size), and whose members are the k largest of M
    standard normals (a uniformly random k-subset)."""
    if n_features < 2:
        raise xplain.UsageError(
            f"kernel-shap needs at least 2 segments, the segmentation gave {n_features}",
            hint="use smaller segments (--param cell=N or more n_segments)",
        )
    out = torch.empty((n_samples, n_features), dtype=torch.long, device=gen.device)
    out[:1] = 1
    out[1:2] = 0
    if n_samples <= 2:
        return out
    k = torch.arange(n_features, dtype=torch.float64, device=gen.device)
    probs = (n_features - 1) / (k * (n_features - k))
    probs[0] = 0.0
    rest = n_samples - 2
    sizes = torch.multinomial(probs, rest, replacement=True, generator=gen)
    noise = torch.randn((rest, n_features), generator=gen, device=gen.device)
    ranks = noise.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = largest
    out[2:] = (ranks < sizes[:, None]).long()
    return out


def lime_similarity(
    x: torch.Tensor, perturbed: torch.Tensor, kernel_width: float = 1.0
) -> torch.Tensor:
    """Captum's default LIME kernel, exp(−d² / (2 σ²)) with d the cosine distance between the
    flattened image ``x`` (C×H×W) and each perturbed image (k×C×H×W); returns k weights."""
    flat = perturbed.reshape(perturbed.shape[0], -1).float()
    ref = x.reshape(1, -1).float()
    distance = 1 - torch.nn.functional.cosine_similarity(flat, ref, dim=1)
    return torch.exp(-(distance**2) / (2 * kernel_width**2))


# ----------------------------------------------------------------------------- masked forwards
def masked_outputs(
    model,
    x: torch.Tensor,
    targets: torch.Tensor,
    segments: list[torch.Tensor],
    coalitions: list[torch.Tensor],
    baseline: float,
    per_pass: int,
    weigh: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """The target logit of every coalition of every image, and (with ``weigh``) each perturbed
    image's weight ``weigh(x_b, perturbed)``.

    Images are kept where their segment is in the coalition and set to ``baseline`` elsewhere,
    ``per_pass`` perturbed images per forward pass (``model.infer``); the passes walk image by
    image, so each holds the coalitions of one image (small images: several)."""
    channels, height, width = x.shape[1:]
    fill = torch.tensor(baseline, device=x.device, dtype=x.dtype)
    outputs = [torch.empty(len(z), device=x.device, dtype=torch.float32) for z in coalitions]
    weights: list[torch.Tensor | None] = [
        torch.empty(len(z), device=x.device, dtype=torch.float32) if weigh else None
        for z in coalitions
    ]
    jobs = [(b, lo) for b, z in enumerate(coalitions) for lo in range(0, len(z), per_pass)]
    total = sum(len(z) for z in coalitions)
    size = min(per_pass, total)
    # a fresh input per pass: measured faster than one reused buffer (see rise)
    buffer = x.new_empty(size, channels, height, width)
    pending: list[tuple[int, int, int, int]] = []  # (image, first, count, offset in buffer)
    used = done = 0

    def flush():
        nonlocal used, pending, buffer, done
        logits = model.infer(buffer[:used])
        for b, lo, k, at in pending:
            outputs[b][lo : lo + k] = logits[at : at + k, int(targets[b])].float()
            w = weights[b]
            if weigh is not None and w is not None:
                w[lo : lo + k] = weigh(x[b], buffer[at : at + k])
        done += used
        xplain.report_progress(done, total, "coalitions")
        used, pending = 0, []
        buffer = x.new_empty(size, channels, height, width)

    for b, lo in jobs:
        z = coalitions[b][lo : lo + per_pass]
        k = z.shape[0]
        if used + k > buffer.shape[0]:
            flush()
        keep = z[:, segments[b]].bool()  # k×H×W
        torch.where(keep[:, None], x[b][None], fill, out=buffer[used : used + k])
        pending.append((b, lo, k, used))
        used += k
    if used:
        flush()
    return outputs, weights


# ----------------------------------------------------------------------------- the fits
def _weighted_centre(z: np.ndarray, y: np.ndarray, w: np.ndarray):
    """scikit-learn's preprocessing for ``fit_intercept`` with ``sample_weight``: weighted column
    means subtracted, then rows scaled by ``sqrt(w)``."""
    x_offset = np.average(z, axis=0, weights=w)
    y_offset = np.average(y, weights=w)
    root = np.sqrt(w)
    return (z - x_offset) * root[:, None], (y - y_offset) * root


def least_squares(z: np.ndarray, y: np.ndarray, w: np.ndarray, cond: float = 1e-6) -> np.ndarray:
    """scikit-learn ``LinearRegression().fit(z, y, sample_weight=w).coef_`` (Captum KernelShap's
    model): weighted least squares with an intercept, minimum-norm where the coalitions do not
    determine every coefficient, singular values below ``cond`` × the largest treated as 0."""
    a, b = _weighted_centre(z.astype(np.float64), y.astype(np.float64), w.astype(np.float64))
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return np.zeros(z.shape[1])
    keep = s > cond * s[0]
    return vt[keep].T @ ((u[:, keep].T @ b) / s[keep])


def _screen(xt, norm2, w, r, xta, dual_norm, gap, alpha, candidates):
    """Gap-safe screening (Fercoq et al. 2015, as scikit-learn's ``enet_coordinate_descent``):
    the features in ``candidates`` whose coefficient is provably 0 at the optimum are set to 0
    (the residual updated) and dropped; returns the ones kept."""
    active = []
    radius = math.sqrt(2 * gap) / alpha
    for j in candidates:
        if norm2[j] == 0:
            w[j] = 0.0
            continue
        theta = xta[j] / max(alpha, dual_norm)
        if (1 - abs(theta)) / math.sqrt(norm2[j]) <= radius:
            active.append(j)
        elif w[j] != 0:
            r += w[j] * xt[j]
            w[j] = 0.0
    return active


def _gap(xt, y, w, r, alpha):
    """The Lasso duality gap at ``w`` (residual ``r``) and X'r, as scikit-learn's ``gap_enet``."""
    xta = xt @ r
    dual_norm = float(np.abs(xta).max()) if xta.size else 0.0
    r_norm2 = float(r @ r)
    primal = 0.5 * r_norm2 + alpha * float(np.abs(w).sum())
    scale = alpha / dual_norm if dual_norm > alpha else 1.0
    dual = -0.5 * scale**2 * r_norm2 + scale * float(r @ y)
    return primal - dual, xta, dual_norm


def lasso(
    z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float = 0.01, max_iter: int = 1000
) -> tuple[np.ndarray, bool]:
    """Captum Lime's default surrogate, ``Lasso(alpha).fit(z, y, sample_weight=w).coef_``.

    scikit-learn's compiled coordinate descent when scikit-learn is installed (it is wherever
    Captum's Lime runs; on 25 coalitions of 196 segments it takes ~900 sweeps, 30 ms compiled
    against ~0.5 s for the Python port, which would rival the forward passes), else
    :func:`lasso_cd`, the same algorithm in NumPy (equal to 1e-15, tested). Returns the
    coefficients and whether the duality gap met the tolerance within ``max_iter`` sweeps
    (scikit-learn's ConvergenceWarning, which Captum shows, becomes that flag)."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import Lasso
    except ImportError:
        return lasso_cd(z, y, w, alpha=alpha, max_iter=max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        fitted = Lasso(alpha=alpha, max_iter=max_iter).fit(
            z.astype(np.float64), y.astype(np.float64), sample_weight=w.astype(np.float64)
        )
    converged = not any(issubclass(c.category, ConvergenceWarning) for c in caught)
    return np.asarray(fitted.coef_, dtype=np.float64), converged


def lasso_cd(
    z: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    alpha: float = 0.01,
    max_iter: int = 1000,
    tol: float = 1e-4,
) -> tuple[np.ndarray, bool]:
    """scikit-learn ``Lasso(alpha).fit(z, y, sample_weight=w).coef_`` (Captum Lime's default
    ``SkLearnLasso(alpha=0.01)``) in NumPy, for installations without scikit-learn: minimises Σ w_i (y_i − b − z_i·c)² / (2 Σ w) + α ‖c‖₁.

    The same algorithm, step for step: weights rescaled to sum to n, weighted centring and
    ``sqrt(w)`` scaling, cyclic coordinate descent from 0 with penalty α·n, gap-safe screening
    before the loop and at every gap check, and the stop when the largest coefficient change of a
    sweep is at most ``tol`` × the largest coefficient and the duality gap is at most ``tol`` ×
    ‖y‖² (or after ``max_iter`` sweeps)."""
    n, m = z.shape
    w = w.astype(np.float64) * (n / float(np.sum(w)))
    a, b = _weighted_centre(z.astype(np.float64), y.astype(np.float64), w)
    xt = np.ascontiguousarray(a.T)  # one row per feature: the coordinate updates read columns
    norm2 = np.einsum("ij,ij->i", xt, xt)
    coef = np.zeros(m)
    r = b.copy()
    l1 = alpha * n
    tol_gap = tol * float(b @ b)
    gap, xta, dual_norm = _gap(xt, b, coef, r, l1)
    if gap <= tol_gap:
        return coef, True
    active = _screen(xt, norm2, coef, r, xta, dual_norm, gap, l1, range(m))
    for sweep in range(max_iter):
        w_max = d_w_max = 0.0
        for j in active:
            if norm2[j] == 0.0:
                continue
            old = coef[j]
            tmp = float(xt[j] @ r) + old * norm2[j]
            new = math.copysign(max(abs(tmp) - l1, 0.0), tmp) / norm2[j]
            if new != old:
                r += (old - new) * xt[j]
                coef[j] = new
            d_w_max = max(d_w_max, abs(new - old))
            w_max = max(w_max, abs(new))
        if w_max == 0.0 or d_w_max / w_max <= tol or sweep == max_iter - 1:
            gap, xta, dual_norm = _gap(xt, b, coef, r, l1)
            if gap <= tol_gap:
                return coef, True
            active = _screen(xt, norm2, coef, r, xta, dual_norm, gap, l1, active)
    return coef, False


# ----------------------------------------------------------------------------- the methods
def _paint(coef: np.ndarray, segments: torch.Tensor) -> torch.Tensor:
    values = torch.as_tensor(coef, dtype=torch.float32, device=segments.device)
    return values[segments]


def _draws(
    request: xplain.ExplainRequest,
    segments: list[torch.Tensor],
    draw: Callable[[int, int, torch.Generator], torch.Tensor],
) -> Iterator[torch.Tensor]:
    n = request.params["n_samples"]
    for seg, gen in zip(segments, request.generators):
        yield draw(n, int(seg.max()) + 1, gen)


def _explain(request: xplain.ExplainRequest, kind: str):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    x = x.detach()
    segments = segments_for(x, params)
    draw = lime_coalitions if kind == "lime" else kernel_shap_coalitions
    coalitions = list(_draws(request, segments, draw))
    per_pass = xplain.images_per_forward_pass(
        model, params["internal_batch"], params["memory_budget_mb"]
    )
    width = params.get("kernel_width", 1.0)
    weigh = (lambda xb, pert: lime_similarity(xb, pert, width)) if kind == "lime" else None
    outputs, weights = masked_outputs(
        model, x, targets, segments, coalitions, params["baseline"], per_pass, weigh
    )
    maps, facts = [], []
    for seg, z, y, sim in zip(segments, coalitions, outputs, weights):
        fact: dict = {"segments": int(seg.max()) + 1}
        zn, yn = z.cpu().numpy(), y.cpu().numpy()
        if kind == "lime":
            assert sim is not None
            coef, fact["lasso_converged"] = lasso(zn, yn, sim.cpu().numpy(), alpha=params["alpha"])
        else:
            w = np.where(
                (zn.sum(axis=1) == 0) | (zn.sum(axis=1) == zn.shape[1]),
                KERNEL_SHAP_INF_WEIGHT,
                1.0,
            )
            coef = least_squares(zn, yn, w)
        maps.append(_paint(coef, seg))
        facts.append(fact)
    return xplain.Attribution(
        torch.stack(maps),
        info={"n_samples": params["n_samples"], "segmentation": params["segmentation"]},
        sample_info=facts,
    )


def explain_lime(request: xplain.ExplainRequest):
    return _explain(request, "lime")


def explain_kernel_shap(request: xplain.ExplainRequest):
    return _explain(request, "kernel-shap")
