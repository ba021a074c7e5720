"""``expected-gradients``: Expected Gradients / GradientSHAP (Erion et al. 2021; Lundberg & Lee 2017).

Captum's ``GradientShap`` semantics: for each of ``n_samples`` draws per image, a baseline x'
from the reference set, a noisy input x̃ = x + ε (ε ~ N(0, stdevs²)) and α ~ U(0, 1); the
gradient of the target logit at x' + α(x̃ − x') times (x̃ − x'), averaged over the draws.

The draws come from the image's own generator (:func:`xplain.sample_generators`), in a fixed
order per draw (baseline index, α, noise), so a map depends only on the seed and the image, not
on how draws are grouped into passes. :func:`expected_gradients_draws` returns exactly those
draws, so a test can hand them to Captum. Points of all images share each forward/backward pass
(as many as fit in the memory budget): exactly ``n_samples`` gradient evaluations per image.
"""

import xplain

from . import references


def _draw_stream(x, seed, n_samples, stdevs, set_sizes):
    """Yield ``(b, index, alpha, noise)`` per image b and draw (image-major); ``noise`` is None
    when ``stdevs`` is 0."""
    import torch

    shape = x.shape[1:]
    for b, gen in enumerate(xplain.sample_generators(x, seed)):
        for _ in range(n_samples):
            index = int(torch.randint(set_sizes[b], (1,), generator=gen, device=x.device))
            alpha = torch.rand((), generator=gen, device=x.device, dtype=x.dtype)
            noise = None
            if stdevs > 0:
                noise = torch.randn(shape, generator=gen, device=x.device, dtype=x.dtype) * stdevs
            yield b, index, alpha, noise


def expected_gradients_draws(x, seed=0, n_samples=5, stdevs=0.0, set_size=1):
    """The draws ``expected-gradients`` makes for ``x`` (B×C×H×W) with a reference set of
    ``set_size`` inputs: (indices B×n long, alphas B×n, noise B×n×C×H×W or None)."""
    import torch

    draws = list(_draw_stream(x, seed, n_samples, stdevs, [set_size] * x.shape[0]))
    b = x.shape[0]
    index = torch.tensor([d[1] for d in draws], device=x.device).view(b, n_samples)
    alpha = torch.stack([d[2] for d in draws]).view(b, n_samples)
    noise = (
        None if stdevs <= 0 else torch.stack([d[3] for d in draws]).view(b, n_samples, *x.shape[1:])
    )
    return index, alpha, noise


def _explain(request: xplain.ExplainRequest):
    model, x, targets = request.model, request.x, request.targets
    params, seed = request.params, request.seed
    import torch

    n, stdevs = params["n_samples"], params["stdevs"]
    refs, shared = references.reference_sets(
        x, params["baselines"], params["blur_sigma"], seed, "expected-gradients"
    )
    sizes = [references.set_of(refs, shared, b).shape[0] for b in range(x.shape[0])]
    per_pass = xplain.images_per_pass(model, params["internal_batch"], params["memory_budget_mb"])
    total = torch.zeros_like(x)
    xd = x.detach()
    pending = []

    def flush():
        idx = torch.tensor([b for b, *_ in pending], device=x.device)
        base = torch.stack([references.set_of(refs, shared, b)[i] for b, i, _, _ in pending])
        noisy = xd[idx]
        if stdevs > 0:
            noisy = noisy + torch.stack([e for *_, e in pending])
        alpha = torch.stack([a for _, _, a, _ in pending]).view(-1, *([1] * (x.dim() - 1)))
        diff = noisy - base
        point = alpha * noisy + (1 - alpha) * base  # Captum's rounding: α·x̃ + (1 − α)·x'
        with torch.enable_grad():
            point = point.detach().requires_grad_(True)
            logits = model(point)
            (grad,) = torch.autograd.grad(logits.gather(1, targets[idx][:, None]).sum(), point)
        total.index_add_(0, idx, diff * grad)
        pending.clear()

    for draw in _draw_stream(x, seed, n, stdevs, sizes):
        pending.append(draw)
        if len(pending) == per_pass:
            flush()
    if pending:
        flush()
    return xplain.Attribution(
        xplain.reduce_channels(total / n, params["reduce"]),
        info={
            "n_samples": n,
            "stdevs": stdevs,
            "baselines": params["baselines"] if params["baselines"] in references.KINDS else "file",
            "reference_set_size": max(sizes),
        },
    )


_DESCRIPTION = (
    "Expected Gradients (Erion et al., Nature Machine Intelligence 2021), the GradientSHAP of "
    "Lundberg & Lee 2017, with Captum's GradientShap semantics: for each of `n_samples` draws per "
    "image (Captum's default 5), a baseline x' drawn uniformly from the reference set, a noisy "
    "input x̃ = x + ε with ε ~ N(0, `stdevs`²) in the preprocessed space (Captum's default 0) and "
    "α ~ U(0, 1); the map is the mean over draws of (x̃ − x') · ∂f(x' + α(x̃ − x'))/∂x for the "
    "target logit f, reduced over channels by `reduce` (sum by default). In expectation it is "
    "integrated gradients averaged over the reference set; with a single zero baseline it is a "
    "Monte-Carlo integrated gradients. Exactly `n_samples` forward+backward evaluations per image, "
    "points of all images in one pass as the memory budget allows (`internal_batch`, "
    "`memory_budget_mb`). " + references.DESCRIPTION + " The default is zeros (a lone image must "
    "give a meaningful map); Erion et al.'s choice is a sample of training images: pass them as a "
    ".npy file. Seeded per sample: each image's draws (baseline index, α, noise, in that order per "
    "draw) come from its own generator (the run's seed and the image), so batching never changes "
    "a map; with the same draws the map equals Captum's GradientShap summed over channels. "
    "info: n_samples, stdevs, baselines, reference_set_size."
)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="expected-gradients",
            reference="captum.attr.GradientShap",
            summary="Expected Gradients / GradientSHAP over a reference set (Erion et al. 2021)",
            description=_DESCRIPTION,
            explain=_explain,
            params=[
                xplain.Param(
                    "n_samples",
                    "int",
                    5,
                    "draws (baseline, α, noise) = gradient evaluations per image",
                    min=1,
                    max=100000,
                ),
                xplain.Param(
                    "stdevs",
                    "float",
                    0.0,
                    "σ of the Gaussian noise added to the input (preprocessed space)",
                    min=0.0,
                    max=1e6,
                ),
                *references.params(),
                xplain.reduce_param(),
                *xplain.pass_params("points (draws of all batch images together)"),
            ],
            capabilities=xplain.Capabilities(needs_gradients=True, stochastic=True),
        )
    )
