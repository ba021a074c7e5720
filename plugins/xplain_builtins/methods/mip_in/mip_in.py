"""``mip-in``: the mutual-information-preserving inverse network (Deng et al., arXiv 2104.06629).

MIP-IN learns, per class c, an inverse of the classifier that maps the class logit Y_c back to
the input so that it reconstructs the data (eq. 4-5): layer by layer from the top, each inverse
g is fitted so that g(S) reproduces the true input activations X of that layer over the N
samples of the class, where S is the *reconstructed* signal coming from above, gated by each
sample's own forward-ReLU pattern (eq. 9). Explaining then runs the gated inverse once:
S_0 (with biases) is the source signal and A (chained linear parts, no biases) the attribution.

The graph is read as a chain of steps between a start node (the input, or a feature layer for
graphs that are not a chain, as the paper does for VGG19/ResNet50) and the logits:

========  ===================================================  ====================================
step      forward module                                       inverse
========  ===================================================  ====================================
dense     Linear                                               ridge closed form (eq. 6), streamed
conv      Conv2d                                               ConvTranspose2d, same geometry, free
                                                               weights, trained with Adam (eq. 7),
                                                               or solved exactly (conv_solver=lstsq)
gap       GlobalAveragePool / ReduceMean over H, W             ridge with the transposed structure:
                                                               one free weight per channel, shared
                                                               by all positions
affine    lone BatchNorm                                       per-channel ridge
maxpool   MaxPool2d                                            the sample's switches (eq. 8)
gate      ReLU, ReLU6, Clip, Hardtanh, LeakyReLU, PReLU        S ⊙ 1[X_l ≠ 0] (eq. 9)
reshape   Flatten / Reshape                                    exact reshape
identity  Dropout / Identity                                   identity
========  ===================================================  ====================================

The code is split by what it does: :mod:`.chain` reads the chain off the graph and runs
the forward pass, :mod:`.invert` holds the inverse steps and the fitted state,
:mod:`.fit` fits the inverses. This module is the entry point: the method's
registration, parameters and explain, and the completeness measure (APC).

Only the public ``xplain`` API is imported here; torch is imported inside functions.
"""

from __future__ import annotations

import xplain

from .fit import fit
from .invert import NAME, invert, source_logits

_PARAMS = [
    xplain.Param(
        "layer",
        "str",
        "",
        "start layer: '' = the input when the graph is a plain chain, else the default feature "
        "layer (the head is inverted from there); 'input' forces the full chain; or a layer name "
        "from `xplain inspect` (fit; explain checks it matches the fitted state)",
    ),
    xplain.Param(
        "classes",
        "str",
        "",
        "fit only: comma-separated class indices or names ('' = every class present in the data)",
    ),
    xplain.Param(
        "ridge",
        "float",
        0.001,
        "fit only: λ of the dense ridge solution (eq. 6, paper 0.001), on sums over samples",
        min=0.0,
    ),
    xplain.Param(
        "epochs",
        "int",
        20,
        "fit only: training epochs of each convolution inverse (paper E = 20)",
        min=1,
        max=1000,
    ),
    xplain.Param(
        "lr", "float", 0.01, "fit only: Adam learning rate of the convolution inverses", min=0.0
    ),
    xplain.Param(
        "conv_batch",
        "int",
        8,
        "fit only: mini-batch size of the convolution inverses",
        min=1,
        max=4096,
    ),
    xplain.Param(
        "conv_solver",
        "str",
        "adam",
        "fit only: 'adam' trains each convolution inverse for `epochs` (the paper); 'lstsq' solves the "
        "same transposed-convolution family exactly (ridge normal equations, one pass)",
        choices=("adam", "lstsq"),
    ),
    xplain.Param(
        "gating",
        "bool",
        True,
        "forward-ReLU gating (local adaptation, eq. 9); false gives the global inverse of Figure 3",
    ),
    xplain.Param(
        "relu",
        "bool",
        False,
        "explain only: keep only positive attribution (the paper does so "
        "for ImageNet); false keeps the signed map",
    ),
]


def _explain(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    import torch.nn.functional as F

    attribution, source, _, start = invert(model, x, targets, params)
    phi = source_logits(model, source, targets, start)  # Φ(S₀), for APC (eq. 10) at any start layer
    if start is None:
        maps = attribution.sum(dim=1)  # input channels summed (one channel for digits)
    else:  # head: average over channels at the feature layer, resized like Grad-CAM
        maps = attribution.mean(dim=1, keepdim=True)
        maps = F.interpolate(
            maps, size=(model.spec.height, model.spec.width), mode="bilinear", align_corners=False
        )[:, 0]
    if params["relu"]:
        maps = maps.clamp(min=0)
    return xplain.Attribution(
        maps,
        extras={"source_signal": source, "attribution": attribution},
        info={"start": start or "input"},
        sample_info=[{"source_logit": float(v)} for v in phi.tolist()],
    )


def completeness(model, x, targets, params=None) -> dict:
    """APC and Positive APC of section 5 (eq. 10-11), in percent, averaged per class then over classes."""

    values = xplain.validate_params(_PARAMS, params or {}, NAME)
    _, source, logits, start = invert(model, x, targets, values)
    phi_x = logits.gather(1, targets[:, None])[:, 0]
    phi_s = source_logits(model, source, targets, start)
    rel = (phi_x - phi_s).abs() / phi_x.abs().clamp(min=1e-12)
    pos = (phi_x - phi_s).clamp(min=0) / phi_x.abs().clamp(min=1e-12)
    per_class = [
        (float(rel[targets == c].mean()), float(pos[targets == c].mean()))
        for c in targets.unique().tolist()
    ]
    return {
        "apc": 100 * sum(a for a, _ in per_class) / len(per_class),
        "positive_apc": 100 * sum(p for _, p in per_class) / len(per_class),
        "classes": len(per_class),
        "samples": int(targets.numel()),
    }


_DESCRIPTION = (
    "MIP-IN (Deng et al. 2021) learns to invert the classifier. `xplain fit mip-in MODEL DATA` fits, for "
    "each class c separately and on that class's samples (labels from class sub-folders or a manifest; "
    "unlabelled images count for the class the model predicts), one inverse per layer, top-down "
    "(Algorithm 1, eq. 5): S_L = Y_c (the class logit); each inverse g is fitted so that g(S) "
    "reconstructs that layer's true input activations X over the samples, where S is the signal "
    "reconstructed from above, gated by each sample's own forward-ReLU pattern (S ⊙ 1[X_l ≠ 0], eq. 9). "
    "Dense layers: ridge closed form on centred data, W = X̄S̄ᵀ(S̄S̄ᵀ + λI)⁻¹, b = E[X] − W E[S] "
    "(eq. 6; `ridge` λ = 0.001 on sums over samples, statistics streamed in float64). Convolutions: a "
    "transposed convolution with the layer's geometry and free weights (not the forward filter), "
    "zero-initialised and trained with Adam (`lr` 0.01, mini-batches of `conv_batch` 8) on the mean "
    "squared error for `epochs` = 20 passes (eq. 7); a class's inputs are cached in memory up to 256 MB, "
    "else re-read for every pass; `conv_solver`=lstsq (not in the paper) solves the same "
    "transposed-convolution family exactly by ridge normal equations instead. Classes with fewer than 2 "
    "samples are skipped (an error if asked for). Max-pooling: the sample's own switches (eq. 8; "
    "overlapping windows sum). Flatten/Reshape: exact. Deviations/choices (the paper does not cover "
    "them): global average pooling is inverted with its transposed structure and a free weight, "
    "X[c,h,w] ≈ a[c]·S[c] + b[c,h,w] (one slope per channel shared by all positions, as a transposed "
    "convolution shares its kernel; intercept per position), fitted by the same ridge; a lone BatchNorm by a per-channel ridge "
    "(BatchNorm folded into a convolution is just that convolution); LeakyReLU/PReLU gate with X ≠ 0 "
    "like the paper's eq. 9, so they barely gate. Graphs that are not a plain chain (residual adds, "
    "branches) are handled as the paper does for VGG19/ResNet50: only the head from a feature layer "
    "(`layer`, default the loader's default feature layer) to the logits is inverted, the gating also "
    "acts on that feature layer, and the map is the attribution averaged over channels and resized "
    "bilinearly to the input. Explaining runs the gated inverse once: the map is A, the chained linear "
    "parts of the inverses without biases applied to Y_c and gated like S (section 4.3), signed (the "
    "paper's ImageNet maps keep only A > 0: `relu`=true); input channels are summed. extras: "
    "`source_signal` S_0 (with biases) and `attribution` A, both at the start layer. `gating`=false "
    "gives the global inverse of Figure 3. Without fitted state explain stops with the `xplain fit` "
    "command to run. Rectifier networks only (the inverse is gated by the forward ReLU pattern, eq. 9): "
    "models with GELU/SiLU/Hardswish, LayerNorm or attention are refused by fit and explain before "
    "running (exit 2, one line naming what the model has)."
)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name=NAME,
            summary="mutual-information-preserving inverse network, fitted per class (Deng et al. 2021)",
            description=_DESCRIPTION,
            explain=_explain,
            fit=fit,
            params=_PARAMS,
            capabilities=xplain.Capabilities(
                needs_gradients=False,
                needs_fitting=True,
                requires=("rectifiers",),
                alternatives=("gradient", "integrated-gradients", "grad-cam"),
            ),
        )
    )
