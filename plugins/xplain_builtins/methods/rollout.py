"""``attention-rollout``: attention flow through the blocks (Abnar & Zuidema, ACL 2020)."""

import xplain

from .attention_maps import capture, global_attention, identity_like, token_map


def rollout(mats, fusion="mean", discard_ratio=0.0):
    """R = Â_L ⋯ Â_1 with Â_l = rows normalised (½·A_l + ½·I), A_l the head-fused attention.

    ``mats``: per block B×heads×N×N probabilities. ``discard_ratio`` zeroes that fraction of
    each image's lowest fused weights (the class token's attention to itself is kept)."""
    import torch

    result = None
    for a in mats:
        fused = {"mean": a.mean(dim=1), "max": a.amax(dim=1), "min": a.amin(dim=1)}[fusion]
        if discard_ratio > 0:
            flat = fused.flatten(1).clone()
            k = int(flat.shape[1] * discard_ratio)
            if k:
                low = flat.topk(k, dim=1, largest=False).indices
                keep_cls = flat[:, 0].clone()
                flat.scatter_(1, low, 0.0)
                flat[:, 0] = keep_cls
            fused = flat.view_as(fused)
        eye = identity_like(fused)
        step = 0.5 * fused + 0.5 * eye
        step = step / step.sum(dim=-1, keepdim=True)
        result = step if result is None else torch.bmm(step, result)
    return result


def _explain(model, x, targets, params, seed):
    attention = global_attention(model, "attention-rollout")
    mats, _ = capture(model, x, attention)
    relevance = rollout(mats, params["head_fusion"], params["discard_ratio"])
    layout = attention[-1].layout
    maps = token_map(model, relevance, layout)
    return xplain.Attribution(maps, info={"blocks": len(mats), "heads": int(mats[0].shape[1]),
                                          "tokens": int(mats[0].shape[-1]), "prefix_tokens": layout.prefix,
                                          "grid": list(layout.grid)})


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
    "Models without attention, and windowed attention (Swin: each block attends within windows "
    "that shift between blocks, so there is no token-to-token matrix over the whole image to "
    "multiply), are refused before running (exit 2, one line); use grad-cam or a gradient method "
    "there. info: blocks, heads, tokens, prefix_tokens, grid."
)


@xplain.hookimpl
def register_methods(register):
    register(xplain.Method(
        name="attention-rollout",
        summary="attention rollout through all blocks (Abnar & Zuidema 2020), ViT/DeiT",
        description=_DESCRIPTION,
        explain=_explain,
        params=[
            xplain.Param("head_fusion", "str", "mean", "how heads are fused per block", choices=("mean", "max", "min")),
            xplain.Param("discard_ratio", "float", 0.0, "fraction of each fused attention map's lowest weights "
                         "set to zero before rollout", min=0.0, max=0.99),
        ],
        capabilities=xplain.Capabilities(needs_gradients=False, requires=("attention",),
                                         alternatives=("gradient", "integrated-gradients", "grad-cam")),
    ))
