"""``lime`` and ``kernel-shap``: linear surrogates over image segments (Captum ``Lime`` and
``KernelShap`` with their defaults). The work lives in :mod:`.surrogates`, imported on first use,
so registering them imports no torch."""

import xplain


def _segment_params() -> list[xplain.Param]:
    """The parameters both methods share: segments, baseline, samples, pass size."""
    return [
        xplain.Param(
            "segmentation",
            "str",
            "grid",
            "interpretable features: grid (squares of `cell` pixels) or slic (scikit-image "
            "superpixels; needs the `segments` extra)",
            choices=("grid", "slic"),
        ),
        xplain.Param(
            "cell",
            "int",
            0,
            "grid square side in pixels; 0 = auto, round(min(H, W)/14) (16 on 224×224)",
            min=0,
            max=4096,
        ),
        xplain.Param(
            "n_segments",
            "int",
            100,
            "slic: the approximate number of superpixels (scikit-image's default)",
            min=2,
            max=100_000,
        ),
        xplain.Param(
            "compactness",
            "float",
            10.0,
            "slic: colour against space (scikit-image's default)",
            min=1e-6,
            max=1e6,
        ),
        xplain.Param(
            "baseline",
            "float",
            0.0,
            "value a segment left out of a coalition is set to (preprocessed space; Captum's 0)",
        ),
        xplain.Param(
            "n_samples",
            "int",
            25,
            "coalitions (forward passes) per image: Captum's default 25",
            min=1,
            max=100_000,
        ),
        *xplain.pass_params("perturbed images", forward_only=True),
    ]


_COMMON = (
    "Segments: `segmentation=grid` (default) cuts the image into squares of `cell` pixels, "
    "round(min(H, W)/14) by default: 16×16 squares, 14×14 = 196 segments on 224×224, the feature "
    "mask of the LATEC benchmark (Klein et al. 2024); deterministic, needs nothing extra and gives "
    "the same map on every installation. `segmentation=slic` uses scikit-image's SLIC superpixels "
    "(`n_segments` 100, `compactness` 10, its defaults, on the image scaled to [0, 1] by its own "
    "min and max) and needs the extra: pip install 'xplain[segments]'; without it the run stops "
    "with one line naming the extra (exit 2). A segment left out of a coalition is set to "
    "`baseline` (0 in the preprocessed space, the mean colour for mean/std normalisation); the "
    "regression target is the target class's logit. Coalitions are drawn from the image's own "
    "generator (run seed + image bytes, xplain.sample_generators), so batching never changes a "
    "map and --seed reproduces it byte for byte. Cost: `n_samples` forward passes per image through "
    "model.infer, batched to the memory budget (`internal_batch` / `memory_budget_mb`), no "
    "gradients; the fit is a host-side float64 NumPy computation of microseconds to milliseconds. "
    "The fit reproduces scikit-learn's estimator step for step (no scikit-learn needed), so with "
    "the same segments and coalitions the coefficients equal Captum's (tests: ≤ 1e-4 of the "
    "largest). The map paints each segment with its coefficient (signed)."
)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="lime",
            reference="captum.attr.Lime",
            summary="LIME: a sparse linear model of the logit over image segments (Ribeiro et al. 2016)",
            description=(
                "LIME (Ribeiro, Singh & Guestrin, KDD 2016), as Captum's Lime with its defaults: "
                "each of `n_samples` coalitions keeps every segment with probability 1/2; each "
                "perturbed image is weighted by exp(−d²/(2·`kernel_width`²)) with d the cosine "
                "distance between the flattened original and perturbed images (Captum's "
                "get_exp_kernel_similarity_function('cosine', 1.0)); the surrogate is a weighted "
                "Lasso with intercept, `alpha` 0.01 (Captum's SkLearnLasso(alpha=0.01): "
                "scikit-learn's Lasso, coordinate descent, max_iter 1000, tol 1e-4). "
                "With 196 grid segments and Captum's 25 samples most coefficients are 0; raise "
                "`n_samples` (the LIME paper's image experiments use 1000) for a denser map. "
                + _COMMON
            ),
            explain="xplain_builtins.methods.surrogates:explain_lime",
            params=[
                *_segment_params(),
                xplain.Param(
                    "alpha",
                    "float",
                    0.01,
                    "Lasso L1 penalty (Captum's SkLearnLasso default 0.01); larger = sparser",
                    min=1e-12,
                    max=1e6,
                ),
                xplain.Param(
                    "kernel_width",
                    "float",
                    1.0,
                    "width σ of the similarity kernel exp(−d²/2σ²) on the cosine distance",
                    min=1e-6,
                    max=1e6,
                ),
            ],
            capabilities=xplain.Capabilities(needs_gradients=False, stochastic=True),
        )
    )
    register(
        xplain.Method(
            name="kernel-shap",
            reference="captum.attr.KernelShap",
            summary="Kernel SHAP: Shapley values of image segments by weighted regression (Lundberg & Lee 2017)",
            description=(
                "Kernel SHAP (Lundberg & Lee, NeurIPS 2017), as Captum's KernelShap: the first two "
                "coalitions are the full and the empty one (weight 10⁶, Captum's inf_weight, which "
                "ties the fit to f(x) and f(baseline)); every other coalition has a size k drawn "
                "with probability ∝ (M − 1)/(k(M − k)) and k members drawn uniformly, weight 1 "
                "(the Shapley kernel is in the sampling, not the weights); the surrogate is a "
                "weighted least-squares fit with intercept (Captum's SkLearnLinearRegression: "
                "scikit-learn's LinearRegression, minimum-norm when the coalitions are fewer "
                "than the segments). With many samples the coefficients approach the segments' "
                "Shapley values, which sum to f(x) − f(baseline). " + _COMMON
            ),
            explain="xplain_builtins.methods.surrogates:explain_kernel_shap",
            params=_segment_params(),
            capabilities=xplain.Capabilities(needs_gradients=False, stochastic=True),
        )
    )
