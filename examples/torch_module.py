"""Explain a torch module of your own: exported through xplain's front door, then explained
like any ONNX file (Captum-style integer target and baseline tensor), and scored.

Run from the repository root: ``.venv/bin/python examples/torch_module.py``.
"""

from __future__ import annotations

import torch
from torch import nn

import xplain

torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(3, 8, 3, padding=1),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(8, 8, 3, padding=1),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(8, 4),
).eval()
x = torch.rand(2, 3, 16, 16)

model = xplain.load_model(net, x)  # torch's default exporter; the classic one as fallback
print(model.report.producer)
print("max |logits - module(x)|:", float((model(x) - net(x)).abs().max()))

ig = xplain.explain(
    model, x, target=3, method="integrated-gradients", baselines=torch.zeros(3, 16, 16)
)
completeness = ig.maps.sum(dim=(1, 2)) - (model(x)[:, 3] - model(torch.zeros_like(x))[:, 3])
print("IG completeness gap per image:", [round(float(v), 4) for v in completeness])
scores = xplain.score("deletion", model, x, 3, ig.maps)
print("deletion AUC:", [round(float(v), 4) for v in scores["deletion"]])
