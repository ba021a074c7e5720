"""``gradient``, ``input-x-gradient``, ``integrated-gradients`` and ``smoothgrad``.

Plain-autograd methods: no graph changes, so nothing needs restoring. Every gradient is of the
target *logit* with respect to the preprocessed input. Work is batched: interpolation points
(integrated gradients) and noisy copies (smoothgrad) of all images in the batch go through the
model together, as many images per forward/backward pass as fit in a memory budget
(:func:`xplain.images_per_pass`; ``internal_batch`` / ``memory_budget_mb``), one reused input buffer.

Noise (smoothgrad, the ``uniform`` integrated-gradients baseline) comes from
:func:`xplain.sample_generators`, so it depends only on the seed and the image; the helpers
:func:`smoothgrad_noise` and :func:`integrated_gradients_baseline` return exactly what the
methods use, so tests can rebuild a reference (e.g. Captum) under the same noise.
"""

import xplain


def _pass_params(what):
    return xplain.pass_params(f"images ({what} of all batch images together)")


def _target_gradient(model, x, targets, fresh=False):
    """d logit[target] / d x for a batch (one forward, one backward). ``fresh``: x is a
    temporary the caller built, so it is used in place instead of copied."""
    import torch

    with torch.enable_grad():
        xg = (x.detach() if fresh else x.detach().clone()).requires_grad_(True)
        logits = model(xg)
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), xg)
    return grad


# ----------------------------------------------------------------------------- gradient, x * gradient
def _explain_gradient(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    return xplain.reduce_channels(_target_gradient(model, x, targets), params["reduce"])


def _explain_input_x_gradient(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    return xplain.reduce_channels(x * _target_gradient(model, x, targets), params["reduce"])


# ----------------------------------------------------------------------------- integrated gradients
_IG_RULES = (
    "gausslegendre",
    "trapezoid",
    "riemann_trapezoid",
    "riemann_right",
    "riemann_left",
    "riemann_middle",
)


def _quadrature(rule, steps):
    """(weights, alphas) on [0, 1]: Captum's ``approximation_parameters`` nodes and weights for
    Captum's names, and ``trapezoid``: the trapezoid rule itself (weights summing to 1)."""
    import torch

    if rule == "gausslegendre":
        import numpy as np

        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (0.5 * weights).tolist(), (0.5 * (1 + nodes)).tolist()
    if steps < 2:
        raise xplain.UsageError(f"integrated-gradients: {rule} needs steps >= 2")
    weights = [1 / steps] * steps
    if rule in ("trapezoid", "riemann_trapezoid"):
        # The trapezoid rule on `steps` equally spaced nodes 0 … 1 has spacing 1/(steps − 1),
        # half weight at both ends, weights summing to 1. Captum's riemann_trapezoid weights the
        # same nodes by 1/steps (summing to 1 − 1/steps): its name gives its number, `trapezoid`
        # the rule's.
        if rule == "trapezoid":
            weights = [1 / (steps - 1)] * steps
        weights[0] /= 2
        weights[-1] /= 2
        alphas = torch.linspace(0, 1, steps)
    elif rule == "riemann_left":
        alphas = torch.linspace(0, 1 - 1 / steps, steps)
    elif rule == "riemann_middle":
        alphas = torch.linspace(1 / (2 * steps), 1 - 1 / (2 * steps), steps)
    else:  # riemann_right
        alphas = torch.linspace(1 / steps, 1, steps)
    return weights, alphas.tolist()


def gaussian_blur(x, sigma):
    """Blur each channel of ``x`` (B×C×H×W) with a Gaussian of ``sigma`` pixels.

    Separable: one horizontal and one vertical depthwise ``conv2d`` with a 1-D kernel truncated at
    4σ (as scipy.ndimage) and normalised to sum 1; borders padded by replication, so a constant
    image stays constant and any kernel size works on any image size. ``sigma <= 0``: a copy."""
    import torch
    import torch.nn.functional as F

    radius = int(4.0 * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return x.clone()
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def baseline_params() -> list:
    """The ``baseline`` / ``blur_sigma`` parameters of the methods that take one reference input
    (integrated gradients, DeepLIFT): one definition, so their choices and bounds cannot drift."""
    return [
        xplain.Param(
            "baseline",
            "str",
            "zeros",
            "the reference input x'",
            choices=("zeros", "blur", "uniform"),
        ),
        xplain.Param(
            "blur_sigma", "float", 5.0, "Gaussian σ in pixels for baseline=blur", min=0.0, max=100
        ),
    ]


def integrated_gradients_baseline(x, kind="zeros", blur_sigma=5.0, seed=0):
    """The baseline ``integrated-gradients`` uses for ``x`` (B×C×H×W).

    zeros: 0 in the model's (preprocessed) input space; blur: :func:`gaussian_blur` of x;
    uniform: U[min x_b, max x_b] per image b, drawn from :func:`xplain.sample_generators`."""
    import torch

    if kind == "zeros":
        return torch.zeros_like(x)
    if kind == "blur":
        return gaussian_blur(x, blur_sigma)
    if kind == "uniform":
        out = []
        for sample, gen in zip(x.detach(), xplain.sample_generators(x, seed)):
            lo, hi = sample.min(), sample.max()
            out.append(
                torch.rand(sample.shape, generator=gen, device=x.device, dtype=x.dtype) * (hi - lo)
                + lo
            )
        return torch.stack(out)
    raise xplain.UsageError(f"unknown integrated-gradients baseline {kind!r}")


def _explain_integrated_gradients(request: xplain.ExplainRequest):
    model, x, targets = request.model, request.x, request.targets
    params, seed = request.params, request.seed
    import torch

    steps = params["steps"]
    weights, alphas = _quadrature(params["method"], steps)
    baseline = (  # a caller's tensor (xplain.explain(..., baselines=)) wins over the parameter
        request.baselines
        if request.baselines is not None
        else integrated_gradients_baseline(x, params["baseline"], params["blur_sigma"], seed)
    )
    delta = x - baseline
    batch = x.shape[0]
    per_pass = xplain.images_per_pass(model, params["internal_batch"], params["memory_budget_mb"])
    # a pass holds `points` interpolation points of `group` images: all images when they fit
    # (interpolation points of the whole batch together), else groups of per_pass images
    group = min(batch, per_pass)
    points = max(1, per_pass // group)
    alphas_t = torch.tensor(alphas, device=x.device, dtype=x.dtype)
    weights_t = torch.tensor(weights, device=x.device, dtype=x.dtype)
    total = torch.zeros_like(x)
    buffer = x.new_empty(min(points, steps), group, *x.shape[1:])  # reused by every pass
    for lo in range(0, batch, group):
        base, diff, tgt = (
            baseline[lo : lo + group],
            delta[lo : lo + group],
            targets[lo : lo + group],
        )
        n = base.shape[0]
        for start in range(0, steps, points):
            a, w = alphas_t[start : start + points], weights_t[start : start + points]
            k = a.numel()
            inputs = buffer[:k, :n]
            torch.addcmul(base[None], a.view(k, 1, 1, 1, 1), diff[None], out=inputs)
            grads = _target_gradient(
                model, inputs.reshape(k * n, *x.shape[1:]), tgt.repeat(k), fresh=True
            ).view(k, n, *x.shape[1:])
            total[lo : lo + n] += torch.tensordot(w, grads, dims=1)  # Σ_k w_k ∇f(point_k)
            # image-steps, so a bar over images moves per image (eval) and per pass (explain)
            xplain.report_progress(lo * steps + n * (start + k), batch * steps, "image-steps")
    return xplain.Attribution(
        xplain.reduce_channels(total * delta, params["reduce"]),
        info={
            "steps": steps,
            "method": params["method"],
            "baseline": "tensor" if request.baselines is not None else params["baseline"],
            "images_per_pass": group * min(points, steps),
        },
    )


# ----------------------------------------------------------------------------- smoothgrad
def _noise_stream(x, seed, samples, noise):
    """Yield ``(b, eps)`` for every image b and noise sample, image-major.

    Each noise sample is one ``randn(C, H, W)`` draw from image b's own generator, scaled by
    σ_b = noise × (max x_b − min x_b); drawing per sample keeps the values independent of how
    the method groups images into passes."""
    import torch

    for b, (sample, gen) in enumerate(zip(x.detach(), xplain.sample_generators(x, seed))):
        sigma = noise * (sample.max() - sample.min())
        for _ in range(samples):
            yield (
                b,
                torch.randn(sample.shape, generator=gen, device=x.device, dtype=x.dtype) * sigma,
            )


def smoothgrad_noise(x, seed=0, samples=50, noise=0.15):
    """The noise ``smoothgrad`` adds to ``x`` (B×C×H×W), as a B×samples×C×H×W tensor."""
    import torch

    eps = [e for _, e in _noise_stream(x, seed, samples, noise)]
    return torch.stack(eps).view(x.shape[0], samples, *x.shape[1:])


def _explain_smoothgrad(request: xplain.ExplainRequest):
    model, x, targets = request.model, request.x, request.targets
    params, seed = request.params, request.seed
    import torch

    samples = params["samples"]
    total = torch.zeros_like(x)
    stream = _noise_stream(x, seed, samples, params["noise"])
    per_pass = xplain.images_per_pass(model, params["internal_batch"], params["memory_budget_mb"])
    pending = []
    done = [0]

    def flush():
        idx = torch.tensor([b for b, _ in pending], device=x.device)
        noisy = x.detach()[idx] + torch.stack([e for _, e in pending])
        grads = _target_gradient(model, noisy, targets[idx], fresh=True)
        if params["square"]:
            grads = grads * grads
        total.index_add_(0, idx, grads)
        done[0] += len(pending)
        xplain.report_progress(done[0], x.shape[0] * samples, "noisy samples")
        pending.clear()

    for item in stream:
        pending.append(item)
        if len(pending) == per_pass:
            flush()
    if pending:
        flush()
    return xplain.Attribution(
        xplain.reduce_channels(total / samples, params["reduce"]),
        info={"samples": samples, "noise": params["noise"], "square": params["square"]},
    )


# ----------------------------------------------------------------------------- registration
@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="gradient",
            reference="captum.attr.Saliency(abs=False)",
            summary="signed d logit / d input, channels summed (vanilla gradient)",
            description=(
                "One forward and one backward pass: the gradient of the target class's logit (never the "
                "softmax probability) with respect to the preprocessed input, kept signed and reduced over "
                "colour channels by `reduce` (sum by default). Equals Captum's Saliency(abs=False) summed "
                "over channels. `saliency` is its absolute value with a channel max."
            ),
            explain=_explain_gradient,
            params=[xplain.reduce_param()],
            capabilities=xplain.Capabilities(needs_gradients=True),
        )
    )
    register(
        xplain.Method(
            name="input-x-gradient",
            reference="captum.attr.InputXGradient",
            summary="input × d logit / d input, channels summed (Shrikumar et al. 2016)",
            description=(
                "One forward and one backward pass: the preprocessed input times the gradient of the "
                "target logit, elementwise, then reduced over colour channels by `reduce` (sum by "
                "default, which is the first-order Taylor contribution of each pixel relative to an "
                "all-zero input). Equals Captum's InputXGradient summed over channels. Note that 'zero' is "
                "zero in the model's preprocessed input space (the dataset mean colour for mean/std "
                "normalisation)."
            ),
            explain=_explain_input_x_gradient,
            params=[xplain.reduce_param()],
            capabilities=xplain.Capabilities(needs_gradients=True),
        )
    )
    register(
        xplain.Method(
            name="integrated-gradients",
            reference="captum.attr.IntegratedGradients",
            summary="path integral of gradients from a baseline (Sundararajan et al. 2017)",
            description=(
                "IG_i = (x_i − x'_i) · ∫₀¹ ∂f(x' + α(x − x'))/∂x_i dα for the target logit f and baseline "
                "x', the integral approximated by `steps` quadrature nodes α_k with weights w_k: "
                "Σ_k w_k ∇f(x' + α_k(x − x')), times (x − x'), then reduced over channels by `reduce` "
                "(sum by default). Exactly `steps` gradient evaluations per image; interpolation points of "
                "all images share each forward/backward pass, `internal_batch` images per pass or, by "
                "default, as many as fit in `memory_budget_mb` (xplain.images_per_pass: one image's "
                "activations at a time, a quarter of free memory, at most 256 MB; fewer images than the "
                "batch: the batch is split). `method` is the quadrature: Captum's gausslegendre (the default, as "
                "Captum's: n Gauss-Legendre nodes integrate polynomials of degree 2n−1 exactly, the "
                "smallest error per gradient evaluation on smooth paths), riemann_trapezoid, riemann_right, "
                "riemann_left, riemann_middle, with Captum's nodes and weights, so the map equals Captum's "
                "IntegratedGradients (same baseline, n_steps, method) summed over channels (docs/parity.md: "
                "≤ the float32 floor of the export on ResNet-50 and EfficientNet-Lite0). Captum's "
                "riemann_trapezoid weights its nodes 0, 1/(n−1), …, 1 by 1/n (halved at the ends), so its "
                "weights sum to 1 − 1/n and its map is short of completeness by that factor; `trapezoid` "
                "is the trapezoid rule itself (weights 1/(n−1), halved at the ends: Captum's × n/(n−1)). "
                "Completeness: the map sums to f(x) − f(x') up to the quadrature error, which shrinks "
                "with `steps`. Baselines: zeros = 0 in the model's preprocessed input "
                "space (Captum's default); blur = the image blurred by a separable Gaussian of "
                "`blur_sigma` pixels (truncated at 4σ, replicated borders); uniform = uniform noise "
                "between the image's min and max value, drawn per image from the run's seed and the image "
                "(one draw, not an average over draws). Captum takes baselines as tensors; blur and uniform are xplain's; "
                "a tensor given as `xplain.explain(..., baselines=T)` replaces `baseline` (Captum's use)."
            ),
            explain=_explain_integrated_gradients,
            params=[
                xplain.Param(
                    "steps",
                    "int",
                    50,
                    "quadrature nodes = gradient evaluations per image",
                    min=1,
                    max=1000,
                ),
                *baseline_params(),
                xplain.Param(
                    "method",
                    "str",
                    "gausslegendre",
                    "quadrature rule on [0, 1] (Captum's names)",
                    choices=_IG_RULES,
                ),
                *_pass_params("interpolation points"),
                xplain.reduce_param(),
            ],
            capabilities=xplain.Capabilities(needs_gradients=True, takes_baselines=True),
        )
    )
    register(
        xplain.Method(
            name="smoothgrad",
            reference="captum.attr.NoiseTunnel(Saliency)",
            summary="gradient averaged over Gaussian-noised copies (Smilkov et al. 2017)",
            description=(
                "The signed gradient of the target logit averaged over `samples` noisy copies x + ε, "
                "ε ~ N(0, σ²) per element with σ = `noise` × (max x − min x) of each image (Smilkov et "
                "al.'s 10–20 % of the input range; default 15 %), then reduced over channels by `reduce` "
                "(sum by default). `square` averages the squared gradient instead (SmoothGrad-Squared, "
                "Captum's nt_type='smoothgrad_sq'; non-negative). Noise comes from generators seeded by "
                "--seed and the image's pixels: the same seed gives the same map in any batch, another "
                "seed another map. `samples` gradient evaluations per image, `internal_batch` noisy images "
                "(of all batch images together) per forward/backward pass, by default as many as fit in "
                "`memory_budget_mb` (as integrated-gradients). Equals Captum's "
                "NoiseTunnel(Saliency(abs=False)) with stdevs = σ, summed over channels, given the same "
                "noise; Captum takes one absolute σ for the whole batch where xplain scales σ per image."
            ),
            explain=_explain_smoothgrad,
            params=[
                xplain.Param(
                    "samples",
                    "int",
                    50,
                    "noisy copies = gradient evaluations per image",
                    min=1,
                    max=10000,
                ),
                xplain.Param(
                    "noise",
                    "float",
                    0.15,
                    "noise σ as a fraction of each image's value range",
                    min=0.0,
                ),
                xplain.Param(
                    "square", "bool", False, "average squared gradients (SmoothGrad-Squared)"
                ),
                *_pass_params("noisy copies"),
                xplain.reduce_param(),
            ],
            capabilities=xplain.Capabilities(needs_gradients=True, stochastic=True),
        )
    )
