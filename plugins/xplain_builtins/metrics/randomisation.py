"""Randomisation metrics (Quantus 0.6's family): ``random-logit`` (Sixt et al. 2020) and
``mprt``, the model parameter randomisation test (Adebayo et al. 2018) as Quantus computes it.

Both re-run the method under evaluation (``context.reexplain``): ``random-logit`` for a random
other class, ``mprt`` on the model with its layers re-initialised one by one from the top,
cumulatively. ``mprt`` shares the layer walk and the fitted-state rule of xplain's ``sanity``
metric (:mod:`.properties`) and differs in what Quantus does: layers re-initialised with their
own ``reset_parameters()`` under ``torch.manual_seed(seed + 1)`` (run inside
``torch.random.fork_rng``, so the caller's random state is untouched), Spearman on |maps|.
"""

import xplain

from .properties import _randomised_copy, _stateful, centred_ranks, spearman, weight_layers
from .quantus_family import prepared
from .robustness import _EXPLAIN_BATCH


# ----------------------------------------------------------------------------- random logit
def other_class_index(x, targets, num_classes, seed):
    """B indices into the classes other than the target (0..K-2), one uniform draw per image
    from the image's generator (Quantus: np.random.randint(0, K - 1, B) after seeding 42)."""
    import torch

    return torch.stack(
        [
            torch.randint(0, num_classes - 1, (), generator=g, device=g.device).to(x.device)
            for g in xplain.sample_generators(x, int(seed))
        ]
    )


def ssim_1d(a, b, win=7):
    """SSIM of B×N maps read as 1-D signals, as Quantus' ``ssim`` (skimage's
    structural_similarity on the flattened maps): uniform 7-tap window, sample covariance,
    data range = max - min over both maps, K1 = 0.01, K2 = 0.03, mean over the positions where
    the window fits."""
    import torch
    import torch.nn.functional as F

    a, b = a.double(), b.double()
    both = torch.cat([a, b], 1)
    rng = (both.max(1).values - both.min(1).values)[:, None]
    k = torch.full((1, 1, win), 1.0 / win, dtype=a.dtype, device=a.device)

    def filt(t):
        return F.conv1d(t[:, None], k)[:, 0]

    cov = win / (win - 1)
    ux, uy = filt(a), filt(b)
    vx = cov * (filt(a * a) - ux * ux)
    vy = cov * (filt(b * b) - uy * uy)
    vxy = cov * (filt(a * b) - ux * uy)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean(1).float()


def _random_logit(context: xplain.MetricContext):
    import torch

    model, x, targets = context.model, context.x, context.targets
    p = context.params
    k = int(model.num_classes)
    if k < 2:
        return {"random-logit": torch.full((x.shape[0],), float("nan"), device=x.device)}
    idx = other_class_index(x, targets, k, context.seed)
    other = idx + (idx >= targets).long()  # skip the target: Quantus' filtered class list
    prep = lambda m: prepared(m.to(x.device), bool(p["normalise"]), bool(p["absolute"]))  # noqa: E731
    a = prep(context.attribution.maps).flatten(1)
    b = prep(context.reexplain(x, other).maps).flatten(1)
    return {"random-logit": ssim_1d(a, b)}


# ----------------------------------------------------------------------------- MPRT
def reset_copy(model, name, seed):
    """A deep copy of the node's module re-initialised by its own ``reset_parameters()`` under
    ``torch.manual_seed(seed + 1)`` (Quantus' get_random_layer_generator), the global random
    state restored afterwards; modules without it are redrawn as ``sanity`` does."""
    import copy

    import torch

    module = model.graph.get_submodule(model.node(name).target)
    if not hasattr(module, "reset_parameters"):
        return _randomised_copy(model, name, seed)
    module = copy.deepcopy(module)
    devices = [p.device for p in module.parameters() if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=devices[:1]), torch.no_grad():
        torch.manual_seed(seed + 1)
        module.reset_parameters()
    return module


def _fitted_state(context):
    """How to hide state fitted on the trained model while re-explaining a randomised one
    (``sanity``'s rule): a context manager factory, or None when the method cannot run
    without its state (the metric is then NaN)."""
    import contextlib

    model, x, targets = context.model, context.x, context.targets
    if not _stateful(context):
        return contextlib.nullcontext
    try:
        with model.without_fitted_state():
            context.reexplain(x[:1], targets[:1])
    except xplain.InputDataError as err:
        if "no fitted state" not in err.message:
            raise
        return None
    return model.without_fitted_state


def _layer_order(model, p):
    """The layers to re-initialise, in order (``layer_order``), at most ``layers`` of them."""
    layers = weight_layers(model)
    if p["layer_order"] == "top_down":
        layers = layers[::-1]
    if int(p["layers"]) > 0:
        layers = layers[: int(p["layers"])]
    return layers


def _randomised(model, layers, seed, only_last=False):
    """(layer, swaps) per step of the cumulative walk: the first k layers re-initialised as
    Quantus does (:func:`reset_copy`); ``only_last``: the last step alone (Quantus'
    skip_layers)."""
    swapped = {}
    for i, name in enumerate(layers):
        swapped[name] = reset_copy(model, name, seed)
        if not only_last or i == len(layers) - 1:
            yield name, dict(swapped)


def _walk(context, layers, explain, hide, only_last=False):
    """Maps of ``explain()`` on the trained model (state hidden), then after each step."""
    model = context.model
    with hide():
        maps = [explain()]
    for _, swaps in _randomised(model, layers, int(context.seed), only_last):
        with model.swap_modules(swaps), hide():  # restored on exit, also after an error
            maps.append(explain())
    return maps


def _correlation_walk(context, name, p, explain, prep, reference=None):
    """mprt / smooth-mprt: Spearman of each step's prepared map with the reference (default:
    the trained model's re-explained map, step 0)."""
    import torch

    x = context.x
    nan = torch.full((x.shape[0],), float("nan"), device=x.device)
    layers = _layer_order(context.model, p)
    hide = _fitted_state(context)
    if hide is None or not layers:
        return {name: nan, f"{name}-last": nan}
    maps = [prep(m) for m in _walk(context, layers, explain, hide)]
    ref = maps[0] if reference is None else reference
    ranks = centred_ranks(ref)  # ranked once, compared with every step
    r = torch.stack([spearman(ref, m, ranks).to(x.device) for m in maps], 1)
    steps = torch.arange(len(layers) + 1, dtype=torch.float32, device=x.device)
    return {
        name: r[:, 1:].mean(1),
        f"{name}-last": r[:, -1],
        f"{name}-curve": r,
        f"{name}-curve@x": steps,
    }


def _mprt(context: xplain.MetricContext):
    x, targets = context.x, context.targets
    p = {"layer_order": "top_down", **context.params}  # top down, cumulative (Quantus' default)
    prep = lambda m: prepared(m.to(x.device), True, bool(p["absolute"]))  # noqa: E731
    return _correlation_walk(
        context,
        "mprt",
        p,
        lambda: context.reexplain(x, targets).maps,
        prep,
        reference=prep(context.attribution.maps),
    )


# ----------------------------------------------------------------------------- smooth MPRT
def smooth_noise(x, seed, nr_samples, magnitude):
    """(nr_samples - 1)×B×C×H×W Gaussian noise, std = magnitude × (max - min) of each image
    (Quantus' SmoothMPRT), one draw per image and sample from the image's generator; the same
    noise is reused for every model of the walk (Quantus draws afresh for each)."""
    from .robustness import draw_noise

    span = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    std = (magnitude * span).view(1, -1, *([1] * (x.dim() - 1)))
    return draw_noise(x, seed, max(0, nr_samples - 1), "normal", 0.0, 1.0) * std


def smooth_maps(context, x, targets, noise):
    """SmoothGrad-style mean map: the method on x + each noise draw and on x itself (Quantus'
    last sample is noise-free), summed in Quantus' order, divided by the number of samples."""
    import torch

    from .robustness import per_call

    b = x.shape[0]
    copies = [x + n for n in noise] + [x]
    step = per_call(context, b)
    total = None
    for k0 in range(0, len(copies), step):
        chunk = copies[k0 : k0 + step]
        maps = context.reexplain(torch.cat(chunk), targets.repeat(len(chunk))).maps
        for j in range(len(chunk)):
            part = maps[j * b : (j + 1) * b].to(x.device).float() / len(copies)
            total = part if total is None else total + part
    return total


def _smooth_mprt(context: xplain.MetricContext):
    x, targets = context.x, context.targets
    p = context.params
    noise = smooth_noise(x, context.seed, int(p["nr_samples"]), float(p["noise_magnitude"]))
    prep = lambda m: prepared(m.to(x.device), True, bool(p["absolute"]))  # noqa: E731
    return _correlation_walk(
        context, "smooth-mprt", p, lambda: smooth_maps(context, x, targets, noise), prep
    )


# ----------------------------------------------------------------------------- efficient MPRT
def discrete_entropy(maps, n_bins: int):
    """Quantus' discrete_entropy per map: Shannon entropy (nats) of the histogram of the map's
    values in ``n_bins`` equal-width bins over [min, max] (NumPy's histogram, SciPy's entropy)."""
    import numpy as np
    import torch

    out = []
    for m in maps.detach().float().cpu().flatten(1).numpy():
        h, _ = np.histogram(m, bins=n_bins)
        q = h[h > 0] / h.sum()
        out.append(float(-(q * np.log(q)).sum()))
    return torch.tensor(out, dtype=torch.float32, device=maps.device)


def _efficient_mprt(context: xplain.MetricContext):
    import torch

    x, targets = context.x, context.targets
    p = context.params
    nan = torch.full((x.shape[0],), float("nan"), device=x.device)
    layers = _layer_order(context.model, p)
    hide = _fitted_state(context)
    if hide is None or not layers:
        return {"efficient-mprt": nan}

    def explain():
        return prepared(context.reexplain(x, targets).maps.to(x.device), False, bool(p["absolute"]))

    before, after = _walk(context, layers, explain, hide, only_last=True)
    h0 = discrete_entropy(before, int(p["n_bins"]))
    h1 = discrete_entropy(after, int(p["n_bins"])).to(h0.device)
    rise = (h1 - h0) / h0
    return {
        "efficient-mprt": torch.where(torch.isfinite(rise), rise, nan.to(rise.device)),
        "efficient-mprt-entropy": h0,
        "efficient-mprt-entropy-random": h1,
    }


@xplain.hookimpl
def register_metrics(register):
    register(
        xplain.Metric(
            name="random-logit",
            summary="SSIM between the maps of the target and of a random other class (Sixt et al. 2020; Quantus RandomLogit): lower = class-sensitive",
            description="Sixt et al. 2020, as Quantus 0.6's RandomLogit: the method is re-run for a "
            "uniformly drawn other class (one draw per image from its generator, --seed; Quantus "
            "draws with np.random.seed(42) for the whole batch) and the two maps are compared by "
            "SSIM of the flattened maps (Quantus' ssim: skimage's structural_similarity on 1-D "
            "signals, 7-tap uniform window, data range of the pair). Maps are divided by their "
            "maximum |value| per image first (Quantus' normalise, per batch there) and made "
            "absolute with absolute=true. Lower is better; NaN for a one-class model. "
            "class-sensitivity is the l2 variant with a chosen other class.",
            score=_random_logit,
            higher_is_better=False,
            needs=("method",),
            params=[
                xplain.Param("normalise", "bool", True, "divide by max |map| first"),
                xplain.Param("absolute", "bool", False, "compare |maps| (Quantus' abs)"),
            ],
        )
    )
    register(
        xplain.Metric(
            name="mprt",
            summary="model parameter randomisation test (Adebayo et al. 2018; Quantus MPRT): mean Spearman to the original map (lower is better)",
            description="Adebayo et al. 2018, as Quantus 0.6's MPRT: the modules with parameters are "
            "re-initialised from the top (logits) down, cumulatively, each by its own "
            "reset_parameters() under torch.manual_seed(seed + 1) (Quantus; seed = --seed; "
            "modules without one are redrawn from N(0, std) as sanity does), the method is re-run "
            "after each step and its |map| (absolute=true, Quantus' abs) compared with the "
            "original |map| by Spearman's rank correlation (ties averaged). mprt = mean over the "
            "randomised layers, mprt-last = after the last one (Quantus' return_last_correlation), "
            "mprt-curve = step 0 (the method re-run on the trained model) then each layer. "
            "Quantus' return_average_correlation also averages step 0 in (its code skips a key "
            "'orig' that does not exist; the key is 'original'): quantus_avg = (r_0 + L mprt) / "
            "(L + 1). layers limits the walk (0 = all). Fitted state is hidden as in sanity; a "
            "method that cannot run without it scores NaN.",
            score=_mprt,
            higher_is_better=False,
            needs=("method",),
            directions={"mprt-last": False},
            params=[
                _LAYERS,
                xplain.Param("absolute", "bool", True, "compare |maps| (Quantus' abs)"),
            ],
            curves={"mprt-curve": "layers randomised from the top"},
        )
    )
    register(
        xplain.Metric(
            name="smooth-mprt",
            summary="MPRT on SmoothGrad-denoised maps (Hedström et al. 2023; Quantus SmoothMPRT): mean Spearman to the original (lower is better)",
            description="Hedström et al. 2023 ('Sanity checks revisited'), as Quantus 0.6's "
            "SmoothMPRT: MPRT where every map (the trained model's and each randomised model's) "
            "is the mean of the method's maps on nr_samples copies of the image, nr_samples - 1 "
            "with Gaussian noise of std noise_magnitude × (max - min of the image) and the last "
            "one noise-free. Layers are re-initialised bottom up (input first; Quantus' default "
            "layer_order for this metric), cumulatively, as mprt does (reset_parameters() under "
            "torch.manual_seed(seed + 1)); maps compared as |maps| by Spearman. smooth-mprt = "
            "mean over the randomised layers, smooth-mprt-last = after the last, "
            "smooth-mprt-curve = step 0 then each layer. The reference is the smoothed map of "
            "the trained model (Quantus without a_batch; step 0 is then 1 for a deterministic "
            "method). Noise: one draw per image and sample from the image's generator (--seed), "
            "the same draws for every model of the walk (Quantus draws afresh for each, so its "
            "step 0 is below 1). Quantus' normalise (by the second moment) cannot change a rank "
            "correlation and is not applied. Costs nr_samples × (layers + 1) re-explanations: "
            "limit layers for large networks; explain_batch copies per call of the method.",
            score=_smooth_mprt,
            higher_is_better=False,
            needs=("method",),
            directions={"smooth-mprt-last": False},
            params=[
                _LAYERS,
                _ORDER("bottom_up"),
                xplain.Param("nr_samples", "int", 50, "maps averaged per image", min=1),
                xplain.Param(
                    "noise_magnitude", "float", 0.1, "noise std ÷ the image's range", min=0.0
                ),
                xplain.Param("absolute", "bool", True, "compare |maps| (Quantus' abs)"),
                _EXPLAIN_BATCH,
            ],
            curves={"smooth-mprt-curve": "layers randomised from the input"},
        )
    )
    register(
        xplain.Metric(
            name="efficient-mprt",
            summary="relative rise of the map's histogram entropy when every layer is randomised (Hedström et al. 2023; Quantus EfficientMPRT; higher is better)",
            description="Hedström et al. 2023 ('Sanity checks revisited'), as Quantus 0.6's "
            "EfficientMPRT (eMPRT): the method is re-run on the trained model and on the model "
            "with every layer re-initialised (cumulatively, bottom up, as mprt: "
            "reset_parameters() under torch.manual_seed(seed + 1); Quantus' skip_layers=true "
            "scores the last step only), and the score is (H(random) - H(trained)) / H(trained), "
            "H = the discrete entropy (nats) of the map's values in n_bins equal-width bins "
            "(Quantus' discrete_entropy, n_bins 100: its find_n_bins falls back to 100 without "
            "a rule). A map that stays structured after randomisation scores near 0; one that "
            "turns to noise scores high. Signed maps by default (Quantus' abs=false; "
            "normalising cannot change a histogram's entropy). Also efficient-mprt-entropy and "
            "efficient-mprt-entropy-random. NaN when the trained map's entropy is 0 (constant "
            "map). layers limits the randomised layers (0 = all). Two re-explanations per image.",
            score=_efficient_mprt,
            needs=("method",),
            directions={"efficient-mprt-entropy": False, "efficient-mprt-entropy-random": True},
            params=[
                _LAYERS,
                _ORDER("bottom_up"),
                xplain.Param("n_bins", "int", 100, "histogram bins", min=1, max=100000),
                xplain.Param("absolute", "bool", False, "histogram of |maps| (Quantus' abs)"),
            ],
        )
    )


_LAYERS = xplain.Param("layers", "int", 0, "randomise at most this many layers (0 = all)", min=0)


def _ORDER(default):  # noqa: N802 - a Param factory
    return xplain.Param(
        "layer_order",
        "str",
        default,
        "bottom_up: from the input; top_down: from the logits (cumulative either way)",
        choices=("bottom_up", "top_down"),
    )
