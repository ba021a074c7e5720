"""Shared pieces of the Quantus-family metrics (issue 23): map preprocessing, baselines,
per-sample correlations and seeded per-sample draws.

Quantus 0.6 preprocesses every explanation the same way before a metric sees it: divide by the
maximum absolute value (``normalise_by_max``) and optionally take ``abs``. Quantus divides by the
maximum over the *whole batch*, so an image's score depends on which images share its batch;
here the maximum is taken per image (invariant 4, batch consistency). The two agree on a batch
of one, and for every scale-invariant metric (correlations, ratios, orders) on any batch.

Draws (random subsets, uniform baselines, noise) come from :func:`xplain.sample_generators`:
one generator per image, seeded from ``--seed`` and the image's bytes, so a score never depends
on the batch either and a rerun with the same seed is byte-identical. The draws are separate
functions so that the Quantus agreement tests can hand the very same draws to Quantus.
"""

import xplain

BASELINES = ("black", "white", "mean", "uniform", "zero")


def baseline_param(default: str) -> xplain.Param:
    return xplain.Param(
        "baseline",
        "str",
        default,
        "replacement value: black = the image's minimum, white = its maximum, mean = its mean "
        "(over all channels and pixels, as Quantus), uniform = one U(0, 1) value per image and "
        "perturbation (Quantus' 'uniform'), zero = 0",
        choices=BASELINES,
    )


ABS_PARAM_HELP = "take |map| before scoring (Quantus' abs)"


def prepared(maps, normalise: bool, absolute: bool):
    """Maps as Quantus scores them: divided by max |map| per image (an all-zero map is left as
    it is) when ``normalise``, then ``abs`` when ``absolute``. float32, on the maps' device."""
    import torch

    a = maps.float()
    if normalise:
        top = a.flatten(1).abs().amax(1).view(-1, *([1] * (a.dim() - 1)))
        a = torch.where(top > 0, a / torch.where(top > 0, top, torch.ones_like(top)), a)
    if absolute:
        a = a.abs()
    return a


def baseline_values(x, kind: str, gens=None, draws: int = 1):
    """Per-image replacement values, B×draws (one value per image and perturbation).

    ``uniform`` needs ``gens`` (one generator per image); the others are statistics of the image
    over all channels and pixels, as Quantus' ``get_baseline_dict``."""
    import torch

    b = x.shape[0]
    flat = x.detach().flatten(1).float()
    if kind == "uniform":
        assert gens is not None
        return torch.stack(
            [torch.rand(draws, generator=g, device=g.device).to(x.device) for g in gens]
        )
    value = {
        "black": lambda: flat.min(1).values,
        "white": lambda: flat.max(1).values,
        "mean": lambda: flat.mean(1),
        "zero": lambda: torch.zeros(b, device=x.device),
    }[kind]()
    return value[:, None].expand(b, draws)


def logits(model, batch):
    """float32 logits through ``model.infer`` (the forward-only entry point, served by the run's
    engine); plain callables without it (a torch module handed to ``xplain.score``) run under
    inference mode."""
    import torch

    infer = getattr(model, "infer", None)
    if infer is not None:
        return infer(batch).float()
    with torch.inference_mode():
        return model(batch).float()


def infer_scores(model, batch, targets, softmax: bool):
    """Target scores of a batch (see :func:`logits`): softmax probability or logit."""
    import torch

    out = logits(model, batch)
    scores = torch.softmax(out, dim=1) if softmax else out
    return scores.gather(1, targets[:, None].to(scores.device))[:, 0]


def pearson(a, b):
    """Pearson r per row of two B×N tensors (float64); NaN where a row is constant (as scipy)."""
    import torch

    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / denom
    return torch.where(denom > 0, r.clamp(-1, 1), torch.full_like(r, float("nan"))).float()


def average_ranks(v):
    """Ranks 1..N along the last axis of a B×N tensor, ties averaged (scipy's rankdata)."""
    import torch

    v = v.double()
    sorted_v, order = torch.sort(v, dim=1, stable=True)
    out = torch.empty_like(v)
    for i in range(v.shape[0]):  # unique_consecutive has no batched form
        _, inverse, counts = torch.unique_consecutive(
            sorted_v[i], return_inverse=True, return_counts=True
        )
        ends = counts.cumsum(0).double()
        avg = ends - (counts.double() - 1) / 2
        out[i, order[i]] = avg[inverse]
    return out


def spearman(a, b):
    """Spearman rho per row (ties averaged); NaN where a row is constant (as scipy)."""
    return pearson(average_ranks(a), average_ranks(b))


def nan_where(values, ok):
    import torch

    return torch.where(ok, values, torch.full_like(values, float("nan")))
