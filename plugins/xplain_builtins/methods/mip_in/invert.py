"""``mip-in``, the inverse: one step's inverse g, the gated inverse down the chain, the fitted state.

Both halves of the method run the inverse: :mod:`.fit` propagates the signal through
the inverses already fitted above the step it fits, and explaining propagates the class logit
all the way to the start layer. The fitted state (written by :func:`.fit.fit`) is read
and cached here. torch is imported inside functions.
"""

from __future__ import annotations

import xplain

from .chain import _act, _activations

NAME = "mip-in"
STATE_VERSION = 1


# ----------------------------------------------------------------------------- one inverse step
def _inverse(step, tensors, s, acts, *, bias=True, gating=True):
    """Map the signal at a step's output to its input (the inverse g of that step)."""
    import torch
    import torch.nn.functional as F

    kind = step["kind"]
    b = s.shape[0]
    if kind == "dense":
        out = s.reshape(b, -1) @ tensors["weight"].T
        if bias:
            out = out + tensors["bias"]
        return out.reshape(b, *step["in_shape"])
    if kind == "conv":
        x_in = step["in_shape"]
        out = F.conv_transpose2d(
            s,
            tensors["weight"],
            tensors["bias"] if bias else None,
            stride=step["stride"],
            padding=step["padding"],
            dilation=step["dilation"],
            groups=step["groups"],
            output_padding=_output_padding(step, s.shape[-2:]),
        )
        return out[..., : x_in[1], : x_in[2]]
    if kind == "gap":
        c = step["in_shape"][0]
        out = (s.reshape(b, c, 1, 1) * tensors["weight"].reshape(1, c, 1, 1)).expand(
            b, *step["in_shape"]
        )
        return out + tensors["bias"] if bias else out
    if kind == "affine":
        out = s * tensors["weight"].reshape(1, -1, 1, 1)
        return out + tensors["bias"].reshape(1, -1, 1, 1) if bias else out
    if kind == "gate":
        return s * (acts[step["node"]] != 0).to(s.dtype) if gating else s
    if kind == "maxpool":  # eq. 8: put the signal where the sample's maxima were (switches)
        x = _act(acts, step["input"], None)
        _, idx = F.max_pool2d(
            x,
            step["kernel"],
            step["stride"],
            step["padding"],
            step["dilation"],
            step["ceil_mode"],
            return_indices=True,
        )
        flat = torch.zeros(b, x.shape[1], x.shape[2] * x.shape[3], device=s.device, dtype=s.dtype)
        flat.scatter_add_(2, idx.flatten(2), s.flatten(2))
        return flat.reshape(x.shape)
    if kind == "reshape":
        return s.reshape(b, *step["in_shape"])
    return s  # identity


def _output_padding(step, s_hw):
    k, st, p, d = step["kernel"], step["stride"], step["padding"], step["dilation"]
    pads = []
    for i in range(2):
        full = (s_hw[i] - 1) * st[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1
        pads.append(max(0, min(step["in_shape"][1 + i] - full, max(st[i], d[i]) - 1)))
    return tuple(pads)


def _propagate(steps, inv, s, acts, lowest, *, bias=True, gating=True):
    """Run the gated inverse from the logits (signal ``s``) down to the input of step ``lowest``."""
    for k in range(len(steps) - 1, lowest - 1, -1):
        s = _inverse(steps[k], inv.get(k, {}), s, acts, bias=bias, gating=gating)
    return s


# ----------------------------------------------------------------------------- the fitted state
def _cache_key(model):
    import os

    return (
        str(model.state_dir),
        os.environ.get("XPLAIN_STATE_DIR"),
        model.digest,
        str(model.device),
        model.fitted_state_hidden,
    )  # inside Model.without_fitted_state the cached state must not be used


def _forget_state(model):
    """Drop the state cached by :func:`load` (``fit`` is about to write a new one)."""
    model.__dict__.pop("_mip_in_state", None)


def load(model, params):
    """The fitted state as (start, steps, {class: {step: tensors}}, meta).

    Kept on the model object (keyed by state dir and device), so explaining batch after batch
    reads the safetensors file once; ``fit`` drops it."""
    cached = getattr(model, "_mip_in_state", None)
    if cached is not None and cached[0] == _cache_key(model):
        tensors, meta = cached[1]
    else:
        tensors, meta = model.fitted_state(NAME)
        model._mip_in_state = (_cache_key(model), (tensors, meta))
    if meta.get("state_version") != STATE_VERSION or "steps" not in meta:
        raise xplain.InputDataError(
            "mip-in state was written by another version",
            path=model.report.path,
            hint=f"refit: `xplain fit mip-in {model.report.path} DATA`",
        )
    start = None if meta["start"] == "input" else meta["start"]
    if params.get("layer") and params["layer"] != meta["start"]:
        raise xplain.UsageError(
            f"mip-in was fitted from layer {meta['start']!r}, not {params['layer']!r}",
            hint=f"refit with `--layer {params['layer']}` or drop the parameter",
        )
    steps = meta["steps"]
    inv: dict[int, dict[int, dict]] = {}
    for key, value in tensors.items():
        c, k, name = key.split(".")
        inv.setdefault(int(c[1:]), {}).setdefault(int(k[1:]), {})[name] = value
    return start, steps, inv, meta


# ----------------------------------------------------------------------------- explaining
def invert(model, x, targets, params, state=None):
    """(A, S_0) at the start layer for a batch: attribution (no biases) and source signal."""
    import torch

    start, steps, inv, meta = state or load(model, params)
    unknown = sorted({int(t) for t in targets.tolist()} - set(meta["classes"]))
    if unknown:
        raise xplain.InputDataError(
            f"mip-in was not fitted for class(es) {unknown} of this model (fitted: {meta['classes']})",
            path=model.report.path,
            hint=f"refit with every class you need: `xplain fit mip-in {model.report.path} DATA --classes "
            f"{','.join(map(str, sorted(set(meta['classes']) | set(unknown))))}`",
        )
    gating = params["gating"]
    logits, acts = _activations(model, x, start, steps)
    y = logits.gather(1, targets[:, None])
    attribution = torch.zeros((x.shape[0], *steps[0]["in_shape"]), device=x.device, dtype=x.dtype)
    source = torch.zeros_like(attribution)
    for c in sorted({int(t) for t in targets.tolist()}):
        rows = (targets == c).nonzero()[:, 0]
        sub = {k: v[rows] for k, v in acts.items()}
        s = torch.cat([y[rows], y[rows]])  # first half with biases (S), second without (A)
        n = rows.numel()
        for k in range(len(steps) - 1, -1, -1):
            t = inv[c].get(k, {})
            s = torch.cat(
                [
                    _inverse(steps[k], t, s[:n], sub, bias=True, gating=gating),
                    _inverse(steps[k], t, s[n:], sub, bias=False, gating=gating),
                ]
            )
        if start is not None and gating:  # the paper also gates the start (input) layer
            s = s * (torch.cat([sub[start], sub[start]]) != 0).to(s.dtype)
        source[rows], attribution[rows] = s[:n], s[n:]
    return attribution, source, logits, start


def source_logits(model, source, targets, start):
    """Φ(S): the target logits of the source signal (fed in at the start layer)."""
    import torch
    from torch import nn

    class _Replace(nn.Module):
        def forward(self, _):
            return source

    with torch.no_grad():
        if start is None:
            return model(source).gather(1, targets[:, None])[:, 0]
        if model.spec.fixed_batch and source.shape[0] > 1:
            return torch.cat(
                [
                    source_logits(model, source[i : i + 1], targets[i : i + 1], start)
                    for i in range(source.shape[0])
                ]
            )
        with model.insert_after({start: _Replace()}):
            return model.graph(
                torch.zeros(
                    (source.shape[0], model.spec.channels, model.spec.height, model.spec.width),
                    device=source.device,
                    dtype=source.dtype,
                )
            ).gather(1, targets[:, None])[:, 0]
