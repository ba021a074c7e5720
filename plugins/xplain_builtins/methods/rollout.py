"""``attention-rollout``: attention flow through the blocks (Abnar & Zuidema, ACL 2020)."""

import xplain

from .attention_maps import (
    WINDOWED,
    attention_layers,
    backward_product,
    capture,
    carry_matrix,
    full_matrix,
    identity,
    read_out,
    token_map,
    token_space,
)

_REDUCE = {"mean": "mean", "max": "amax", "min": "amin"}


def rollout(model, attention, mats, fusion="mean", discard_ratio=0.0):
    """The map's row of R = Â_L ⋯ Â_1 (B×T_1) with Â_l = rows normalised (½·A_l + ½·I), A_l the
    head-fused attention of block l on its token space (relevance carried between spaces, see
    attention_maps); computed as a row vector times the chain, never the chain itself.

    ``mats``: per block B×maps×n×n probabilities. ``discard_ratio`` zeroes that fraction of
    each image's lowest fused weights (the class token's attention to itself is kept)."""
    factors, previous = [], None
    for att, a in zip(attention, mats):
        if previous is not None:
            between = carry_matrix(model, previous, att)
            if between is not None:
                factors.append(between)
        fused = full_matrix(model, att, a, _REDUCE[fusion])
        if discard_ratio > 0:
            flat = fused.flatten(1).clone()
            k = int(flat.shape[1] * discard_ratio)
            if k:
                low = flat.topk(k, dim=1, largest=False).indices
                keep = flat[:, 0].clone()
                flat.scatter_(1, low, 0.0)
                flat[:, 0] = keep
            fused = flat.view_as(fused)
        step = 0.5 * fused + 0.5 * identity(model, att, fused)
        factors.append(step / step.sum(dim=-1, keepdim=True))
        previous = att
    return backward_product(read_out(model, attention[-1], mats[0]), factors)


def _explain(request: xplain.ExplainRequest):
    model, x, params = request.model, request.x, request.params
    attention = attention_layers(model, "attention-rollout")
    mats, _ = capture(model, x, attention)
    row = rollout(model, attention, mats, params["head_fusion"], params["discard_ratio"])
    maps = token_map(model, row, attention[0])
    prefix, grid = token_space(model, attention[0])
    return xplain.Attribution(
        maps,
        info={
            "blocks": len(mats),
            "windowed": sum(a.windowed for a in attention),
            "prefix_tokens": prefix,
            "grid": list(grid),
        },
    )


_DESCRIPTION = (
    "Attention rollout (Abnar & Zuidema, ACL 2020). One forward pass, no gradients; the same map for "
    "every target (class-agnostic by construction). The attention probabilities of each block are "
    "found in the converted graph (Model.attention: the Softmax over the key axis between the Q·Kᵀ "
    "and the ·V products). Per block l: A_l fused over heads (`head_fusion`: mean, the paper's choice "
    "and the default; max or min), optionally the lowest `discard_ratio` fraction of each image's "
    "fused weights set to 0 (default 0, as the paper; the class token's attention to itself is "
    "kept), then the residual connection Â_l = rows normalised (½·A_l + ½·I); rollout "
    "R = Â_L · … · Â_1. The map is the class token's (token 0's) row of R without the prefix "
    "columns (class, distillation, register tokens: their count is read from the graph as tokens "
    "minus grid cells, e.g. 2 for distilled DeiT), reshaped to the patch grid and upsampled "
    "bilinearly (align_corners=False) to the input size: non-negative, rows of R sum to 1. "
    + WINDOWED
    + " info: blocks, windowed (how many blocks), prefix_tokens, grid."
)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="attention-rollout",
            summary="attention rollout through all blocks (Abnar & Zuidema 2020): ViT, DeiT, Swin",
            description=_DESCRIPTION,
            explain=_explain,
            params=[
                xplain.Param(
                    "head_fusion",
                    "str",
                    "mean",
                    "how heads are fused per block",
                    choices=("mean", "max", "min"),
                ),
                xplain.Param(
                    "discard_ratio",
                    "float",
                    0.0,
                    "fraction of each fused attention map's lowest weights "
                    "set to zero before rollout",
                    min=0.0,
                    max=0.99,
                ),
            ],
            capabilities=xplain.Capabilities(
                needs_gradients=False,
                requires=("attention",),
                alternatives=("gradient", "integrated-gradients", "grad-cam"),
            ),
        )
    )
