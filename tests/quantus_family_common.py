"""Shared helpers of the Quantus-family agreement tests (issue 23): scoring one xplain metric
on tensors, tie-free maps, the explainer used on both sides, and the fixtures' batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import xplain
from xplain.data.images import Preprocess, load_image
from xplain.plugins.registry import Registry

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
REG = Registry().discover()
Q = {"disable_warnings": True}


def score(name, model, x, targets, maps, **context):
    """xplain's per-sample scores of metric ``name`` as NumPy arrays."""
    metric = REG.metric(name)
    params = xplain.validate_params(metric.params, context.pop("params", {}), name)
    ctx = {"params": params, "seed": 0, "cache": {}, "forward_batch": 64, **context}
    out = metric.compute(model, x, targets, xplain.Attribution(maps, {}), **ctx)
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def untie(maps):
    """Tie-free maps (Quantus sorts with an unstable quicksort, xplain with a stable sort)."""
    for seed in range(20):
        if all(len(torch.unique(m)) == m.numel() for m in maps):
            return maps
        scale = maps.flatten(1).abs().amax(1).view(-1, 1, 1)
        maps = maps + 1e-4 * scale * torch.rand(
            maps.shape, generator=torch.Generator().manual_seed(seed)
        )
    raise AssertionError("could not untie the maps")


def gradient(net, x, targets):
    """d logit_t / d x summed over channels (signed): the explainer both libraries use."""
    x = torch.as_tensor(x).clone().float().requires_grad_(True)
    out = net(x).gather(1, torch.as_tensor(targets).long()[:, None]).sum()
    (g,) = torch.autograd.grad(out, x)
    return g.sum(1).detach()


def digits_batch():
    """digits_cnn (1×28×28) on the four shipped digit images: one channel, so a Quantus
    'feature' (one array element) is one pixel."""
    model = xplain.load_model(SAMPLES / "digits_cnn.onnx", device="cpu")
    pre = Preprocess.from_options((1, 28, 28), sidecar=model.sidecar)
    x = torch.stack(
        [
            torch.from_numpy(pre(load_image(SAMPLES / "images" / f"digit_{d}.png"))[0])
            for d in (0, 3, 7, 9)
        ]
    )
    return model, x, torch.tensor([0, 3, 7, 9])


def as_np(*tensors):
    return [np.asarray(torch.as_tensor(v).detach().cpu().numpy()) for v in tensors]
