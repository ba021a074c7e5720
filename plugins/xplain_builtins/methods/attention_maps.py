"""What ``attention-rollout`` and ``transformer-attribution`` share: the attention probabilities
of every block, captured from the converted graph, and the step from a token relevance matrix
to a map.

The attention tensors are the ones :meth:`xplain.Model.attention` finds by graph analysis: each
Softmax over the key axis between a Q·Kᵀ product and a ·V product. Their batch-1 shape is
``(…, N, N)`` with ``maps`` attention maps per image (the heads; exporters flatten batch and
heads batch-major, as torch's attention does), so a batch of B reshapes to B×heads×N×N.
torch is imported inside functions (plugins stay torch-free at import time).
"""

import xplain


def global_attention(model, method):
    """The attention layers, or a one-line refusal (exit 2) for models without global attention."""
    found = model.attention()
    problem = model.requirement_problem("attention")
    if problem is not None or not found:
        raise xplain.UsageError(f"{method} {problem or 'needs attention layers'}",
                                hint="try gradient, integrated-gradients, grad-cam")
    return found


def capture(model, x, attention, targets=None):
    """Attention probabilities (and, with ``targets``, the gradient of the target logit with
    respect to them) per block: lists of B×heads×N×N tensors, input side first."""
    import torch

    names = [a.node for a in attention]
    want_grad = targets is not None
    with model.tap(names, gradients=want_grad) as tap, torch.set_grad_enabled(want_grad):
        xg = x.detach().clone().requires_grad_(want_grad)
        logits = model(xg)
        if want_grad:
            logits.gather(1, targets[:, None]).sum().backward()
        acts, grads = tap.activations, tap.gradients if want_grad else {}
    b = x.shape[0]

    def per_image(t, a):
        return t.detach().reshape(b, -1, a.tokens, a.tokens)

    mats = [per_image(acts[a.node], a) for a in attention]
    if not want_grad:
        return mats, None
    missing = [a.node for a in attention if a.node not in grads]
    if missing:
        raise xplain.UsageError(f"attention {missing[0]!r} does not reach the model's output")
    return mats, [per_image(grads[a.node], a) for a in attention]


def token_map(model, relevance, layout):
    """Row of the class token (token 0) of a B×N×N relevance matrix, prefix columns dropped,
    reshaped to the token grid and upsampled bilinearly (align_corners=False) to the input."""
    import torch.nn.functional as F

    h, w = layout.grid
    row = relevance[:, 0, layout.prefix:].reshape(-1, 1, h, w)
    size = (model.spec.height, model.spec.width)
    return F.interpolate(row, size=size, mode="bilinear", align_corners=False)[:, 0]


def identity_like(mat):
    import torch

    n = mat.shape[-1]
    return torch.eye(n, device=mat.device, dtype=mat.dtype).expand(mat.shape[0], n, n)
