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

from .properties import _randomised_copy, _stateful, spearman, weight_layers
from .quantus_family import prepared


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


def _mprt(context: xplain.MetricContext):
    import contextlib

    import torch

    model, x, targets = context.model, context.x, context.targets
    p = context.params
    seed = int(context.seed)
    layers = list(reversed(weight_layers(model)))  # top down, cumulative (Quantus' default)
    if int(p["layers"]) > 0:
        layers = layers[: int(p["layers"])]
    prep = lambda m: prepared(m.to(x.device), True, bool(p["absolute"]))  # noqa: E731
    ref = prep(context.attribution.maps)
    hide = contextlib.nullcontext
    nan = torch.full((x.shape[0],), float("nan"), device=x.device)
    if _stateful(context):  # state fitted on the trained model: re-estimated per model or N/A
        try:
            with model.without_fitted_state():
                context.reexplain(x[:1], targets[:1])
            hide = model.without_fitted_state
        except xplain.InputDataError as err:
            if "no fitted state" not in err.message:
                raise
            return {"mprt": nan, "mprt-last": nan}
    with hide():
        again = prep(context.reexplain(x, targets).maps)
    curve = [spearman(ref, again).to(x.device)]
    swapped = {}
    for name in layers:
        swapped[name] = reset_copy(model, name, seed)
        with model.swap_modules(dict(swapped)), hide():  # restored on exit, also after an error
            maps = prep(context.reexplain(x, targets).maps)
        curve.append(spearman(ref, maps).to(x.device))
    if not layers:
        return {"mprt": nan, "mprt-last": nan}
    r = torch.stack(curve, 1)
    steps = torch.arange(len(layers) + 1, dtype=torch.float32, device=x.device)
    return {
        "mprt": r[:, 1:].mean(1),
        "mprt-last": r[:, -1],
        "mprt-curve": r,
        "mprt-curve@x": steps,
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
                xplain.Param(
                    "layers", "int", 0, "randomise at most this many layers (0 = all)", min=0
                ),
                xplain.Param("absolute", "bool", True, "compare |maps| (Quantus' abs)"),
            ],
            curves={"mprt-curve": "layers randomised from the top"},
        )
    )
