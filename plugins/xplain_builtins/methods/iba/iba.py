"""``iba`` and ``input-iba``: information bottlenecks for attribution.

``iba`` is the per-sample bottleneck of Schulz et al. (ICLR 2020); ``input-iba`` is the method of
Zhang, Khakzar et al. (NeurIPS 2021), whose stages 2–3 live in :mod:`.iba_input`
(which builds on this module; this module does not import it).

Speed: the model is split once at the bottleneck layer (``model.split_at``) into a *prefix*
(input → feature map) and a *suffix* (feature map → logits), two new fx graphs sharing the
model's modules (the model's own graph is never touched). The prefix runs once per explained batch, so each of the
10 optimisation steps costs only the suffix; fitting statistics and the GAN stage run only the
prefix. All images of a batch are optimised together: every per-image quantity (masks, noise,
optimiser moments) is element-wise, so batching never mixes images.
"""

import math

import xplain

LN2 = math.log(2.0)


def resolve_layer(model, requested, method, spatial=True):
    """The bottleneck layer: ``--param layer=NAME``, else :meth:`Model.bottleneck_layer` (the last
    feature layer at ≥ 1/8 of the input resolution: the paper's conv4_1 grid on VGG16)."""
    if requested:
        name = model.node(requested).name  # UsageError for an unknown name
    else:
        default = model.bottleneck_layer()
        if default is None:
            raise xplain.UsageError(
                f"{method} needs a spatial feature map and this model has none",
                hint="pass --param layer=NAME (see `xplain inspect MODEL`)",
            )
        name = default.name
    try:
        shape = tuple(model.shape(name))
    except KeyError:
        raise xplain.UsageError(f"{method}: layer {name!r} does not carry a tensor") from None
    if len(shape) < 2:
        raise xplain.UsageError(f"{method}: layer {name!r} has no feature dimension ({shape})")
    if spatial and model.feature_layer(name) is None:
        dims = "×".join(map(str, shape[1:]))
        raise xplain.UsageError(
            f"{method}: layer {name!r} is not a spatial feature map ({dims}); "
            "its capacity cannot be drawn over the image",
            hint="use input-iba, or a conv layer",
        )
    return name, shape


# ----------------------------------------------------------------------------- formulas
def iba_capacity(r, mean, std, lam):
    """KL[N(λr̃, (1−λ)²) ‖ N(0, 1)] per element, r̃ = (r − μ)/σ (nats): the IBA capacity.

    It equals KL[P(Z|R) ‖ Q(Z)] for Z = λR + (1−λ)ε, ε ~ N(μ, σ²), Q = N(μ, σ²)."""
    import torch

    r_norm = (r - mean) / std
    mu_z = lam * r_norm
    sd_z = (1 - lam).clamp_min(1e-12)
    return -0.5 * (1 + 2 * torch.log(sd_z) - mu_z**2 - sd_z**2)


def input_kl(x, mean, std, lam, prior):
    """Proposition 3 of the InputIBA paper: KL[P(Z_I|I) ‖ P(Z_I)] per element (nats), with
    P(Z_I|I) = N(Λx + (1−Λ)μ, (1−Λ)²σ²) and P(Z_I) = N(λ_GΛx + (1−λ_GΛ)μ, (1−λ_GΛ)²σ²)
    (Remarks 1–2), Λ = ``lam``, λ_G = ``prior``."""
    import torch

    keep = (1 - lam).clamp_min(1e-12)
    joint = (1 - prior * lam).clamp_min(1e-12)
    return (
        torch.log(joint)
        - torch.log(keep)
        + keep**2 / (2 * joint**2)
        + (x - mean) ** 2 * (lam - prior * lam) ** 2 / (2 * joint**2 * std**2)
        - 0.5
    )


def gaussian_smooth(t, sigma):
    """Depthwise Gaussian blur over the last two dims (kernel 2·round(2σ)+1, reflection pad),
    as the IBA library smooths λ; σ = 0 returns ``t``."""
    import torch
    import torch.nn.functional as F

    if sigma <= 0 or t.dim() != 4:
        return t
    half = int(round(2 * sigma))
    coords = torch.arange(-half, half + 1, device=t.device, dtype=t.dtype)
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = g[:, None] * g[None, :]
    kernel = (kernel / kernel.sum()).expand(t.shape[1], 1, 2 * half + 1, 2 * half + 1)
    mode = "reflect" if min(t.shape[-2:]) > half else "replicate"
    padded = F.pad(t, (half, half, half, half), mode=mode)
    return F.conv2d(padded, kernel, groups=t.shape[1])


def smooth_layout(feature, t, sigma):
    """:func:`gaussian_smooth` over the spatial view of a feature layer's tensor (tokens and
    channels-last maps are smoothed on their grid; prefix tokens are left as they are)."""
    if feature is None or feature.layout is None or feature.layout.kind == "nchw":
        return gaussian_smooth(t, sigma)
    return feature.from_spatial(gaussian_smooth(feature.to_spatial(t), sigma), like=t)


def spatial(feature, t):
    """A feature layer's tensor as B×C×h×w (identity for B×C×H×W and non-spatial layers)."""
    return t if feature is None else feature.to_spatial(t)


def saliency_bits(capacity, size):
    """Capacity (B×C×h×w, nats) → B×H×W map: channel sum in bits, scaled by (h·w)/(H·W) so the
    map's total stays the bottleneck's total information, bilinearly resized to ``size``."""
    import torch.nn.functional as F

    bits = capacity.sum(dim=1, keepdim=True) / LN2
    if bits.dim() != 4:  # a non-spatial layer: one value spread over the image
        return bits.reshape(bits.shape[0], 1, 1).expand(-1, *size) / (size[0] * size[1])
    bits = bits * (bits.shape[-2] * bits.shape[-1]) / (size[0] * size[1])
    return F.interpolate(bits, size=size, mode="bilinear", align_corners=False)[:, 0]


# ----------------------------------------------------------------------------- statistics
class Welford:
    """Per-element running mean and (n−1) variance, merged batch by batch (Chan et al.'s
    parallel form of Welford's update: the same numbers, one update per batch), plus the
    fraction of non-zero values per element (the active-unit mask)."""

    def __init__(self):
        self.n = 0
        self.mean = self.m2 = self.nonzero = None

    def update(self, batch):
        import torch

        b = batch.detach().to(torch.float64)
        count = b.shape[0]
        bmean = b.mean(0)
        bm2 = ((b - bmean) ** 2).sum(0)
        nz = (b != 0).sum(0).to(torch.float64)
        if self.mean is None:
            self.mean, self.m2, self.nonzero, self.n = bmean, bm2, nz, count
            return
        total = self.n + count
        delta = bmean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + bm2 + delta**2 * self.n * count / total
        self.nonzero = self.nonzero + nz
        self.n = total

    def result(self):
        import torch

        std = torch.sqrt(self.m2 / max(self.n - 1, 1))
        return {
            "mean": self.mean.float(),
            "std": std.float(),
            "active_fraction": (self.nonzero / self.n).float(),
        }


def _fit(model, batches, params, console=None):
    """``xplain fit iba``: Welford statistics of the bottleneck layer (forward stopped there)
    and per-channel statistics of the input (the InputIBA input noise)."""
    import torch

    layer, shape = resolve_layer(model, params["layer"], "iba", spatial=False)
    split = model.split_at(layer)
    feats, pixels = Welford(), Welford()
    limit = params["fit_samples"]
    with torch.no_grad():
        for x in batches():
            if limit and feats.n >= limit:
                break
            if limit:
                x = x[: limit - feats.n]
            feats.update(split.features(x))
            pixels.update(x.transpose(0, 1).flatten(1).T)  # every pixel a sample, per channel
    if feats.n < 2:
        raise xplain.InputDataError("iba fit needs at least 2 images")
    stats = feats.result()
    inp = pixels.result()
    tensors = {
        "mean": stats["mean"],
        "std": stats["std"],
        "active_fraction": stats["active_fraction"],
        "input_mean": inp["mean"],
        "input_std": inp["std"],
    }
    if console is not None and feats.n < 1000:
        console.print(
            f"iba: statistics from {feats.n} images; the IBA authors recommend 1000–10000"
        )
    return tensors, {"layer": layer, "layer_shape": list(shape[1:]), "n": feats.n}


def augment(x, gen, copies):
    """``copies`` scrambled versions of one image (1×C×H×W): the image cut into a grid of
    tiles (1/8 of its size) that are randomly permuted and flipped, plus a little pixel noise.

    Scrambling keeps the image's colours and textures but breaks up objects, so the noise
    ε ~ N(μ, σ²) drawn from these statistics carries little class evidence (statistics from
    plain flips/shifts of the image would make the noise itself look like the object, and the
    bottleneck could then remove everything at no cost)."""
    import torch

    _, c, h, w = x.shape
    kw = {"device": x.device, "dtype": x.dtype}
    th, tw = max(h // 8, 1), max(w // 8, 1)
    gh, gw = h // th, w // tw
    core = x[:, :, : gh * th, : gw * tw]
    tiles = core.reshape(c, gh, th, gw, tw).permute(1, 3, 0, 2, 4).reshape(gh * gw, c, th, tw)
    scale = x.std().clamp_min(1e-3)
    out = []
    for _ in range(copies):
        perm = torch.randperm(gh * gw, generator=gen, device=x.device)
        flips = torch.rand((gh * gw, 2), generator=gen, **kw) < 0.5
        t = tiles[perm]
        t = torch.where(flips[:, 0, None, None, None], t.flip(-1), t)
        t = torch.where(flips[:, 1, None, None, None], t.flip(-2), t)
        img = x.clone()
        grid = t.reshape(gh, gw, c, th, tw).permute(2, 0, 3, 1, 4)
        img[:, :, : gh * th, : gw * tw] = grid.reshape(1, c, gh * th, gw * tw)
        out.append(img + 0.05 * scale * torch.randn(img.shape, generator=gen, **kw))
    return torch.cat(out)


def feature_stats(model, split, x, params, gens, method):
    """``(mean, std, active, info)`` at the bottleneck, per image (B×C×…):
    the fitted statistics broadcast to the batch, or — when ``xplain fit iba`` was not run for
    this model and layer — estimated from each image's own augmented copies (with a warning),
    so that batching never changes a map."""
    import warnings

    import torch

    info = {}
    state = None
    for name in dict.fromkeys(
        (method, "iba")
    ):  # input-iba: its own fit, else iba's (the same statistics)
        try:
            tensors, meta = model.fitted_state(name)
        except xplain.InputDataError as err:
            if "no fitted state" not in err.message:
                raise
            continue
        if meta.get("layer") == split.layer:
            state = tensors
            break
        info["stats_note"] = (
            f"fitted {name} statistics are for layer {meta.get('layer')!r}, not {split.layer!r}"
        )
    if state is not None:
        info["stats"] = f"fitted ({meta.get('n')} images)"
        b = x.shape[0]
        mean = state["mean"].to(x.device, x.dtype).expand(b, *state["mean"].shape)
        std = state["std"].to(x.device, x.dtype).expand(b, *state["std"].shape)
        active = (state["active_fraction"] > params["active_threshold"]).to(x.dtype).to(x.device)
        return mean, std.clamp_min(params["min_std"]), active.expand(b, *active.shape), info, state
    copies = params["fallback_copies"]
    means, stds, actives = [], [], []
    with torch.no_grad():
        for i, gen in enumerate(gens):
            acc = Welford()
            acc.update(
                split.features(torch.cat([x[i : i + 1], augment(x[i : i + 1], gen, copies - 1)]))
            )
            r = acc.result()
            means.append(r["mean"])
            stds.append(r["std"])
            actives.append((r["active_fraction"] > params["active_threshold"]).float())
    info["stats"] = (
        f"estimated from each explained image and {copies - 1} augmented copies (not fitted)"
    )
    warnings.warn(
        f"{method}: no fitted statistics for layer {split.layer!r}; estimating them from the "
        f"explained images (run `xplain fit iba MODEL DATA` for the paper's setting)",
        stacklevel=2,
    )
    kw = {"device": x.device, "dtype": x.dtype}
    return (
        torch.stack(means).to(**kw),
        torch.stack(stds).to(**kw).clamp_min(params["min_std"]),
        torch.stack(actives).to(**kw),
        info,
        None,
    )


# ----------------------------------------------------------------------------- the bottleneck
def feature_bottleneck(
    split, x, targets, mean, std, active, gens, *, beta, steps, lr, copies, initial_alpha, sigma
):
    """Optimise the per-sample bottleneck Z = λR + (1−λ)ε at the split layer.

    Loss per image: CE(target) averaged over ``copies`` noise draws + β·mean capacity; Adam on
    α (λ = smooth(sigmoid(α))). Returns ``(capacity, lam, R, rest)``: the capacity (nats) of the
    last forward pass (before the last step, as the reference code), the final smoothed λ, the
    clean feature map and the other values the suffix needs."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    with torch.no_grad():
        values = split.prefix(x)
        r = values[0]
        rest = values[1:]
        if rest:  # batch-shaped values the suffix reads: recompute them for the copies
            rest = split.prefix(x.repeat_interleave(copies, dim=0))[1:]
    alpha = torch.full_like(r, float(initial_alpha)).requires_grad_(True)
    opt = torch.optim.Adam([alpha], lr=lr)
    tgt = targets.repeat_interleave(copies)
    kw = {"device": r.device, "dtype": r.dtype}
    capacity = None
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            lam = smooth_layout(split.feature, torch.sigmoid(alpha), sigma)
            noise = torch.stack(
                [torch.randn((copies, *r.shape[1:]), generator=g, **kw) for g in gens]
            )
            eps = mean[:, None] + std[:, None] * noise
            z = (lam[:, None] * r[:, None] + (1 - lam[:, None]) * eps) * active[:, None]
            logits = split.suffix(z.flatten(0, 1), rest)
            ce = F.cross_entropy(logits, tgt, reduction="none").reshape(b, copies).mean(1)
            cap = iba_capacity(r, mean, std, lam) * active
            loss = (
                ce + beta * cap.flatten(1).mean(1)
            ).sum()  # images independent: sum of per-image losses
            loss.backward()
            opt.step()
            capacity = cap.detach()
        lam = smooth_layout(split.feature, torch.sigmoid(alpha.detach()), sigma)
    return capacity, lam, r, rest


def _stats_and_gens(model, x, params, seed, method, layer):
    split = model.split_at(layer)
    gens = xplain.sample_generators(x, seed)
    mean, std, active, info, state = feature_stats(model, split, x, params, gens, method)
    return split, gens, mean, std, active, info, state


def stage_one(model, x, targets, params, seed, method, layer, sigma):
    """Statistics, generators and the per-sample feature bottleneck at ``layer``: the whole of
    IBA and InputIBA's first stage (they differ only in the noise ``sigma`` they smooth with).
    Returns ``(split, gens, mean, std, active, info, state, capacity, lam, r)``."""
    split, gens, mean, std, active, info, state = _stats_and_gens(
        model, x, params, seed, method, layer
    )
    capacity, lam, r, _ = feature_bottleneck(
        split,
        x,
        targets,
        mean,
        std,
        active,
        gens,
        beta=params["beta"],
        steps=params["steps"],
        lr=params["lr"],
        copies=params["batch_size"],
        initial_alpha=params["initial_alpha"],
        sigma=sigma,
    )
    return split, gens, mean, std, active, info, state, capacity, lam, r


def _explain_iba(request: xplain.ExplainRequest):
    model, x, targets = request.model, request.x, request.targets
    params, seed = request.params, request.seed
    import time

    layer, shape = resolve_layer(model, params["layer"], "iba")
    began = time.perf_counter()
    split, _, _, _, _, info, _, capacity, _, _ = stage_one(
        model, x, targets, params, seed, "iba", layer, params["sigma"]
    )
    maps = saliency_bits(spatial(split.feature, capacity), (model.spec.height, model.spec.width))
    info.update(
        layer=layer, layer_shape=list(shape[1:]), seconds=round(time.perf_counter() - began, 4)
    )
    per_image = [
        {"total_bits": round(float(v), 4)} for v in (capacity.flatten(1).sum(1) / LN2).tolist()
    ]
    return xplain.Attribution(maps, info=info, sample_info=per_image)


# ----------------------------------------------------------------------------- parameters
def common_params(beta=10.0, steps=10):
    P = xplain.Param
    return [
        P(
            "layer",
            "str",
            "",
            "bottleneck layer (fx node name, see `xplain inspect`); empty = the last "
            "feature layer at >= 1/8 of the input resolution (the papers' VGG16 conv4_1 / ResNet-50 layer2 grid; "
            "`inspect` marks it 'iba')",
        ),
        P(
            "beta",
            "float",
            beta,
            "weight β of the mean capacity (information) term in the loss",
            min=0,
        ),
        P(
            "steps",
            "int",
            steps,
            "Adam steps optimising the bottleneck mask (paper: 10; on a very confident "
            "model the mask may still be uniform after 10, see docs/input-iba.md)",
            min=1,
            max=10000,
        ),
        P("lr", "float", 1.0, "Adam learning rate for the mask logits α", min=0),
        P(
            "batch_size",
            "int",
            10,
            "noise draws per image and step (the image is copied this many times)",
            min=1,
            max=1024,
        ),
        P(
            "initial_alpha",
            "float",
            5.0,
            "initial mask logit α (λ = sigmoid(5) ≈ 0.993: nearly all passes)",
        ),
        P("min_std", "float", 0.01, "floor on the feature standard deviation σ_R", min=0),
        P(
            "active_threshold",
            "float",
            0.01,
            "a unit is active (kept) when non-zero in more than this fraction of the samples",
            min=0,
            max=1,
        ),
        P(
            "fallback_copies",
            "int",
            32,
            "without fitted statistics: the image plus this many minus one "
            "tile-scrambled copies estimate them",
            min=2,
            max=1024,
        ),
        P(
            "fit_samples",
            "int",
            10000,
            "`xplain fit iba`: use at most this many images (0 = all)",
            min=0,
            max=10000000,
        ),
    ]


_IBA_DESCRIPTION = (
    "Per-sample Information Bottleneck Attribution (Schulz et al., ICLR 2020; section 3.1 of the InputIBA "
    "paper). A bottleneck Z = λR + (1−λ)ε replaces the feature map R at `layer` (default: the last "
    "feature layer whose grid is at least 1/8 of the input's, as conv4_1 of VGG16 in the InputIBA paper and "
    "layer2 of ResNet-50 in the IBA paper; `xplain inspect` marks it 'iba'), with ε ~ N(μ_R, σ_R²) from per-element statistics of R over a data set "
    "(`xplain fit iba MODEL DATA`: Welford mean and n−1 std, forward stopped at the layer, std floored at "
    "min_std=0.01, units non-zero in ≤ 1% of samples masked out). λ = sigmoid(α), smoothed by a Gaussian "
    "(sigma=1, kernel 5, reflection padding); α starts at initial_alpha=5. Loss per image = cross-entropy of "
    "the target over batch_size=10 noise copies + beta=10 × the mean over elements of the capacity "
    "KL[N(λr̃, (1−λ)²) ‖ N(0,1)], r̃ = (R−μ)/σ; Adam, lr=1, steps=10. The map is the capacity of the last "
    "forward pass (before the final step, as the reference code), summed over channels, in bits, times "
    "h·w/(H·W) (so the map sums to the total bits), bilinearly resized to the input: non-negative. "
    "Without fitted statistics the statistics are estimated per image from the image and "
    "fallback_copies−1=31 scrambled copies (tiles of 1/8 of the image permuted and flipped, plus a little "
    "noise: the objects are broken up, so the noise carries no class evidence), with a warning and "
    "info.stats saying so (per image, so batching never changes a map; less reliable than data-set "
    "statistics). Speed: the model is cut at the layer; the part before it runs once per "
    "batch, each step runs only the part after it on all images × copies at once. Deviations: none from the "
    "IBA library defaults; the paper code's min-max normalised first-copy map is not used."
)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="iba",
            summary="per-sample information bottleneck at a feature layer (Schulz et al. 2020), bits per pixel",
            description=_IBA_DESCRIPTION,
            explain=_explain_iba,
            fit=_fit,
            params=common_params()
            + [
                xplain.Param(
                    "sigma",
                    "float",
                    1.0,
                    "σ of the Gaussian smoothing of λ (0 = none)",
                    min=0,
                    max=50,
                )
            ],
            capabilities=xplain.Capabilities(
                needs_gradients=True, needs_fitting=False, stochastic=True
            ),
        )
    )
