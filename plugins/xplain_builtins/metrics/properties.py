"""Method-property metrics: re-run the method (or use its extras) and compare.

``class-sensitivity`` (MIP-IN section 6.4), ``sanity`` (cascading parameter randomisation,
Adebayo et al. 2018) and ``completeness`` (APC / positive APC of a source signal, MIP-IN
eq. 10-11). They reach the method through ``context.reexplain``, which re-runs it with the
same parameters and seed.
"""

import xplain


# ----------------------------------------------------------------------------- helpers
def ssim(a, b, window=11, sigma=1.5, data_range=1.0):
    """Mean SSIM (Wang et al. 2004) of B×H×W images with a Gaussian window, valid positions only.

    K1 = 0.01, K2 = 0.03 and the 11-tap sigma-1.5 window are the paper's; local statistics use
    the biased (1/N) variance; the window shrinks (odd) for maps smaller than it."""
    import torch
    import torch.nn.functional as F

    a = a[:, None].double()
    b = b[:, None].double()
    win = min(window, a.shape[-1], a.shape[-2])
    win -= 1 - win % 2
    r = torch.arange(win, dtype=torch.float64, device=a.device) - (win - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None]

    def filt(t):
        return F.conv2d(t, k)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    saa = filt(a * a) - mu_a**2
    sbb = filt(b * b) - mu_b**2
    sab = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.flatten(1).mean(1).float()


def _average_ranks(v):
    """Ranks 1..N of a 1-D tensor with ties given their average rank (as scipy's rankdata)."""
    import torch

    sorted_v, order = torch.sort(v, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2  # mean of the 1-based ranks a tie group occupies
    ranks = torch.empty_like(v, dtype=torch.float64)
    ranks[order] = avg[inverse]
    return ranks


def centred_ranks(a):
    """B×N float64: each row's average ranks, centred and scaled to unit length (a zero row
    for a constant map), so that Spearman's ρ of two maps is the dot product of theirs."""
    import torch

    rows = []
    for x in a.flatten(1):
        r = _average_ranks(x)
        r = r - r.mean()
        n = r.norm()
        rows.append(r / n if n > 0 else torch.zeros_like(r))
    return torch.stack(rows)


def spearman(a, b, ranks_a=None):
    """Spearman rank correlation per sample of B×... tensors (ties averaged; 0 if a map is
    constant). ``ranks_a``: :func:`centred_ranks` of ``a``, when it is compared many times."""
    ra = centred_ranks(a) if ranks_a is None else ranks_a
    return (ra * centred_ranks(b).to(ra.device)).sum(1).float()


def _unit(maps):
    """Min-max to [0, 1] per map (a constant map becomes zeros)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-30)).view_as(maps)


# ----------------------------------------------------------------------------- class sensitivity
def _class_sensitivity(context: xplain.MetricContext):
    model, x, targets, attribution = context.model, context.x, context.targets, context.attribution
    import torch

    params = context.params
    if model.num_classes < 2:
        return {"class-sensitivity": torch.full((x.shape[0],), float("nan"), device=x.device)}
    with torch.no_grad():
        logits = model(x).float()
    masked = logits.scatter(1, targets[:, None], float("-inf"))
    if params["other"] == "second":
        other = masked.argmax(1)
    elif params["other"] == "last":
        other = logits.scatter(1, targets[:, None], float("inf")).argmin(1)
    else:  # random class != target, drawn per sample (seed + image) so batching never changes it
        shift = torch.stack(
            [
                torch.randint(1, model.num_classes, (), generator=g, device=x.device)
                for g in xplain.sample_generators(x, int(context.seed))
            ]
        )
        other = (targets + shift.to(targets.device)) % model.num_classes
    a = attribution.maps.to(x.device).float()
    b = context.reexplain(x, other).maps.to(x.device).float()
    norm = params["normalise"]
    if norm == "l2":
        a = a / a.flatten(1).norm(dim=1).clamp_min(1e-30)[:, None, None]
        b = b / b.flatten(1).norm(dim=1).clamp_min(1e-30)[:, None, None]
    elif norm == "maxabs":
        a = a / a.flatten(1).abs().amax(1).clamp_min(1e-30)[:, None, None]
        b = b / b.flatten(1).abs().amax(1).clamp_min(1e-30)[:, None, None]
    return {"class-sensitivity": (a - b).flatten(1).norm(dim=1)}


# ----------------------------------------------------------------------------- sanity
def weight_layers(model):
    """fx node names of modules with parameters, input to output (the graph's order)."""
    names = []
    for node in model.graph.graph.nodes:
        if node.op == "call_module":
            module = model.graph.get_submodule(node.target)
            if any(p.is_floating_point() for p in module.parameters()):
                names.append(node.name)
    return names


def _randomised_copy(model, name, seed):
    """A deep copy of the node's module with every parameter redrawn from N(0, std(original))."""
    import copy

    import torch

    module = copy.deepcopy(model.graph.get_submodule(model.node(name).target))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.is_floating_point():
                continue
            std = float(p.float().std()) if p.numel() > 1 else abs(float(p.float().mean()))
            if not std > 0:
                std = 0.01
            p.copy_((torch.randn(p.shape, generator=gen) * std).to(p.device, p.dtype))
    return module


def _stateful(context):
    """Whether the method reads state fitted on the trained model (``xplain fit``)."""
    method = context.method
    return method is not None and getattr(method, "fit", None) is not None


def _sanity(context: xplain.MetricContext):
    """Cascading randomisation. State fitted on the trained model (IBA's feature statistics,
    MIP-IN's inverse) does not describe a randomised model: such a method is re-run with the
    state hidden, so that it re-estimates what it needs on each randomised model (and on the
    trained one, for the reference map); a method that cannot run without its state is scored
    with the reused state under ``sanity-stale`` / ``sanity-spearman-stale`` and its ``sanity``
    is NaN (not comparable); ``sanity-comparable`` says which (1 / 0)."""
    import contextlib

    model, x, targets, attribution = context.model, context.x, context.targets, context.attribution
    import torch

    from .similarity import MEASURES, hog_similarity, layer_blocks, parse_measures

    params = context.params
    measures = parse_measures(params["similarity"])
    layers = list(reversed(weight_layers(model)))  # cascading: from the top (the logits) down
    blocks = layer_blocks(model, layers, params["block_depth"])
    if params["layers"] > 0:
        blocks = blocks[: params["layers"]]
    seed = int(context.seed)

    def prep(m, measure):
        absolute = MEASURES[measure]
        return m.abs() if (params["absolute"] if absolute is None else absolute) else m

    def similarity(measure, ref, maps):
        a, b = prep(ref, measure), prep(maps, measure)
        if measure == "ssim":
            return ssim(_unit(a), _unit(b))
        if measure == "hog":
            return hog_similarity(a, b)
        return spearman(a, b)

    ref = attribution.maps.to(x.device).float()
    hide = contextlib.nullcontext
    comparable = True
    if _stateful(context) and blocks:
        try:
            with model.without_fitted_state():
                ref = context.reexplain(x, targets).maps.to(x.device).float()
            hide = model.without_fitted_state
        except xplain.InputDataError as err:
            if "no fitted state" not in err.message:
                raise
            comparable = False
    curves = {m: [torch.ones(x.shape[0], device=x.device)] for m in measures}
    swapped = {}
    k = 0
    for _, names in blocks:
        for name in names:  # the same per-layer seeds whatever the grouping
            swapped[name] = _randomised_copy(model, name, seed * 1000 + k)
            k += 1
        with model.swap_modules(dict(swapped)), hide():  # restored on exit, also after an error
            maps = context.reexplain(x, targets).maps.to(x.device).float()
        for m in measures:
            curves[m].append(similarity(m, ref, maps).to(x.device))
    nan = torch.full((x.shape[0],), float("nan"), device=x.device)
    keys = {m: "sanity" if m == "ssim" else f"sanity-{m}" for m in measures}
    if not blocks:
        return {keys[m]: nan for m in measures}
    steps = torch.arange(len(blocks) + 1, dtype=torch.float32, device=x.device)
    out = {"sanity-comparable": torch.full((x.shape[0],), float(comparable), device=x.device)}
    for m in measures:
        c = torch.stack(curves[m], 1)
        out[f"sanity-{m}-curve"] = c
        out[f"sanity-{m}-curve@x"] = steps
        if comparable:
            out[keys[m]] = c[:, 1:].mean(1)
        else:
            out[keys[m]] = nan
            out[f"{keys[m]}-stale"] = c[:, 1:].mean(1)
    return out


# ----------------------------------------------------------------------------- completeness
def _completeness(context: xplain.MetricContext):
    model, x, targets, attribution = context.model, context.x, context.targets, context.attribution
    import torch

    extras = attribution.extras or {}
    source = extras.get("source", extras.get("source_signal"))  # MIP-IN names it source_signal
    nan = torch.full((x.shape[0],), float("nan"), device=x.device)
    given = [info.get("source_logit") for info in (attribution.sample_info or [])]
    if len(given) == x.shape[0] and all(isinstance(v, (int, float)) for v in given):
        zs = torch.tensor(
            given, device=x.device, dtype=torch.float32
        )  # Φ(S₀) fed in at an inner layer
    elif source is None or tuple(source.shape) != tuple(x.shape):
        return {"completeness": nan, "completeness-positive": nan}
    else:
        with torch.no_grad():
            zs = model(source.to(x.device, x.dtype)).float().gather(1, targets[:, None])[:, 0]
    with torch.no_grad():
        zx = model(x).float().gather(1, targets[:, None])[:, 0]
    denom = zx.abs().clamp_min(1e-12)
    return {
        "completeness": 100 * (zx - zs).abs() / denom,
        "completeness-positive": 100 * (zx - zs).clamp_min(0) / denom,
    }


@xplain.hookimpl
def register_metrics(register):
    register(
        xplain.Metric(
            name="class-sensitivity",
            summary="l2 distance between the maps of the target and another class (MIP-IN 6.4)",
            description="MIP-IN section 6.4.2: the method is re-run for a second class and the l2 "
            "distance between the two maps is the score (higher = more class-sensitive). "
            "The second class is the highest-scoring other class (other=second, default), the "
            "lowest (last) or a seeded random one (MIP-IN used two fixed ImageNet classes, "
            "981 and 589, which do not transfer to other models). Maps are divided by their "
            "l2 norm first (normalise=l2, default; distance in [0, 2]); MIP-IN does not say "
            "how it scales maps, so maxabs and none are offered. A method that ignores the "
            "class (random, guided backprop on many nets) scores near 0.",
            score=_class_sensitivity,
            higher_is_better=True,
            needs=("method",),
            params=[
                xplain.Param(
                    "other",
                    "str",
                    "second",
                    "which other class",
                    choices=("second", "last", "random"),
                ),
                xplain.Param(
                    "normalise",
                    "str",
                    "l2",
                    "map scaling before the distance",
                    choices=("l2", "maxabs", "none"),
                ),
            ],
        )
    )
    register(
        xplain.Metric(
            name="sanity",
            summary="cascading randomisation (Adebayo et al.): mean SSIM to the original map (lower is better)",
            description="Adebayo et al. 2018, cascading parameter randomisation: the modules with "
            "parameters (conv, linear; BatchNorm folded by the exporter) are randomised one by "
            "one from the top (logits) down, cumulatively, each parameter redrawn from N(0, "
            "std of the original) (Adebayo re-initialise with the layer's initialiser); after "
            "each step the method is re-run and compared with the original map: SSIM "
            "(11-tap Gaussian window, sigma 1.5, maps min-max scaled to [0, 1]) and Spearman "
            "rank correlation (ties averaged), on |map| (absolute=true, default, Adebayo's "
            "visualisation variant) or the signed map. `sanity` = mean SSIM over the steps and "
            "`sanity-spearman` = mean rank correlation (both lower is better: a faithful map "
            "changes when the model does); the curves start at step 0 (1.0). `layers` limits "
            "how many layers are randomised (0 = all). The model is restored afterwards. "
            "Fitted state (`xplain fit`: IBA's feature statistics, MIP-IN's inverse) describes "
            "the trained model only: a method that has a fit is re-run with the state hidden, "
            "so it re-estimates its statistics on each randomised model and on the trained "
            "one for the reference map (iba/input-iba: per-image estimates); a method that "
            "cannot run without its state (mip-in) is not comparable: `sanity` and "
            "`sanity-spearman` are NaN and the scores with the reused state are reported as "
            "`sanity-stale` / `sanity-spearman-stale`. `sanity-comparable` is 1 or 0 "
            "accordingly. `similarity` picks the measures of Adebayo et al. (comma-separated): "
            "ssim, spearman (both on |map| or signed as `absolute` says), spearman-abs and "
            "spearman-signed (fixed), hog (Pearson correlation of scikit-image HOG descriptors of "
            "the min-max scaled maps: 9 orientations, 8×8 cells, 3×3 blocks; maps under 24 pixels "
            "use cells of a quarter side); each gives `sanity-<m>` (ssim: `sanity`) and the "
            "per-block record `sanity-<m>-curve` (one value per randomisation step, step 0 = "
            "the trained model). `block_depth` randomises block by block: consecutive layers "
            "whose ONNX node names share their first n '/'-parts form one step (torch.onnx "
            "names nodes by module path; EfficientNet-Lite as exported by bench/ uses 1: stem, "
            "16 MBConv blocks, head, fc); `layers` then counts blocks.",
            score=_sanity,
            higher_is_better=False,
            needs=("method",),
            directions={"sanity-comparable": True},
            params=[
                xplain.Param(
                    "layers",
                    "int",
                    0,
                    "randomise at most this many layers from the top (0 = all)",
                    min=0,
                    max=100000,
                ),
                xplain.Param("absolute", "bool", True, "compare |map| instead of signed maps"),
                xplain.Param(
                    "similarity",
                    "str",
                    "ssim,spearman",
                    "comma-separated measures: ssim, spearman, spearman-abs, spearman-signed, hog",
                ),
                xplain.Param(
                    "block_depth",
                    "int",
                    0,
                    "randomise block by block: group layers by this many parts of their ONNX "
                    "names (0 = layer by layer)",
                    min=0,
                    max=64,
                ),
            ],
            curves={
                f"sanity-{m}-curve": "blocks randomised from the top"
                for m in ("ssim", "spearman", "spearman-abs", "spearman-signed", "hog")
            },
        )
    )
    register(
        xplain.Metric(
            name="completeness",
            summary="APC of the source signal's target logit, percent (MIP-IN eq. 10; lower is better)",
            description="MIP-IN eq. 10-11 for methods that return a source signal in "
            "Attribution.extras['source'] or ['source_signal'] (B×C×H×W in model-input space), or "
            "that report Φ(S₀) as sample_info['source_logit'] (MIP-IN's head mode, whose source "
            "signal lives at a feature layer): APC = "
            "100 |z_t(X) - z_t(S)| / |z_t(X)| and positive APC = 100 relu(z_t(X) - z_t(S)) / "
            "|z_t(X)|, with z_t the target logit (the paper writes Phi(X), the logits; xplain "
            "reads it as the target's logit). The paper averages per class, then over classes; "
            "eval's summary averages over images (the same on a class-balanced set). Methods "
            "without a source signal get NaN (not applicable) and are counted as such.",
            score=_completeness,
            higher_is_better=False,
            needs=("method",),
            directions={"completeness-positive": False},
        )
    )
