"""Robustness metrics (Quantus 0.6's family): does the map stay put when the input barely moves?

``max-sensitivity`` / ``avg-sensitivity`` (Yeh et al. 2019), ``local-lipschitz``
(Alvarez-Melis & Jaakkola 2018), ``continuity`` (Montavon et al. 2018, translations),
``relative-input-stability``, ``relative-output-stability`` and
``relative-representation-stability`` (Agarwal et al. 2022). Each re-explains perturbed copies
of the batch through the method under evaluation (``context.reexplain``, same parameters and
seed), ``explain_batch`` perturbed images per call, so the method batches the perturbations the
way it batches images (one call per ``explain_batch`` images instead of Quantus' one call per
draw). Noise is drawn per image and draw from :func:`xplain.sample_generators` (seeded,
independent of the batch); the agreement tests hand the same noise to Quantus.
"""

import xplain

from .quantus_family import logits as _logits
from .quantus_family import prepared


# ----------------------------------------------------------------------------- machinery
def draw_noise(x, seed, draws, kind, a, b):
    """draws×B×C×H×W noise: ``uniform`` U(a, b) or ``normal`` N(a, b²), one tensor per image and
    draw from the image's generator (the same values whatever the batch or the chunking)."""
    import torch

    gens = xplain.sample_generators(x, int(seed))
    shape = tuple(x.shape[1:])
    out = torch.empty((draws,) + tuple(x.shape), device=x.device, dtype=torch.float32)
    for s, g in enumerate(gens):
        for k in range(draws):
            if kind == "uniform":
                v = torch.rand(shape, generator=g, device=g.device) * (b - a) + a
            else:
                v = torch.randn(shape, generator=g, device=g.device) * b + a
            out[k, s] = v.to(x.device)
    return out


def per_call(context, b):
    """Perturbed copies of the batch per re-explanation call."""
    given = int(context.params.get("explain_batch", 0) or 0)
    images = given if given > 0 else int(context.batch_size or b)
    return max(1, images // max(1, b))


def reexplained(context, perturbed):
    """Maps (K×B×H×W) and top-1 classes (K×B) of K perturbed copies of the batch (K×B×C×H×W),
    ``per_call`` copies per call of the method."""
    import torch

    k, b = perturbed.shape[:2]
    step = per_call(context, b)
    maps, tops = [], []
    targets = context.targets
    for k0 in range(0, k, step):
        xs = perturbed[k0 : k0 + step].reshape(-1, *perturbed.shape[2:]).to(context.x.dtype)
        n = xs.shape[0] // b
        att = context.reexplain(xs, targets.repeat(n))
        maps.append(att.maps.to(context.x.device).float().view(n, b, *att.maps.shape[1:]))
        tops.append(_logits(context.model, xs).argmax(1).view(n, b))
    return torch.cat(maps), torch.cat(tops)


def _reduce(values, changed, nan_when_changed, how):
    """Max or mean over the draws (dim 0) of K×B values, ignoring draws whose prediction
    changed when ``nan_when_changed`` (NaN when none is left)."""
    import torch

    if nan_when_changed:
        values = torch.where(changed, torch.full_like(values, float("nan")), values)
    if how == "mean":
        return torch.nanmean(values, 0)
    filled = torch.where(torch.isnan(values), torch.full_like(values, -float("inf")), values)
    top = filled.max(0).values
    return torch.where(torch.isinf(top), torch.full_like(top, float("nan")), top)


def _norm(t):
    """Frobenius norm per leading (K, B) entry."""
    return t.flatten(2).double().norm(dim=2)


# ----------------------------------------------------------------------------- sensitivity
def _noise_of(context, kind):
    p = context.params
    if kind == "normal":
        return draw_noise(
            context.x,
            context.seed,
            int(p["nr_samples"]),
            "normal",
            float(p["perturb_mean"]),
            float(p["perturb_std"]),
        )
    low, high = float(p["lower_bound"]), float(p["upper_bound"])
    a, b = (-low, low) if high <= 0 else (low, high)
    return draw_noise(context.x, context.seed, int(p["nr_samples"]), "uniform", a, b)


def _sensitivity(how, name):
    def score(context: xplain.MetricContext):
        p = context.params
        x = context.x
        prep = lambda m: prepared(m, bool(p["normalise"]), bool(p["absolute"]))  # noqa: E731
        a = prep(context.attribution.maps.to(x.device))
        perturbed = x[None] + _noise_of(context, "uniform").to(x.dtype)
        maps, tops = reexplained(context, perturbed)
        k = maps.shape[0]
        maps = prep(maps.flatten(0, 1)).view(k, *a.shape)
        ratio = _norm(a[None] - maps) / _norm(a[None].expand_as(maps))
        changed = tops != _logits(context.model, x).argmax(1)[None]
        out = _reduce(ratio, changed, bool(p["nan_when_prediction_changes"]), how)
        return {name: out.float()}

    return score


def _local_lipschitz(context: xplain.MetricContext):
    p = context.params
    x = context.x
    prep = lambda m: prepared(m, bool(p["normalise"]), bool(p["absolute"]))  # noqa: E731
    a = prep(context.attribution.maps.to(x.device))
    noise = _noise_of(context, "normal").to(x.dtype)
    perturbed = x[None] + noise
    maps, tops = reexplained(context, perturbed)
    k = maps.shape[0]
    maps = prep(maps.flatten(0, 1)).view(k, *a.shape)
    ratio = _norm(a[None] - maps) / (_norm(x[None] - perturbed) + 1e-10)
    changed = tops != _logits(context.model, x).argmax(1)[None]
    out = _reduce(ratio, changed, bool(p["nan_when_prediction_changes"]), "max")
    return {"local-lipschitz": out.float()}


# ----------------------------------------------------------------------------- continuity
def translations(width, steps):
    """Quantus' shifts: dx = (2W + 1) // steps, shifts -W + dx, -W + 2dx, ... (steps of them)."""
    dx = (2 * width + 1) // steps
    return [-width + dx * (k + 1) for k in range(steps)]


def translated(x, shift, fill):
    """x shifted by ``shift`` pixels along the width (right for > 0), the gap filled with
    ``fill`` (B values)."""

    b, c, h, w = x.shape
    out = fill.view(b, 1, 1, 1).to(x.dtype).expand(b, c, h, w).clone()
    s = max(-w, min(w, shift))
    if s >= 0:
        out[..., s:] = x[..., : w - s]
    else:
        out[..., : w + s] = x[..., -s:]
    return out


def _continuity(context: xplain.MetricContext):
    import torch

    p = context.params
    x = context.x
    prep = lambda m: prepared(m, bool(p["normalise"]), bool(p["absolute"]))  # noqa: E731
    a = prep(context.attribution.maps.to(x.device))
    fill = x.detach().flatten(1).min(1).values  # Quantus' black baseline: the image's minimum
    perturbed = torch.stack(
        [translated(x, s, fill) for s in translations(x.shape[3], int(p["nr_steps"]))]
    )
    maps, tops = reexplained(context, perturbed)
    k = maps.shape[0]
    maps = prep(maps.flatten(0, 1)).view(k, *a.shape)
    l1 = (a[None] - maps).flatten(2).double().abs().sum(2)
    ratio = l1 / (_norm(x[None] - perturbed) + 1e-9)
    # a shift of 0 is no perturbation: its ratio is 0 / 1e-9 (0 for a deterministic method, float
    # noise / 1e-9 for any other), so it is left out (the maximum is unchanged where it is 0)
    shifts = torch.tensor(translations(x.shape[3], int(p["nr_steps"])), device=x.device)
    ratio = torch.where((shifts == 0)[:, None], torch.full_like(ratio, float("nan")), ratio)
    changed = tops != context.targets[None]
    out = _reduce(ratio, changed, bool(p["nan_when_prediction_changes"]), "max")
    return {"continuity": out.float()}


# ----------------------------------------------------------------------------- relative stability
def _relative(t, ref, eps):
    """(ref - t) / (ref + (ref == 0) eps), Agarwal et al.'s relative change."""
    return (ref[None] - t) / (ref + (ref == 0).to(ref.dtype) * eps)[None]


def _second_moment(m):
    """Quantus' normalise_by_average_second_moment_estimate, per image."""
    import torch

    rms = m.flatten(1).double().pow(2).mean(1).sqrt().float().view(-1, *([1] * (m.dim() - 1)))
    return torch.where(rms > 0, m / torch.where(rms > 0, rms, torch.ones_like(rms)), m)


def representation(context, x, layer):
    """B×F flattened outputs of node ``layer`` (empty: the default feature layer)."""
    import torch

    model = context.model
    name = layer or model.default_feature_layer().name
    with torch.inference_mode(), model.tap([name], gradients=False) as tap:
        model(x)
        out = tap.activations[name]
    return out.flatten(1).float().clone()


def _relative_stability(kind):
    name = f"relative-{kind}-stability"

    def score(context: xplain.MetricContext):
        import torch

        p = context.params
        x = context.x
        eps = float(p["eps_min"])

        def prep(m):
            m = _second_moment(m) if p["normalise"] else m.float()
            return m.abs() if p["absolute"] else m

        a = prep(context.attribution.maps.to(x.device).float()).double()
        noise = _noise_of(context, "uniform").to(x.dtype)
        perturbed = x[None] + noise
        maps, tops = reexplained(context, perturbed)
        k = maps.shape[0]
        maps = prep(maps.flatten(0, 1)).view(k, *a.shape).double()
        num = _relative(maps, a, eps).flatten(2).norm(dim=2)
        if kind == "input":
            ref, moved = x.double(), perturbed.double()
            den = _relative(moved, ref, eps).flatten(2).norm(dim=2)
        elif kind == "output":
            ref = _logits(context.model, x).double()
            moved = torch.stack([_logits(context.model, xp) for xp in perturbed]).double()
            den = (ref[None] - moved).norm(dim=2)
        else:
            layer = str(p["layer"])
            ref = representation(context, x, layer).double()
            moved = torch.stack([representation(context, xp, layer) for xp in perturbed]).double()
            den = _relative(moved, ref, eps).norm(dim=2)
        den = den + (den == 0).to(den.dtype) * eps
        changed = tops != _logits(context.model, x).argmax(1)[None]
        out = _reduce(num / den, changed, bool(p["nan_when_prediction_changes"]), "max")
        return {name: out.float()}

    return score


# ----------------------------------------------------------------------------- registration
def _samples(default=200):
    return xplain.Param(
        "nr_samples", "int", default, "perturbed copies per image", min=1, max=100000
    )


def _nan(default):
    return xplain.Param(
        "nan_when_prediction_changes",
        "bool",
        default,
        "ignore perturbations that change the predicted class (NaN when all do)",
    )


_EXPLAIN_BATCH = xplain.Param(
    "explain_batch",
    "int",
    0,
    "perturbed images per call of the method (0 = the eval batch size); never changes a score",
    min=0,
    max=100000,
)
_PREP = (
    " Maps (the original and each re-explanation) are divided by their maximum |value| per "
    "image when normalise=true (Quantus divides by the maximum over the batch) and made "
    "absolute when absolute=true; both defaults are Quantus 0.6's for this metric (its code's, "
    "which for the sensitivities differ from its docstring: normalise=false)."
)
_REEXPLAIN = (
    " The method is re-run on the perturbed images (same parameters and seed), explain_batch "
    "images per call. Noise: one draw per image and sample from the image's generator (--seed)."
)


def _uniform_params(low, high):
    return [
        xplain.Param("lower_bound", "float", low, "noise bound (see the description)", min=0.0),
        xplain.Param("upper_bound", "float", high, "0 = symmetric U(-lower, lower)", min=0.0),
    ]


def _map_params(normalise, absolute):
    return [
        xplain.Param("normalise", "bool", normalise, "normalise the maps first"),
        xplain.Param("absolute", "bool", absolute, "compare |maps|"),
    ]


@xplain.hookimpl
def register_metrics(register):
    for how, name, who in (
        ("max", "max-sensitivity", "MaxSensitivity"),
        ("mean", "avg-sensitivity", "AvgSensitivity"),
    ):
        register(
            xplain.Metric(
                name=name,
                summary=f"{'largest' if how == 'max' else 'mean'} relative change of the map under uniform input noise (Yeh et al. 2019; Quantus {who})",
                description=f"Yeh et al. 2019, as Quantus 0.6's {who}: for nr_samples (200) copies "
                "x' = x + U(-0.2, 0.2) noise on every element (lower_bound 0.2, upper_bound 0 = "
                "symmetric; upper_bound > 0 gives U(lower, upper)), the ratio ||a(x) - a(x')||_F / "
                f"||a(x)||_F; the score is its {'maximum' if how == 'max' else 'mean'} over the "
                "copies (lower is better). nan_when_prediction_changes=true ignores copies whose "
                "predicted class differs." + _PREP + _REEXPLAIN,
                score=_sensitivity(how, name),
                higher_is_better=False,
                needs=("method",),
                params=[
                    _samples(),
                    *_uniform_params(0.2, 0.0),
                    *_map_params(False, False),
                    _nan(False),
                    _EXPLAIN_BATCH,
                ],
            )
        )
    register(
        xplain.Metric(
            name="local-lipschitz",
            summary="largest ||a(x) - a(x')|| / ||x - x'|| under Gaussian input noise (Alvarez-Melis & Jaakkola 2018; Quantus LocalLipschitzEstimate)",
            description="Alvarez-Melis & Jaakkola 2018, as Quantus 0.6's LocalLipschitzEstimate: "
            "for nr_samples (200) copies x' = x + N(perturb_mean 0, perturb_std 0.1) on every "
            "element, ||a(x) - a(x')||_2 / (||x - x'||_2 + 1e-10); the score is the maximum "
            "(lower is better)." + _PREP + _REEXPLAIN,
            score=_local_lipschitz,
            higher_is_better=False,
            needs=("method",),
            params=[
                _samples(),
                xplain.Param("perturb_mean", "float", 0.0, "noise mean"),
                xplain.Param("perturb_std", "float", 0.1, "noise standard deviation", min=0.0),
                *_map_params(True, False),
                _nan(False),
                _EXPLAIN_BATCH,
            ],
        )
    )
    register(
        xplain.Metric(
            name="continuity",
            summary="largest ||a(x) - a(x shifted)||_1 / ||x - x shifted||_2 over horizontal translations (Montavon et al. 2018; Quantus Continuity)",
            description="Montavon et al. 2018, as Quantus 0.6's Continuity: the image is shifted "
            "horizontally by nr_steps (28) amounts -W + dx, -W + 2 dx, ... (dx = (2W + 1) // "
            "nr_steps; a shift of 0, which Quantus includes, is left out: x' = x), the gap filled "
            "with the image's minimum (Quantus' black); for each, "
            "||a(x) - a(x')||_1 / (||x - x'||_2 + 1e-9), and the score is the maximum (lower "
            "is better). nan_when_prediction_changes compares with the evaluated target, as "
            "Quantus. Maps: normalised and absolute by default (Quantus')." + _PREP + _REEXPLAIN,
            score=_continuity,
            higher_is_better=False,
            needs=("method",),
            params=[
                xplain.Param("nr_steps", "int", 28, "number of translations", min=1, max=10000),
                *_map_params(True, True),
                _nan(False),
                _EXPLAIN_BATCH,
            ],
        )
    )
    what = {
        "input": ("x", "||(x - x') / x||", "RelativeInputStability"),
        "output": ("logits", "||h(x) - h(x')||_2 (h = the logits)", "RelativeOutputStability"),
        "representation": (
            "a layer's output",
            "||(L(x) - L(x')) / L(x)||_2 (L = the output of node `layer`, default the model's "
            "default feature layer; Quantus: every layer unless named)",
            "RelativeRepresentationStability",
        ),
    }
    for kind, (short, den, who) in what.items():
        params = [
            _samples(),
            *_uniform_params(0.02, 0.2),
            xplain.Param("eps_min", "float", 1e-6, "the guard against division by 0", min=0.0),
            xplain.Param(
                "normalise", "bool", False, "divide maps by their root mean square (Quantus')"
            ),
            xplain.Param("absolute", "bool", False, "compare |maps|"),
            _nan(True),
            _EXPLAIN_BATCH,
        ]
        if kind == "representation":
            params.insert(
                0, xplain.Param("layer", "str", "", "node name (empty: default feature layer)")
            )
        register(
            xplain.Metric(
                name=f"relative-{kind}-stability",
                summary=f"largest relative change of the map over the relative change of the {short} (Agarwal et al. 2022; Quantus {who})",
                description=f"Agarwal et al. 2022, as Quantus 0.6's {who}: for nr_samples (200) "
                "copies x' = x + U(0.02, 0.2) noise (Quantus' lower/upper bounds), the ratio "
                f"||(a(x) - a(x')) / (a(x) + (a(x) == 0) eps)||_F / {den} (eps_min 1e-6 guards "
                "divisions by 0); the score is the maximum over the copies whose predicted class "
                "is unchanged (lower is better). Deviation: Quantus 0.6 takes np.max over all "
                "copies after setting the changed ones to NaN, so one changed prediction among "
                "200 makes the whole score NaN; xplain follows the paper (the maximum over the "
                "admissible x'; NaN only when none is)." + _REEXPLAIN,
                score=_relative_stability(kind),
                higher_is_better=False,
                needs=("method",),
                params=params,
            )
        )
