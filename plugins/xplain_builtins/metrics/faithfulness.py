"""Faithfulness metrics: does changing the pixels a map ranks high change the prediction?

``deletion`` / ``insertion`` (RISE), ``pixel-perturbation`` (MoRF/LeRF, TR-GBP Figure 6) and
``sensitivity-n`` (Ancona et al.). They need only the model.

Cost: one forward pass per perturbed image is the floor, and these metrics stay at it (profiled
on EfficientNet-Lite0 at 224x224: the forward is > 98 % of a deletion call; ranking the map and
writing the perturbed images are below 1 %). Perturbed images are written into one reused buffer
on the model's device (``torch.where`` with ``out=``, never a fresh B×C×H×W tensor per step) and
scored under ``torch.inference_mode`` in forward passes sized like the forward-only methods'
passes (:func:`xplain.images_per_forward_pass` with the metric's ``memory_budget_mb``, the same
rule on CPU and CUDA): on a CPU, 16 images of 224x224 per forward spill the caches and make the
kernel zero fresh pages for every pass, 1.8x the cost per image of 3 (Lite0), and 64 cost more.
``context.forward_batch`` overrides the size. Sensitivity-n's random subsets depend only on the
image size, the subset sizes and the seed, so they are drawn once per process (6.6 s at its
defaults at 224x224), not once per batch.
"""

import xplain

#: model-likes without shape information (no ``xplain.Model``): input bytes per forward pass
_FALLBACK_INPUT_BYTES = 2 * 2**20
_FALLBACK_MAX_CHUNK = 256

_BUDGET = xplain.Param(
    "memory_budget_mb",
    "float",
    0.0,
    "activation memory one forward pass of perturbed images may use (the images whose live "
    "activations, a forward's peak, fit: xplain.images_per_forward_pass, as the forward-only "
    "methods); 0 = a quarter of the free memory, at most 256 MB with no single activation over "
    "16 MB on the CPU, at most 4096 MB on a GPU. Never changes a score",
    min=0.0,
    max=1e7,
)


def _chunk(context, x):
    """Perturbed images per forward pass: the context's ``forward_batch``, else as many as fit
    the metric's ``memory_budget_mb`` at one image's forward peak
    (``xplain.images_per_forward_pass``)."""
    given = context.forward_batch
    if given:
        return int(given)
    budget = float(context.params.get("memory_budget_mb", 0.0) or 0.0)
    try:
        return xplain.images_per_forward_pass(context.model, 0, budget)
    except AttributeError:  # a model-like without xplain.Model's shape propagation
        per_image = max(1, x[0].numel() * x.element_size())
        return max(1, min(_FALLBACK_MAX_CHUNK, _FALLBACK_INPUT_BYTES // per_image))


def _forward_scores(model, batch, targets, kind):
    import torch

    from .quantus_family import logits as forward

    logits = forward(model, batch)  # the run's forward engine; plain callables run as they are
    scores = torch.softmax(logits, dim=1) if kind == "prob" else logits
    return scores.gather(1, targets[:, None])[:, 0]


def _score_perturbed(model, fill, count, targets_of, chunk, like, kind="prob"):
    """Score ``count`` perturbed images; returns a (count,) tensor.

    ``fill(start, stop, out)`` writes images ``start..stop-1`` into ``out`` (a view of one buffer
    reused for every chunk); ``targets_of(idx)`` gives their targets. ``kind`` "prob": softmax
    probability of the target (RISE, Samek); "logit": the raw logit. On CUDA out-of-memory the
    chunk is halved and the forward retried."""
    import torch

    result = torch.empty(count, device=like.device, dtype=torch.float32)
    buffer = None
    start = 0
    # inference mode (no autograd bookkeeping at all, ~1.5 % of a Lite0 forward over no_grad);
    # the buffer and the logits are inference tensors that never leave this loop, ``result`` is
    # an ordinary tensor written in place
    with torch.inference_mode():
        while start < count:
            stop = min(start + chunk, count)
            try:
                if buffer is None or buffer.shape[0] < stop - start:
                    buffer = torch.empty(
                        (min(chunk, count),) + tuple(like.shape[1:]),
                        device=like.device,
                        dtype=like.dtype,
                    )
                out = buffer[: stop - start]
                fill(start, stop, out)
                idx = torch.arange(start, stop, device=like.device)
                result[start:stop] = _forward_scores(model, out, targets_of(idx), kind)
            except torch.cuda.OutOfMemoryError:
                if chunk == 1:
                    raise
                chunk = max(1, chunk // 2)  # out of GPU memory: halve the chunk and retry
                buffer = None
                torch.cuda.empty_cache()
                continue
            start = stop
            xplain.report_progress(stop, count, "perturbed images")
    return result


def _ranks(values, descending=True):
    """rank[b, i] = position of pixel i when sorted (0 = first removed); stable for ties."""
    import torch

    order = torch.argsort(values, dim=1, descending=descending, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(values.shape[1], device=values.device).expand_as(order))
    return ranks


def auc(curve):
    """Normalised trapezoid area of curves sampled at equal steps on [0, 1] (RISE's ``auc``)."""
    t = curve.shape[-1]
    if t < 2:
        return curve[..., 0]
    return (curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / (t - 1)


def _perturbation_curve(model, base, other, ranks, counts, targets, chunk):
    """Target probability of ``base`` with the pixels of rank < counts[t] taken from ``other``.

    base, other: B×C×H×W; ranks: B×HW; counts: T ints. Returns B×T. Image ``s*T + k`` of the
    flattened order is step k of sample s; a chunk covers a few samples' consecutive steps, each
    written with one broadcasting ``torch.where`` (no copy of ``base``/``other`` per step)."""
    import torch

    b, c, h, w = base.shape
    t = counts.numel()

    def fill(start, stop, out):
        pos = start
        while pos < stop:
            s, k0 = divmod(pos, t)
            k1 = min(t, k0 + (stop - pos))
            mask = (ranks[s][None, :] < counts[k0:k1, None]).view(k1 - k0, 1, h, w)
            torch.where(mask, other[s], base[s], out=out[pos - start : pos - start + k1 - k0])
            pos += k1 - k0

    return _score_perturbed(model, fill, b * t, lambda idx: targets[idx // t], chunk, base).view(
        b, t
    )


def gaussian_blur(x, size, sigma):
    """Per-channel Gaussian blur with zero padding (as RISE's ``blur`` with conv2d, padding=k//2)."""
    import torch
    import torch.nn.functional as F

    r = torch.arange(size, device=x.device, dtype=x.dtype) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k2 = g[:, None] * g[None, :]
    k2 = k2 / k2.sum()
    c = x.shape[1]
    return F.conv2d(x, k2.expand(c, 1, size, size).contiguous(), padding=size // 2, groups=c)


def _step(params, h, w):
    return int(params["step"]) if int(params["step"]) > 0 else w


def _deletion_insertion(kind, key=None):
    """Deletion (zeros in), insertion (blurred copy out) or, with ``key="pixel-flipping"``,
    Quantus' PixelFlipping: deletion towards the ``baseline`` parameter."""
    key = key or kind

    def score(context: xplain.MetricContext):
        model, x, targets, attribution = (
            context.model,
            context.x,
            context.targets,
            context.attribution,
        )
        import torch

        params = context.params
        b, c, h, w = x.shape
        step = _step(params, h, w)
        n = h * w
        counts = torch.tensor([min(k * step, n) for k in range(-(-n // step) + 1)], device=x.device)
        ranks = _ranks(attribution.maps.reshape(b, n).to(x.device))
        if kind == "deletion":
            base, other = x, torch.zeros_like(x)
            if params.get("baseline", "zero") == "black":  # Quantus: the image's minimum
                other = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x).contiguous()
        else:
            base, other = gaussian_blur(x, int(params["blur_size"]), float(params["blur_sigma"])), x
        curve = _perturbation_curve(model, base, other, ranks, counts, targets, _chunk(context, x))
        return {key: auc(curve), f"{key}-curve": curve}

    return score


def _pixel_perturbation(context: xplain.MetricContext):
    model, x, targets, attribution = context.model, context.x, context.targets, context.attribution
    import torch
    import torch.nn.functional as F

    params = context.params
    b, c, h, w = x.shape
    tile, steps = int(params["tile"]), int(params["steps"])
    m = attribution.maps.to(x.device, torch.float32)
    if params["absolute"]:
        m = m.abs()
    rel = F.avg_pool2d(m[:, None], tile, ceil_mode=True)[
        :, 0
    ]  # tile relevance (mean over the tile)
    th, tw = rel.shape[1:]
    tiles = th * tw
    counts = torch.tensor([round(k * tiles / steps) for k in range(steps + 1)], device=x.device)
    if params["baseline"] == "mean":
        sub = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    else:
        sub = torch.zeros_like(x)

    def pixel_ranks(tile_ranks):  # a pixel takes its tile's rank
        r = (
            tile_ranks.view(b, th, tw)
            .repeat_interleave(tile, 1)
            .repeat_interleave(tile, 2)[:, :h, :w]
        )
        return r.reshape(b, h * w)

    flat = rel.reshape(b, tiles)
    chunk = _chunk(context, x)
    morf = _perturbation_curve(
        model, x, sub, pixel_ranks(_ranks(flat, True)), counts, targets, chunk
    )
    lerf = _perturbation_curve(
        model, x, sub, pixel_ranks(_ranks(flat, False)), counts, targets, chunk
    )
    a_morf, a_lerf = auc(morf), auc(lerf)
    return {
        "pixel-perturbation": a_lerf - a_morf,
        "morf": a_morf,
        "lerf": a_lerf,
        "morf-curve": morf,
        "lerf-curve": lerf,
    }


#: the last subsets drawn: ``(n_pix, ns, subsets, seed) -> {device: (len(ns)·subsets)×HW bool}``
_MASKS: dict = {}


def _subset_masks(n_pix, ns, subsets, seed, device):
    """Sensitivity-n's subsets (``subsets`` per n in ``ns``, set pixels = True), drawn on the CPU
    from ``seed`` (the same masks on every device) and kept for the next call: they depend on
    nothing else, and drawing them (an argsort of subsets × n_pix per n) costs 6.6 s at the
    defaults at 224x224, 8 % of a batch of 2. One entry; never modified by callers."""
    import torch

    key = (n_pix, ns, subsets, seed)
    found = _MASKS.get(key)
    if found is None:
        gen = torch.Generator().manual_seed(seed)
        rows = []
        for n in ns:  # masks are shared by all images (as InputIBA does)
            order = torch.rand(subsets, n_pix, generator=gen).argsort(dim=1)[:, :n]
            rows.append(torch.zeros(subsets, n_pix, dtype=torch.bool).scatter_(1, order, True))
        found = {torch.device("cpu"): torch.cat(rows)}
        _MASKS.clear()
        _MASKS[key] = found
    device = torch.device(device)
    if device not in found:
        found[device] = found[torch.device("cpu")].to(device)
    return found[device]


def _sensitivity_n(context: xplain.MetricContext):
    model, x, targets, attribution = context.model, context.x, context.targets, context.attribution
    import hashlib
    import math

    import torch

    params = context.params
    b, c, h, w = x.shape
    n_pix = h * w
    subsets, num_n = int(params["subsets"]), int(params["num_n"])
    top = max(1.0, float(params["max_fraction"]) * n_pix)
    ns = sorted(
        {
            max(1, int(v))
            for v in torch.logspace(0, math.log10(top), num_n, dtype=torch.float64).tolist()
        }
    )
    seed = int(context.seed)
    # The perturbed forward passes depend on the image, the target and the masks — not on the
    # method — so they are cached for the batch and shared by every method evaluated on it.
    digest = hashlib.blake2b(
        x.detach().float().cpu().numpy().tobytes() + targets.detach().cpu().numpy().tobytes(),
        digest_size=16,
    ).hexdigest()
    key = ("sensitivity-n", digest, tuple(ns), subsets, seed)
    cache = context.cache
    if cache is not None and key in cache:
        masks, delta = cache[key]
    else:
        masks = _subset_masks(n_pix, tuple(ns), subsets, seed, x.device)
        total = masks.shape[0]
        with torch.inference_mode():
            clean = model.infer(x).float().gather(1, targets[:, None])[:, 0]

        def fill(start, stop, out):  # image s*total + k: sample s with subset k set to zero
            pos = start
            while pos < stop:
                s, k0 = divmod(pos, total)
                k1 = min(total, k0 + (stop - pos))
                drop = masks[k0:k1].view(k1 - k0, 1, h, w)
                torch.where(drop, zero, x[s], out=out[pos - start : pos - start + k1 - k0])
                pos += k1 - k0

        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        pert = _score_perturbed(
            model,
            fill,
            b * total,
            lambda idx: targets[idx // total],
            _chunk(context, x),
            x,
            "logit",
        )
        delta = clean[:, None] - pert.view(b, total)
        if cache is not None:
            cache[key] = (masks, delta)
    sums = (
        attribution.maps.to(x.device, torch.float32).reshape(b, n_pix) @ masks.T.float()
    )  # B×total
    a = sums.view(b, len(ns), subsets)
    d = delta.view(b, len(ns), subsets)
    a = a - a.mean(-1, keepdim=True)
    d = d - d.mean(-1, keepdim=True)
    denom = a.norm(dim=-1) * d.norm(dim=-1)
    corr = torch.where(denom > 0, (a * d).sum(-1) / denom.clamp_min(1e-30), torch.zeros_like(denom))
    xs = torch.tensor(ns, dtype=torch.float32, device=x.device)
    return {
        "sensitivity-n": corr.mean(dim=1),
        "sensitivity-n-curve": corr,
        "sensitivity-n-curve@x": xs,
    }


_DEL_INS_COMMON = (
    "Pixels are ranked by the signed map value (highest first; ties keep pixel order), and "
    "`step` pixels change per step (0 = the image width, which is RISE's 224 at 224x224), so "
    "the curve has ceil(H*W/step)+1 points including the start. The score is the softmax "
    "probability of the evaluated target (xplain eval's target: the label when the data has one, "
    "else the top-1 class; RISE always uses the top-1 class). AUC = normalised trapezoid "
    "(sum - first/2 - last/2)/(T-1), per image; eval reports the mean of per-image AUCs (RISE "
    "reports the AUC of the mean curve — the two agree because AUC is linear)."
)


@xplain.hookimpl
def register_metrics(register):
    step = xplain.Param(
        "step", "int", 0, "pixels changed per step (0 = image width)", min=0, max=1000000
    )
    register(
        xplain.Metric(
            name="deletion",
            summary="RISE deletion AUC: target probability as top pixels are set to zero (lower is better)",
            description="Petsiuk et al. 2018 (RISE), as in eclique/RISE evaluation.py. Starting from the "
            "image, the most relevant pixels are replaced by zeros in the model's input space "
            "(after normalisation; all channels). " + _DEL_INS_COMMON,
            score=_deletion_insertion("deletion"),
            params=[step, _BUDGET],
            higher_is_better=False,
            curves={"deletion-curve": "fraction of pixels deleted"},
        )
    )
    register(
        xplain.Metric(
            name="pixel-flipping",
            summary="Quantus PixelFlipping (Bach et al. 2015) AUC: target probability as top pixels "
            "are set to the image's minimum (lower is better)",
            description="Bach et al. 2015, as Quantus 0.6 PixelFlipping with "
            "return_auc_per_sample: the most relevant pixels (all channels) are replaced, "
            "cumulatively, by the baseline — `black` (Quantus' default: the image's minimum over "
            "all channels and pixels) or `zero` (then it equals `deletion`). Its own metric, not an "
            "alias of deletion, so that a protocol (LATEC) can score both with their own settings. "
            "Deviation: Quantus' default features_in_step is 1 (H*W forwards per image); here "
            "`step` 0 = the image width (224 at 224x224, LATEC's setting); `-p step=1` gives "
            "Quantus' default. " + _DEL_INS_COMMON,
            score=_deletion_insertion("deletion", key="pixel-flipping"),
            params=[
                step,
                xplain.Param(
                    "baseline",
                    "str",
                    "black",
                    "value deleted pixels take: black = the image's minimum (Quantus), zero",
                    choices=("black", "zero"),
                ),
                _BUDGET,
            ],
            higher_is_better=False,
            curves={"pixel-flipping-curve": "fraction of pixels flipped"},
        )
    )
    register(
        xplain.Metric(
            name="insertion",
            summary="RISE insertion AUC: target probability as top pixels are restored into a blurred image",
            description="Petsiuk et al. 2018 (RISE). Starting from a blurred copy of the image, the most "
            "relevant pixels of the original are inserted. Blur: a normalised "
            "blur_size x blur_size Gaussian (default 11, sigma 5) per channel with zero "
            "padding, as RISE's conv2d blur; deviation: RISE builds its kernel by "
            "scipy-filtering a delta with reflecting borders, which is slightly flatter "
            "than the sampled Gaussian used here. " + _DEL_INS_COMMON,
            score=_deletion_insertion("insertion"),
            higher_is_better=True,
            params=[
                step,
                xplain.Param("blur_size", "int", 11, "Gaussian kernel size (odd)", min=1, max=255),
                xplain.Param(
                    "blur_sigma", "float", 5.0, "Gaussian sigma in pixels", min=1e-3, max=1e6
                ),
                _BUDGET,
            ],
            curves={"insertion-curve": "fraction of pixels inserted"},
        )
    )
    register(
        xplain.Metric(
            name="pixel-perturbation",
            summary="MoRF/LeRF pixel perturbation (TR-GBP Fig. 6, Samek et al.): LeRF AUC - MoRF AUC",
            description="Samek et al. 2016 as used by TR-GBP (Figure 6, Appendix D). The map is pooled "
            "into tile x tile tiles (mean; default 1 = single pixels as TR-GBP); at fractions "
            "k/steps (k = 0..steps, default 100) of the tiles, the most relevant first (MoRF) "
            "or the least relevant first (LeRF) are replaced by the baseline (zero = TR-GBP, "
            "default; mean = per-image per-channel mean colour as IBA-paper's degradation). "
            "Scores are softmax probabilities of the target; `morf` is the AUC of the MoRF "
            "curve (lower is better), `lerf` the AUC of the LeRF curve (higher is better), and "
            "the headline `pixel-perturbation` = lerf - morf (higher is better). Deviation: "
            "TR-GBP plots the output decrease, so its MoRF is 'higher is better'; here the "
            "probability itself is integrated. Ranking uses signed values unless absolute=true "
            "(TR-GBP applies abs for GBP/GIG only).",
            score=_pixel_perturbation,
            higher_is_better=True,
            directions={"morf": False, "lerf": True},
            params=[
                xplain.Param("tile", "int", 1, "tile size in pixels", min=1, max=4096),
                xplain.Param(
                    "steps", "int", 100, "number of perturbation fractions", min=1, max=1000
                ),
                xplain.Param(
                    "baseline", "str", "zero", "replacement value", choices=("zero", "mean")
                ),
                xplain.Param("absolute", "bool", False, "rank by |map| instead of the signed map"),
                _BUDGET,
            ],
            curves={
                "morf-curve": "fraction of tiles removed (most relevant first)",
                "lerf-curve": "fraction of tiles removed (least relevant first)",
            },
        )
    )
    register(
        xplain.Metric(
            name="sensitivity-n",
            summary="Sensitivity-n (Ancona et al.): Pearson r of sum of attribution vs logit drop, mean over n",
            description="Ancona et al. 2018, computed as InputIBA does (per image, then averaged): for "
            "num_n (default 16) log-spaced n from 1 to max_fraction (default 0.8) of the "
            "pixels (IBA-paper's range; InputIBA uses int(logspace(0, 4.5, 45)) for 224x224), "
            "`subsets` (default 100) random pixel subsets of size n, shared by all images and "
            "methods (seeded by --seed), are set to zero (all channels); the Pearson "
            "correlation between the sum of the map over the subset and the drop of the "
            "target logit is taken per image and n. The score is the mean over n (higher is "
            "better); the per-n curve is also returned. A map whose subset sums do not vary "
            "(e.g. constant) gets r = 0. The perturbed forwards are shared across methods.",
            score=_sensitivity_n,
            higher_is_better=True,
            params=[
                xplain.Param("num_n", "int", 16, "number of subset sizes", min=1, max=1000),
                xplain.Param("subsets", "int", 100, "random subsets per n", min=2, max=10000),
                xplain.Param(
                    "max_fraction",
                    "float",
                    0.8,
                    "largest n as a fraction of the pixels",
                    min=0.0,
                    max=1.0,
                ),
                _BUDGET,
            ],
            curves={"sensitivity-n-curve": "n (pixels set to zero)"},
        )
    )
