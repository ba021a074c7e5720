"""``transformer-attribution``: gradient-weighted attention relevance (Chefer, Gur & Wolf).

The ICCV 2021 form ("Generic Attention-model Explainability…"): Ā_l = E_h[(∇A_l ⊙ A_l)⁺],
R ← R + Ā_l·R from R = I, block by block from the input side.
"""

import xplain

from .attention_maps import (
    WINDOWED,
    attention_layers,
    backward_product,
    capture,
    carry_matrix,
    full_matrix,
    read_out,
    token_map,
    token_space,
)


def relevance(model, attention, mats, grads):
    """The map's row of R (B×T_1), R = I, then R ← R + Ā_l R with Ā_l = mean over heads of
    (∇A_l ⊙ A_l)⁺ (on each block's token space; relevance carried between spaces, see
    attention_maps); computed as a row vector times the chain of (I + Ā_l), never R itself."""
    import torch

    factors, previous = [], attention[0]
    for att, a, g in zip(attention, mats, grads):
        between = carry_matrix(model, previous, att)
        if between is not None:
            factors.append(between)
        weighted = full_matrix(model, att, (g * a).clamp(min=0), "mean")

        def plus_identity(v, w=weighted):  # v · (I + Ā_l) without forming I
            return v + torch.bmm(v.unsqueeze(1), w).squeeze(1)

        factors.append(plus_identity)
        previous = att
    return backward_product(read_out(model, attention[-1], mats[0]), factors)


def _explain(request: xplain.ExplainRequest):
    model, x, targets = request.model, request.x, request.targets
    attention = attention_layers(model, "transformer-attribution")
    mats, grads = capture(model, x, attention, targets)
    maps = token_map(model, relevance(model, attention, mats, grads), attention[0])
    prefix, grid = token_space(model, attention[0])
    return xplain.Attribution(
        maps,
        info={
            "blocks": len(mats),
            "windowed": sum(a.windowed for a in attention),
            "prefix_tokens": prefix,
            "grid": list(grid),
            "form": "Chefer et al. ICCV 2021 (gradient x attention)",
        },
    )


_DESCRIPTION = (
    "Class-specific relevance through the attention layers, Chefer, Gur & Wolf — the ICCV 2021 form "
    "('Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder "
    "Transformers'), which most tools ship: no LRP, only attention and its gradient. One forward and "
    "one backward pass of the target logit (never the softmax). For every block l, A_l = the "
    "attention probabilities (found in the graph as for attention-rollout) and ∇A_l = d logit / d A_l; "
    "Ā_l = mean over heads of (∇A_l ⊙ A_l)⁺ (clamped before the mean); from R = I, "
    "R ← R + Ā_l · R, input side first. The map is the class token's (token 0's) row of R without "
    "the prefix columns (class/distillation/register tokens, counted from the graph), reshaped to "
    "the patch grid and upsampled bilinearly (align_corners=False). Not the CVPR 2021 variant, "
    "which weights the LRP relevance of A_l instead of A_l itself. "
    + WINDOWED
    + " info: blocks, windowed, prefix_tokens, grid."
)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="transformer-attribution",
            summary="gradient-weighted attention relevance (Chefer et al., ICCV 2021 form): ViT, DeiT, Swin",
            description=_DESCRIPTION,
            explain=_explain,
            capabilities=xplain.Capabilities(
                needs_gradients=True,
                requires=("attention",),
                alternatives=("gradient", "integrated-gradients", "grad-cam"),
            ),
        )
    )
