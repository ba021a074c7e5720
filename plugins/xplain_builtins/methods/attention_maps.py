"""What ``attention-rollout`` and ``transformer-attribution`` share: the attention probabilities
of every block, captured from the converted graph, placed in a token-to-token matrix over the
block's tokens, and the step from the final relevance matrix to a map.

The attention tensors are the ones :meth:`xplain.Model.attention` finds by graph analysis: each
Softmax over the key axis between a Q·Kᵀ product and a ·V product. Their batch-1 shape is
``(…, n, n)`` with ``maps`` attention maps per image (heads, or windows × heads); exporters
flatten the batch first (batch-major, as torch's attention does), so a batch of B reshapes to
B×maps×n×n.

*Token space* of a block: the tokens of the feature layer feeding it (``Attention.stream``):
prefix tokens + grid cells (ViT/DeiT) or grid cells only (Swin's B×H×W×C). Global attention
maps its n tokens to the token space one to one. Windowed attention (Swin) attends within
windows of the grid (shifted between blocks, the grid padded to whole windows): which grid cell
each window token is, is found once per model by probing the graph (:func:`_probe_windows`), and
each window's n×n attention becomes a block of the full matrix (zero between windows, padding
tokens dropped). Between blocks whose grids differ (Swin's patch merging), relevance is carried
by averaging: a token of the coarser grid takes the mean of the finer cells it covers.
torch is imported inside functions (plugins stay torch-free at import time).
"""

import xplain

#: how both methods treat windowed attention and models without a class token (their help text)
WINDOWED = (
    "Windowed attention (Swin), a documented variant: each block's window attention is placed on "
    "the grid of the feature layer feeding the block — which grid cell each window token is, is "
    "read off the graph once per model by perturbing that layer cell-wise (bit codes; shifts and "
    "padding included), so each window's n×n map becomes a block of a full token-to-token matrix "
    "(zero between windows, padding dropped); heads are fused per window. Where the grid changes "
    "between blocks (patch merging), relevance is carried by averaging: a coarse cell takes the "
    "mean of the fine cells it covers. Models without prefix tokens (Swin pools its tokens) read "
    "the mean row of R instead of the class token's, on the first block's grid. Models without "
    "attention are refused before running (exit 2, one line)."
)

#: (model digest, softmax node) -> window positions (maps × n, −1 for padding); geometry only
_WINDOWS: dict = {}


def attention_layers(model, method):
    """The attention layers, or a one-line refusal (exit 2) for models without usable attention."""
    found = model.attention()
    problem = model.requirement_problem("attention")
    if problem is not None or not found:
        raise xplain.UsageError(
            f"{method} {problem or 'needs attention layers'}",
            hint="try gradient, integrated-gradients, grad-cam",
        )
    return found


def capture(model, x, attention, targets=None):
    """Attention probabilities (and, with ``targets``, the gradient of the target logit with
    respect to them) per block: lists of B×maps×n×n tensors, input side first."""
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


# ----------------------------------------------------------------------------- token spaces
def token_space(model, att):
    """(prefix, (h, w)) of the tokens a block's attention maps live in."""
    if not att.windowed:
        return att.layout.prefix, tuple(att.layout.grid)
    return 0, tuple(_geometry(model, att)[1].layout.grid)


def positions(model, att):
    """maps×n LongTensor: each attention token's index in the block's token space (−1: padding)."""
    import torch

    if not att.windowed:
        return torch.arange(att.tokens).expand(att.maps, att.tokens)
    return _geometry(model, att)[0]


def _geometry(model, att):
    """(window positions, the feature layer they index) of windowed attention, found once.

    The block's input is the last spatial cut before the softmax (``Attention.stream``); when a
    window-partitioned tensor looks like a map there (MaxViT's B×windows×tokens×C can read as
    B×C×H×W), the probe fails on it and the cut before it is tried (up to four)."""
    key = (model.digest, att.node)
    if key not in _WINDOWS:
        order = {n.name: i for i, n in enumerate(model.graph.graph.nodes)}
        before = [f for f in model.feature_layers() if f.cut and order[f.name] < order[att.node]]
        failure = None
        for layer in reversed(before[-4:]):
            try:
                _WINDOWS[key] = (_probe_windows(model, att, layer), layer)
                break
            except xplain.UsageError as err:
                failure = failure or err
        else:
            raise failure or xplain.UsageError(
                f"attention {att.node!r} follows no spatial feature layer"
            )
    return _WINDOWS[key]


def _probe_windows(model, att, stream):
    """Which grid cell each window token is, read off the graph by perturbation.

    The diagonal of the attention logits, q_i·k_i, depends on token i's own input only (LayerNorm
    and the projections act per token; padding, shifts and window partition only move tokens). So
    perturbing the block's input at a set of grid cells changes exactly the diagonal entries of
    the tokens at those cells: with one forward per bit of the cell index (cells whose index has
    that bit set perturbed) plus one with all cells perturbed, each token's cell is read as a
    binary number; tokens that never change are padding. The result is checked to cover every
    grid cell, each once per window; otherwise the method refuses."""
    import torch
    from torch import nn

    logits_node = model.node(att.node).all_input_nodes[0].name
    h, w = stream.layout.grid
    cells = h * w
    bits = max(1, (cells - 1).bit_length())
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(stream.layout.channels, generator=gen).to(model.device)

    class Perturb(nn.Module):
        def __init__(self):
            super().__init__()
            self.mask = None

        def forward(self, t):
            if self.mask is None:
                return t
            s = stream.to_spatial(t)
            scale = 4 * s.detach().std().clamp_min(1e-3)  # large: a real change must stand out
            s = s + scale * direction.to(s)[None, :, None, None] * self.mask.to(s)[None, None]
            return stream.from_spatial(s, like=t)

    perturb = Perturb()
    index = torch.arange(cells, device=model.device).reshape(h, w)
    x = model.example_input(1)

    def diagonal(mask):
        perturb.mask = mask
        with model.tap([logits_node], gradients=False) as tap, torch.no_grad():
            model(x)
            logits = tap.activations[logits_node]
        return torch.diagonal(logits.reshape(-1, att.tokens, att.tokens), dim1=-2, dim2=-1)

    with model.insert_after({stream.name: perturb}):
        base = diagonal(None)
        tol = 1e-6 * (1 + base.abs())  # entries of untouched tokens are recomputed identically
        changed = lambda mask: (diagonal(mask) - base).abs() > tol  # noqa: E731
        real = changed(torch.ones(h, w, device=model.device))
        found = torch.zeros_like(base, dtype=torch.long)
        for b in range(bits):
            found += changed(((index >> b) & 1).to(base.dtype)).long() << b
    found = torch.where(real, found, torch.full_like(found, -1)).cpu()
    covered = torch.zeros(cells, dtype=torch.bool)
    valid = found[found >= 0]
    if valid.numel():
        covered[valid.clamp(max=cells - 1)] = True
    per_window_unique = all(
        len(set(row[row >= 0].tolist())) == int((row >= 0).sum()) for row in found
    )
    if (found >= cells).any() or not covered.all() or not per_window_unique:
        raise xplain.UsageError(
            f"cannot place the windows of attention {att.node!r} on the {h}×{w} grid of "
            f"layer {stream.name!r} (the graph does not move tokens as windowed attention does)"
        )
    return found


def full_matrix(model, att, mats, reduce="mean"):
    """B×T×T token-to-token matrix of one block (T = its token space), fusing the maps (heads,
    and the windows' blocks) with ``reduce`` (mean, amax or amin) where they overlap."""
    prefix, (h, w) = token_space(model, att)
    size = prefix + h * w
    pos = positions(model, att).to(mats.device)
    b, k, n, _ = mats.shape
    if not att.windowed and reduce == "mean":
        return mats.mean(dim=1)
    if not att.windowed:
        return mats.amax(dim=1) if reduce == "amax" else mats.amin(dim=1)
    pos = pos + prefix
    valid = (pos[:, :, None] >= prefix) & (pos[:, None, :] >= prefix)  # k×n×n
    flat = (pos[:, :, None] * size + pos[:, None, :])[valid]
    values = mats[:, valid]  # B×pairs
    out = mats.new_zeros(b, size * size)
    index = flat.expand(b, -1)
    out = out.scatter_reduce(1, index, values, reduce=reduce, include_self=False)
    # (scatter_reduce's mean divides by the number of maps at each pair: the heads)
    return out.reshape(b, size, size)


def carry_matrix(model, att_from, att_to):
    """The T_to×T_from matrix that carries relevance from one block's token space to the next's,
    or None when the spaces match: each coarser cell the mean of the finer cells it covers
    (Swin's patch merging), prefix tokens kept."""
    import torch

    p0, (h0, w0) = token_space(model, att_from)
    p1, (h1, w1) = token_space(model, att_to)
    if (p0, h0, w0) == (p1, h1, w1):
        return None
    if p0 != p1:
        raise xplain.UsageError(
            f"attention blocks {att_from.node!r} and {att_to.node!r} have different "
            "prefix tokens; their relevance cannot be chained"
        )
    ys = torch.arange(h0) * h1 // h0
    xs = torch.arange(w0) * w1 // w0
    target = (ys[:, None] * w1 + xs[None, :]).flatten() + p1
    source = torch.arange(h0 * w0) + p0
    matrix = torch.zeros(p1 + h1 * w1, p0 + h0 * w0)
    matrix[target, source] = 1.0
    if p0:
        matrix[torch.arange(p0), torch.arange(p0)] = 1.0
    return matrix / matrix.sum(dim=1, keepdim=True).clamp_min(1)


def read_out(model, last, like):
    """The row vector u (B×T_last) whose product with the final relevance R is the map's row:
    the class token's (token 0's) row when the model has prefix tokens, else the mean of all
    rows (models that average their tokens, e.g. Swin)."""
    prefix, (h, w) = token_space(model, last)
    u = like.new_zeros(like.shape[0], prefix + h * w)
    if prefix:
        u[:, 0] = 1.0
    else:
        u += 1.0 / u.shape[1]
    return u


def backward_product(u, factors):
    """u · F_L · … · F_1 for ``factors`` = [F_1, …, F_L] (input side first): each F is a B×T×T
    block matrix, an unbatched carry matrix, or a callable v -> v·F.

    Why a row vector: the map needs one row of R = F_L ⋯ F_1, and a vector–matrix product per
    block costs O(T²) where the matrix chain costs O(T³) — on Swin's first stage (T = 3136) that is
    the difference between milliseconds and minutes per image."""
    import torch

    v = u
    for f in reversed(factors):
        if callable(f):
            v = f(v)
        elif f.dim() == 2:
            v = v @ f.to(device=v.device, dtype=v.dtype)
        else:
            v = torch.bmm(v.unsqueeze(1), f).squeeze(1)
    return v


def token_map(model, row, first):
    """The map from the row of R (B×T_first): prefix columns dropped, reshaped to the first
    block's grid and upsampled bilinearly (align_corners=False) to the input size."""
    import torch.nn.functional as F

    first_prefix, (h, w) = token_space(model, first)
    row = row[:, first_prefix:].reshape(-1, 1, h, w)
    size = (model.spec.height, model.spec.width)
    return F.interpolate(row, size=size, mode="bilinear", align_corners=False)[:, 0]


def identity(model, att, like):
    import torch

    prefix, (h, w) = token_space(model, att)
    size = prefix + h * w
    return torch.eye(size, device=like.device, dtype=like.dtype).expand(like.shape[0], size, size)
