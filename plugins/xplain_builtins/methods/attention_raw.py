"""``attention``: the last block's raw attention (the baseline of transformer attribution studies).

The attention of the class token in the last block, averaged over heads: one row of one
attention matrix, no rollout through the blocks. The attention discovery, the token spaces
(prefix tokens, windowed attention placed on the grid) and the read-out are those of
``attention-rollout`` (:mod:`.attention_maps`), so both methods agree on which tokens a map shows.
"""

import xplain

from .attention_maps import attention_layers, capture, full_matrix, read_out, token_map

_FUSION = {"mean": "mean", "max": "amax", "min": "amin"}


def _explain(request: xplain.ExplainRequest):
    model, x, params = request.model, request.x, request.params
    import torch

    last = attention_layers(model, "attention")[-1]
    (mats,), _ = capture(model, x, [last])
    fused = full_matrix(model, last, mats, _FUSION[params["head_fusion"]])  # B×T×T
    u = read_out(model, last, mats)  # class token's row (or the mean row without prefix tokens)
    row = torch.bmm(u.unsqueeze(1), fused).squeeze(1)
    maps = token_map(model, row, last)
    return xplain.Attribution(
        maps,
        info={
            "block": last.node,
            "heads_fused": params["head_fusion"],
            "prefix_tokens": last.layout.prefix if last.layout else 0,
            "windowed": last.windowed,
        },
    )


_DESCRIPTION = (
    "Raw attention: the attention probabilities of the last block (the last Softmax over the key "
    "axis between a Q·Kᵀ and a ·V product that Model.attention finds in the graph), fused over "
    "heads by `head_fusion` (mean, the usual baseline and the default), the class token's (token "
    "0's) row without the prefix columns (class, distillation, register tokens), reshaped to the "
    "patch grid and upsampled bilinearly (align_corners=False) to the input size. One forward "
    "pass, no gradients, the same map for every target (class-agnostic), non-negative, the row "
    "sums to at most 1 (the prefix tokens' share is left out). Equals attention-rollout restricted "
    "to the last block without the residual identity. Windowed attention (Swin): the last "
    "block's window attention is placed on its grid as attention-rollout does (window positions "
    "read off the graph once per model, heads fused per window), and models without prefix tokens "
    "read the mean row of that matrix instead of the class token's. Models without attention are "
    "refused before running (exit 2, one line). info: block (the softmax "
    "node), heads_fused, prefix_tokens, windowed."
)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="attention",
            summary="the last block's class-token attention, averaged over heads: ViT, DeiT, Swin",
            description=_DESCRIPTION,
            explain=_explain,
            params=[
                xplain.Param(
                    "head_fusion",
                    "str",
                    "mean",
                    "how heads are fused",
                    choices=("mean", "max", "min"),
                ),
            ],
            capabilities=xplain.Capabilities(
                needs_gradients=False,
                requires=("attention",),
                alternatives=("gradient", "integrated-gradients", "grad-cam"),
            ),
        )
    )
