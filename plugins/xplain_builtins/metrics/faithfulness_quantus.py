"""Quantus 0.6's faithfulness family: ``faithfulness-correlation``, ``faithfulness-estimate``,
``monotonicity-correlation``, ``region-perturbation``, ``selectivity``, ``infidelity``, ``irof``.

Every perturbed image is an image of the batch with a set of pixels replaced by a baseline
value; they are written into one reused buffer and scored through ``model.infer`` in forward
passes sized by the memory budget (:func:`.faithfulness._score_perturbed`, the same machinery as
deletion/insertion), so a metric with 100 perturbations per image costs 100 forwards of the
batch's images, in a few large passes, never 100 Python-level model calls per image.

A *feature* is a pixel: all channels of a pixel are replaced together (the papers perturb
pixels / patches / superpixels). Quantus 0.6 broadcasts a one-channel map to C×H×W and draws
or ranks single array elements, so on RGB it replaces one channel of a pixel at a time — a
known flaw of its implementation; on one-channel images the two coincide exactly, and that is
where the agreement tests compare. Random draws come from per-image generators
(:mod:`.quantus_family`), so scores are seeded and batch-independent.
"""

import math

import xplain

from .faithfulness import _BUDGET, _chunk, _ranks, _score_perturbed
from .quantus_family import (
    baseline_param,
    baseline_values,
    infer_scores,
    pearson,
    spearman,
)


# ----------------------------------------------------------------------------- machinery
def perturbed_scores(context, per_image, mask_of, value_of, softmax):
    """B×T target scores of perturbed images: image (s, k), k < ``per_image``, is ``x[s]`` with
    the pixels of ``mask_of(s, k0, k1)`` ((k1-k0)×H×W bool) set to ``value_of(s, k0, k1)``
    ((k1-k0)×V values, V = 1 or C, or a (k1-k0)×1×H×W value map)."""
    import torch

    x, targets = context.x, context.targets
    b, c, h, w = x.shape

    def fill(start, stop, out):
        pos = start
        while pos < stop:
            s, k0 = divmod(pos, per_image)
            k1 = min(per_image, k0 + (stop - pos))
            m = mask_of(s, k0, k1).view(k1 - k0, 1, h, w)
            v = value_of(s, k0, k1).to(x.dtype)
            v = v.view(k1 - k0, -1, 1, 1) if v.dim() < 4 else v  # per image, or a value map
            torch.where(m, v, x[s], out=out[pos - start : pos - start + k1 - k0])
            pos += k1 - k0

    scores = _score_perturbed(
        context.model,
        fill,
        b * per_image,
        lambda idx: targets[idx // per_image],
        _chunk(context, x),
        x,
        "prob" if softmax else "logit",
    )
    return scores.view(b, per_image)


def clean_scores(context, softmax):
    return infer_scores(context.model, context.x, context.targets, softmax)


def pixel_map(context, absolute):
    a = context.attribution.maps.to(context.x.device).float()
    return (a.abs() if absolute else a).flatten(1)


def constant_values(context, kind):
    """value_of for a baseline that does not change between perturbations (B values)."""
    v = baseline_values(context.x, kind)[:, 0]
    return lambda s, k0, k1: v[s].expand(k1 - k0)


def drawn_values(context, kind, draws):
    """value_of and the B×draws values: ``uniform`` draws one value per image and perturbation
    from the image's generator, in perturbation order (Quantus' order: one np.random.uniform
    per perturbation call)."""
    gens = xplain.sample_generators(context.x, int(context.seed)) if kind == "uniform" else None
    values = baseline_values(context.x, kind, gens, draws)
    return (lambda s, k0, k1: values[s, k0:k1]), values


def patch_ids(h, w, patch, device):
    """H×W patch index of every pixel on Quantus' grid: the image is padded to a multiple of
    ``patch`` (floor half before, ceil half after, utils.get_padding_size) and cut into
    patch×patch blocks numbered row by row; returns (ids, number of patches)."""
    import torch

    def pads(dim):
        extra = (-dim) % patch
        return extra // 2

    nh, nw = math.ceil(h / patch), math.ceil(w / patch)
    rows = (torch.arange(h, device=device) + pads(h)) // patch
    cols = (torch.arange(w, device=device) + pads(w)) // patch
    return rows[:, None] * nw + cols[None, :], nh * nw


def patch_sums(a, ids, n):
    """B×n sums of a B×HW map over each patch."""
    import torch

    out = torch.zeros(a.shape[0], n, device=a.device, dtype=torch.float64)
    return out.index_add_(1, ids.flatten(), a.double())


# ----------------------------------------------------------------------------- correlation
def draw_subsets(x, n, runs, size, seed):
    """B×runs×size pixel indices: for each image and run, ``size`` distinct pixels (a seeded
    permutation's head), from the image's own generator."""
    import torch

    rows = []
    for g in xplain.sample_generators(x, seed):
        rows.append(
            torch.stack(
                [torch.randperm(n, generator=g, device=g.device)[:size] for _ in range(runs)]
            )
        )
    return torch.stack(rows).to(x.device)


def _faithfulness_correlation(context: xplain.MetricContext):
    import torch

    p = context.params
    x = context.x
    b, c, h, w = x.shape
    n = h * w
    a = pixel_map(context, p["absolute"])
    runs, size = int(p["nr_runs"]), min(int(p["subset_size"]), n)
    subsets = draw_subsets(x, n, runs, size, int(context.seed))

    def mask_of(s, k0, k1):
        m = torch.zeros(k1 - k0, n, dtype=torch.bool, device=x.device)
        return m.scatter_(1, subsets[s, k0:k1], True)

    value_of, _ = drawn_values(context, p["baseline"], runs)
    y = clean_scores(context, p["softmax"])
    pert = perturbed_scores(context, runs, mask_of, value_of, p["softmax"])
    sums = a.gather(1, subsets.flatten(1)).view(b, runs, size).sum(2)
    return {"faithfulness-correlation": pearson(sums, y[:, None] - pert)}


def _step_of_pixel(a, step, descending):
    """B×HW: which perturbation step removes each pixel (pixels ranked by the map)."""
    return _ranks(a, descending=descending) // step


def _faithfulness_estimate(context: xplain.MetricContext):
    import torch

    p = context.params
    x = context.x
    b = x.shape[0]
    a = pixel_map(context, p["absolute"])
    n = a.shape[1]
    step = int(p["features_in_step"])
    steps = math.ceil(n / step)
    which = _step_of_pixel(a, step, True)

    def mask_of(s, k0, k1):
        return which[s][None, :] == torch.arange(k0, k1, device=x.device)[:, None]

    value_of, _ = drawn_values(context, p["baseline"], steps)
    y = clean_scores(context, p["softmax"])
    pert = perturbed_scores(context, steps, mask_of, value_of, p["softmax"])
    sums = torch.zeros(b, steps, device=x.device, dtype=torch.float64).scatter_add_(
        1, which, a.double()
    )
    return {"faithfulness-estimate": pearson(sums, y[:, None] - pert)}


def _monotonicity_correlation(context: xplain.MetricContext):
    import torch

    p = context.params
    x = context.x
    b = x.shape[0]
    a = pixel_map(context, p["absolute"])
    n = a.shape[1]
    step, samples = int(p["features_in_step"]), int(p["nr_samples"])
    steps = math.ceil(n / step)
    which = _step_of_pixel(a, step, False)  # ascending: least relevant first (Nguyen et al.)

    def mask_of(s, k0, k1):
        ks = torch.arange(k0, k1, device=x.device) // samples
        return which[s][None, :] == ks[:, None]

    value_of, _ = drawn_values(context, p["baseline"], steps * samples)
    y = clean_scores(context, p["softmax"]).double()
    pert = perturbed_scores(context, steps * samples, mask_of, value_of, p["softmax"]).double()
    inv = torch.where(y.abs() >= float(p["eps"]), 1 / y.abs(), torch.ones_like(y)) ** 2
    var = ((pert.view(b, steps, samples) - y[:, None, None]) ** 2).mean(2) * inv[:, None]
    atts = torch.zeros(b, steps, device=x.device, dtype=torch.float64).scatter_add_(
        1, which, a.double()
    )
    return {"monotonicity-correlation": spearman(atts, var)}


# ----------------------------------------------------------------------------- patch curves
def _patch_order(context, a, patch, order):
    """(ids H×W, patch rank B×P: 0 = removed first, P)."""
    import torch

    x = context.x
    h, w = x.shape[2:]
    ids, count = patch_ids(h, w, patch, x.device)
    sums = patch_sums(a, ids, count)
    if order == "random":
        perms = [
            torch.randperm(count, generator=g, device=g.device)
            for g in xplain.sample_generators(x, int(context.seed))
        ]
        ranks = torch.empty(len(perms), count, dtype=torch.long, device=x.device)
        for i, perm in enumerate(perms):
            ranks[i, perm.to(x.device)] = torch.arange(count, device=x.device)
    else:
        ranks = _ranks(sums, descending=order == "morf")
    return ids, ranks, count


def _cumulative_patches(context, ranks, ids, regions, kind):
    """Scores after removing the first 1..regions patches (cumulatively), B×regions."""
    pixel_rank = ranks[:, ids.flatten()]  # B×HW rank of each pixel's patch

    def mask_of(s, k0, k1):
        import torch

        return pixel_rank[s][None, :] <= torch.arange(k0, k1, device=ids.device)[:, None]

    if kind == "uniform":  # one U(0, 1) value per image and patch (Quantus: per removal call)
        gens = xplain.sample_generators(context.x, int(context.seed))
        draws = baseline_values(context.x, "uniform", gens, ranks.shape[1])  # B×P, removal order
        h, w = context.x.shape[2:]
        value_map = draws.gather(1, pixel_rank).view(-1, 1, 1, h, w)

        def value_of(s, k0, k1):
            return value_map[s].expand(k1 - k0, 1, h, w)
    else:
        value_of = constant_values(context, kind)
    return perturbed_scores(context, regions, mask_of, value_of, context.params["softmax"])


def _region_perturbation(context: xplain.MetricContext):
    p = context.params
    a = pixel_map(context, p["absolute"])
    ids, ranks, count = _patch_order(context, a, int(p["patch_size"]), p["order"])
    regions = min(int(p["regions_evaluation"]), count)
    curve = _cumulative_patches(context, ranks, ids, regions, p["baseline"])
    drops = clean_scores(context, p["softmax"])[:, None] - curve
    return {
        "region-perturbation": trapezoid(drops),
        "region-perturbation-curve": drops,
        "region-perturbation-curve@x": _steps(regions, drops),
    }


def _selectivity(context: xplain.MetricContext):
    p = context.params
    a = pixel_map(context, p["absolute"])
    ids, ranks, count = _patch_order(context, a, int(p["patch_size"]), "morf")
    curve = _cumulative_patches(context, ranks, ids, count, p["baseline"])
    return {
        "selectivity": trapezoid(curve),
        "selectivity-curve": curve,
        "selectivity-curve@x": _steps(count, curve),
    }


def trapezoid(curve):
    """Quantus' AUC (utils.calculate_auc): np.trapz with dx = 1 along each row."""
    if curve.shape[1] < 2:
        return curve[:, 0] * 0
    return curve[:, 1:-1].sum(1) + (curve[:, 0] + curve[:, -1]) / 2


def _steps(n, like):
    import torch

    return torch.arange(1, n + 1, device=like.device, dtype=torch.float32)


# ----------------------------------------------------------------------------- infidelity
def _infidelity(context: xplain.MetricContext):
    import torch

    p = context.params
    x = context.x
    b, c, h, w = x.shape
    a = pixel_map(context, p["absolute"])
    y = clean_scores(context, p["softmax"])
    kind = p["baseline"]
    if p["perturbation"] == "noise":
        return {"infidelity": _infidelity_noise(context, a, y)}
    repeats = int(p["n_perturb_samples"]) if kind == "uniform" else 1
    losses = []
    for size in [int(v) for v in str(p["perturb_patch_sizes"]).split(",") if v.strip()]:
        ids, count = patch_ids(h, w, size, x.device)
        flat_ids = ids.flatten()
        per_image = count * repeats

        def mask_of(s, k0, k1, flat_ids=flat_ids, count=count):
            ks = torch.arange(k0, k1, device=x.device) % count
            return flat_ids[None, :] == ks[:, None]

        value_of, values = drawn_values(context, kind, per_image)
        pert = perturbed_scores(context, per_image, mask_of, value_of, p["softmax"])
        # sum(a · (x - x_perturbed)): inside the patch every channel changes by x_c - v
        ax = patch_sums(a * x.detach().float().sum(1).flatten(1), ids, count)
        a_patch = patch_sums(a, ids, count)
        v = values.double().view(b, repeats, count)
        a_sums = ax[:, None, :] - c * v * a_patch[:, None, :]  # B×repeats×P
        deltas = (y[:, None] - pert).double().view(b, repeats, count)
        losses.append(((deltas - a_sums) ** 2).mean(2).mean(1))
    return {"infidelity": torch.stack(losses, 1).mean(1).float()}


def _infidelity_noise(context, a, y):
    """Yeh et al.'s Gaussian perturbation (Captum's infidelity, as LATEC runs it): I ~ N(0,
    noise_std²) on every element, x' = x - I, mean over n_perturb_samples of (sum(a · I) -
    (f(x) - f(x')))², with the map broadcast over the channels."""
    import torch

    p = context.params
    x = context.x
    b = x.shape[0]
    draws = int(p["n_perturb_samples"])
    from .robustness import draw_noise

    noise = draw_noise(x, context.seed, draws, "normal", 0.0, float(p["noise_std"]))  # K×B×C×H×W
    a_sums = (noise.double() * a.double().view(1, b, 1, *x.shape[2:])).flatten(2).sum(2)  # K×B

    def fill(start, stop, out):  # image s*K + k: x[s] - noise k
        for pos in range(start, stop):
            s, k = divmod(pos, draws)
            torch.sub(x[s], noise[k, s].to(x.dtype), out=out[pos - start])

    pert = _score_perturbed(
        context.model,
        fill,
        b * draws,
        lambda idx: context.targets[idx // draws],
        _chunk(context, x),
        x,
        "prob" if p["softmax"] else "logit",
    ).view(b, draws)
    deltas = (y[:, None] - pert).double()
    return ((a_sums.T - deltas) ** 2).mean(1).float()


# ----------------------------------------------------------------------------- IROF
def slic_segments(x, n_segments, compactness):
    """B×H×W superpixel labels 0..S-1 from scikit-image's SLIC on each model input (H×W×C,
    float64: Quantus' get_superpixel_segments), computed on the CPU."""
    import torch

    try:
        from skimage.segmentation import slic
    except ImportError:
        raise xplain.UsageError(
            "metric 'irof' needs scikit-image for its SLIC superpixels (pip install 'xplain[segments]')"
        ) from None
    out = []
    for img in x.detach().cpu().double().numpy():
        seg = slic(
            img.transpose(1, 2, 0),
            n_segments=int(n_segments),
            compactness=float(compactness),
            start_label=0,
            channel_axis=-1,
        )
        out.append(torch.from_numpy(seg.astype("int64")))
    return torch.stack(out).to(x.device)


def _irof(context: xplain.MetricContext):
    import torch

    p = context.params
    x = context.x
    b, c, h, w = x.shape
    a = pixel_map(context, p["absolute"])
    seg = slic_segments(x, p["n_segments"], p["compactness"]).flatten(1)  # B×HW
    counts = seg.max(1).values + 1
    top = int(counts.max())
    sums = torch.zeros(b, top, device=x.device, dtype=torch.float64).scatter_add_(
        1, seg, a.double()
    )
    sizes = torch.zeros(b, top, device=x.device, dtype=torch.float64).scatter_add_(
        1, seg, torch.ones_like(a, dtype=torch.float64)
    )
    means = torch.where(sizes > 0, sums / sizes.clamp_min(1), torch.full_like(sums, -math.inf))
    seg_rank = _ranks(means, descending=True)  # 0 = the most relevant segment
    pixel_rank = seg_rank.gather(1, seg)
    if p["baseline"] == "mean":  # the paper's: each channel's mean over the image
        per_channel = x.detach().float().mean((2, 3))

        def value_of(s, k0, k1):
            return per_channel[s][None, :].expand(k1 - k0, c)
    else:
        value_of = constant_values(context, p["baseline"])

    def mask_of(s, k0, k1):
        return pixel_rank[s][None, :] <= torch.arange(k0, k1, device=x.device)[:, None]

    y = clean_scores(context, True)
    pert = perturbed_scores(context, top, mask_of, value_of, True)
    ratio = (pert / y[:, None]).double()
    k = torch.arange(top, device=x.device)
    valid = k[None, :] < counts[:, None]
    ratio = torch.where(valid, ratio, torch.zeros_like(ratio))
    # area under the curve over its first count points (trapezoid, dx = 1), per image
    last = ratio.gather(1, (counts - 1)[:, None])[:, 0]
    area = ratio.sum(1) - ratio[:, 0] / 2 - last / 2
    area = torch.where(counts > 1, area, torch.zeros_like(area))
    return {"irof": (counts.double() - area).float(), "irof-segments": counts.float()}


# ----------------------------------------------------------------------------- registration
_ABS = xplain.Param("absolute", "bool", False, "use |map| (Quantus' abs)")


def _softmax(default):
    return xplain.Param(
        "softmax",
        "bool",
        default,
        "score the softmax probability of the target (true) or its logit (false); the default "
        "is Quantus' for this metric",
    )


_PIXELS = (
    " Features are pixels (all channels replaced together). Quantus 0.6 perturbs single "
    "channel elements of a broadcast map on RGB inputs (one channel of a pixel at a time), "
    "which the paper does not; on one-channel inputs the two are identical. Forwards: through "
    "model.infer, batched by memory_budget_mb. Seeded per image (--seed), batch-independent."
)
_BASELINE_NOTE = (
    " Baselines are computed from the unperturbed image (Quantus' 'black' = the image's "
    "minimum, the same after any replacement by it)."
)


@xplain.hookimpl
def register_metrics(register):
    register(
        xplain.Metric(
            name="faithfulness-correlation",
            summary="Pearson r between the map's sum over random pixel subsets and the logit drop when they are removed (Bhatt et al. 2020)",
            description="Bhatt et al. 2020, as Quantus 0.6's FaithfulnessCorrelation: for nr_runs "
            "(100) random subsets of subset_size (224) pixels, replaced by the baseline (black), "
            "the Pearson correlation between sum(map over the subset) and the drop of the target "
            "logit (softmax=false, Quantus' default), per image. NaN when either varies not at "
            "all. subset_size is capped at the number of pixels." + _PIXELS,
            score=_faithfulness_correlation,
            higher_is_better=True,
            params=[
                xplain.Param("nr_runs", "int", 100, "random subsets per image", min=2, max=100000),
                xplain.Param("subset_size", "int", 224, "pixels per subset", min=1, max=10**8),
                baseline_param("black"),
                _softmax(False),
                _ABS,
                _BUDGET,
            ],
        )
    )
    register(
        xplain.Metric(
            name="faithfulness-estimate",
            summary="Pearson r between each pixel group's relevance and the logit drop when it alone is removed (Alvarez-Melis & Jaakkola 2018)",
            description="Alvarez-Melis & Jaakkola 2018, as Quantus 0.6's FaithfulnessEstimate: pixels "
            "ranked by the map (highest first, ties in pixel order) are cut into groups of "
            "features_in_step (1); each group alone (not cumulatively) is replaced by the "
            "baseline (black), and the Pearson correlation between the groups' map sums and the "
            "drops of the target logit (softmax=false) is the score. Cost: ceil(H*W / "
            "features_in_step) forwards per image (50176 at 224x224 with the default)."
            + _PIXELS
            + _BASELINE_NOTE,
            score=_faithfulness_estimate,
            higher_is_better=True,
            params=[
                xplain.Param("features_in_step", "int", 1, "pixels per group", min=1, max=10**8),
                baseline_param("black"),
                _softmax(False),
                _ABS,
                _BUDGET,
            ],
        )
    )
    register(
        xplain.Metric(
            name="monotonicity-correlation",
            summary="Spearman rho between pixel relevance and the variance of the prediction when it is noised (Nguyen & Martinez 2020)",
            description="Nguyen & Martinez 2020, as Quantus 0.6's MonotonicityCorrelation: |map| "
            "(absolute=true) ranks pixels ascending; each group of features_in_step (1) pixels "
            "is replaced nr_samples (100) times by a uniform U(0, 1) value (one per image and "
            "draw), and var_k = mean((p_perturbed - p)^2) / p^2 (p = the target's softmax "
            "probability; 1 instead of 1/p^2 when p < eps = 1e-5); the score is Spearman's rho "
            "between the groups' relevance sums and var_k. Cost: ceil(H*W / features_in_step) * "
            "nr_samples forwards per image (Quantus' defaults: 5 million at 224x224; raise "
            "features_in_step)." + _PIXELS,
            score=_monotonicity_correlation,
            higher_is_better=True,
            params=[
                xplain.Param("nr_samples", "int", 100, "draws per pixel group", min=1, max=100000),
                xplain.Param("features_in_step", "int", 1, "pixels per group", min=1, max=10**8),
                xplain.Param("eps", "float", 1e-5, "smallest p inverted", min=0.0),
                baseline_param("uniform"),
                _softmax(True),
                xplain.Param("absolute", "bool", True, "use |map| (Quantus' abs, default true)"),
                _BUDGET,
            ],
        )
    )
    patch = xplain.Param("patch_size", "int", 8, "patch side in pixels", min=1, max=4096)
    grid = (
        " Patches: the image is padded to a multiple of patch_size (half before, half after, "
        "as Quantus) and cut into patch_size x patch_size blocks; a block's relevance is the "
        "sum of the map over its pixels; removal is cumulative."
    )
    register(
        xplain.Metric(
            name="region-perturbation",
            summary="AUC of the target probability's drop as patches are removed, most relevant first (Samek et al. 2016; Quantus RegionPerturbation)",
            description="Samek et al. 2016, as Quantus 0.6's RegionPerturbation: patches are "
            "removed in order (morf: most relevant first, default; lerf; random: a seeded "
            "permutation per image) and replaced by the baseline (black); the curve is p(x) - "
            "p(x_k) after k = 1..regions_evaluation (100) patches (softmax probability of the "
            "target), the score its area (trapezoid with dx = 1, Quantus' get_auc_score, "
            "higher is better for morf)." + grid + _PIXELS + _BASELINE_NOTE,
            score=_region_perturbation,
            higher_is_better=True,
            params=[
                patch,
                xplain.Param(
                    "order", "str", "morf", "removal order", choices=("morf", "lerf", "random")
                ),
                xplain.Param("regions_evaluation", "int", 100, "patches removed", min=1, max=10**7),
                baseline_param("black"),
                _softmax(True),
                _ABS,
                _BUDGET,
            ],
            curves={"region-perturbation-curve": "patches removed"},
        )
    )
    register(
        xplain.Metric(
            name="selectivity",
            summary="AUC of the target probability as patches are removed, most relevant first (Montavon et al. 2018; Quantus Selectivity)",
            description="Montavon et al. 2018, as Quantus 0.6's Selectivity: all patches are removed "
            "most relevant first and replaced by the baseline (black); the curve is the target's "
            "softmax probability after each removal and the score its area (trapezoid, dx = 1, "
            "Quantus' get_auc_score; lower is better: a faithful map makes it fall fast)."
            + grid
            + _PIXELS
            + _BASELINE_NOTE,
            score=_selectivity,
            higher_is_better=False,
            params=[patch, baseline_param("black"), _softmax(True), _ABS, _BUDGET],
            curves={"selectivity-curve": "patches removed"},
        )
    )
    register(
        xplain.Metric(
            name="infidelity",
            summary="mean squared error between the map's predicted and the model's actual logit change under patch removal (Yeh et al. 2019)",
            description="Yeh et al. 2019 with square-removal perturbations, as Quantus 0.6's "
            "Infidelity: for each patch (perturb_patch_sizes, comma-separated, default 4) the "
            "patch alone is replaced by the baseline (black) and (sum(a * (x - x_perturbed)) - "
            "(f(x) - f(x_perturbed)))^2 is averaged over the patches (f = the target logit), "
            "then over the sizes. Deviation: Quantus 0.6 removes the patches cumulatively (the "
            "k-th perturbation removes k patches), which is not the paper's perturbation "
            "distribution; a single patch agrees exactly. With baseline=uniform "
            "n_perturb_samples (10) draws are averaged; deterministic baselines need one (Quantus "
            "repeats identical passes). perturbation=noise is Yeh et al.'s Gaussian "
            "perturbation as Captum's infidelity (and LATEC) computes it: x' = x - I, I ~ N(0, "
            "noise_std^2) (0.005) on every element, n_perturb_samples draws, error (sum(a · I) - "
            "(f(x) - f(x')))^2 with the map broadcast over the channels. Lower is better; 0 for "
            "the exact attribution of a linear model." + _PIXELS,
            score=_infidelity,
            higher_is_better=False,
            params=[
                xplain.Param("perturb_patch_sizes", "str", "4", "patch sizes, comma-separated"),
                xplain.Param(
                    "n_perturb_samples",
                    "int",
                    10,
                    "draws (uniform baseline, or noise)",
                    min=1,
                    max=10000,
                ),
                xplain.Param(
                    "perturbation",
                    "str",
                    "patch",
                    "patch: square removal (Quantus); noise: x - N(0, noise_std^2) (Yeh et al., "
                    "Captum, LATEC)",
                    choices=("patch", "noise"),
                ),
                xplain.Param("noise_std", "float", 0.005, "std of the noise", min=0.0),
                baseline_param("black"),
                _softmax(False),
                _ABS,
                _BUDGET,
            ],
        )
    )
    register(
        xplain.Metric(
            name="irof",
            summary="area over the curve of the target probability as SLIC superpixels are removed, most relevant first (Rieger & Hansen 2020)",
            description="Rieger & Hansen 2020, as Quantus 0.6's IROF: scikit-image SLIC superpixels "
            "of the model input (n_segments 100, compactness 10, skimage's defaults as Quantus) "
            "are ranked by their mean relevance and removed cumulatively, most relevant first; "
            "with p_k the target's softmax probability after k removals, IROF = S - "
            "trapezoid(p_1/p_0 .. p_S/p_0) (S segments; Quantus' aoc). Higher is better. "
            "Baseline mean (default, the paper's): each channel's mean over the image. "
            "Deviations from Quantus 0.6: its IROF fails on every RGB input (its mask is "
            "B×1×H×W, its image B×C×H×W) and its 'mean' is the mean over the whole batch of the "
            "already perturbed images, recomputed at each step; on one-channel images with a "
            "black baseline the two agree. Needs scikit-image. irof-segments reports S.",
            score=_irof,
            higher_is_better=True,
            params=[
                xplain.Param("n_segments", "int", 100, "SLIC's n_segments", min=1, max=10**6),
                xplain.Param("compactness", "float", 10.0, "SLIC's compactness", min=1e-6),
                xplain.Param(
                    "baseline",
                    "str",
                    "mean",
                    "mean = per-channel image mean (paper); black/white/zero as the others",
                    choices=("mean", "black", "white", "zero"),
                ),
                _ABS,
                _BUDGET,
            ],
            directions={"irof-segments": True},
        )
    )
