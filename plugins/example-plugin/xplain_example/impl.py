"""The example method's implementation, imported only when the method first runs."""

from __future__ import annotations

import torch

import xplain


def center_prior(request: xplain.ExplainRequest) -> torch.Tensor:
    """exp(-r² / 2σ²) over coordinates scaled to [-1, 1], the same map for every sample."""
    x = request.x
    height, width = x.shape[-2:]
    ys = torch.linspace(-1.0, 1.0, height, device=request.device)
    xs = torch.linspace(-1.0, 1.0, width, device=request.device)
    r2 = ys[:, None] ** 2 + xs[None, :] ** 2
    prior = torch.exp(-r2 / (2 * float(request.params["sigma"]) ** 2))
    return prior.expand(x.shape[0], height, width).clone()
