"""Tiny transformer-era classifiers for the tests, written so the tests can read their insides.

* :func:`tiny_vit`: torchvision's VisionTransformer (image 32, patch 8, 2 layers, class token),
  its zero-initialised head replaced by random weights so the logits depend on the image;
* :class:`TinyDeiT`: a DeiT-like ViT with class + distillation tokens (2 prefix tokens) whose
  forward keeps its attention probabilities (``attn``, gradients retained) and can run the
  conservative LRP forward of Ali et al. 2022 (``lrp=True``: softmax, LayerNorm's σ and the GELU
  gate detached) as an independent reference;
* :class:`TinySwinLike`: channels-last (B×H×W×C) blocks with attention inside 4×4 windows;
* :class:`TinyEffNetLike`: SiLU, a squeeze-and-excitation sigmoid gate and Hardswish (what
  EfficientNet/MobileNetV3 bring), to check rectifier-only methods refuse it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def tiny_vit(seed: int = 0) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=5,
    )
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.5)
        model.heads.head.bias.normal_(0, 0.1)
        model.class_token.normal_(0, 0.5)
    return model.eval()


def tiny_convnext(seed: int = 0) -> nn.Module:
    """torchvision's ConvNeXt, two stages (16 and 32 channels, one block each): channels-last
    LayerNorm/Linear/GELU inside the blocks, a pooled B×1×1×C LayerNorm in the head."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(seed)
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=5).eval()


def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm, lrp: bool) -> torch.Tensor:
    if not lrp:
        return ln(x)
    centred = x - x.mean(-1, keepdim=True)
    sigma = (centred.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt().detach()
    return centred / sigma * ln.weight + ln.bias


def _gelu(x: torch.Tensor, lrp: bool) -> torch.Tensor:
    if not lrp:
        return F.gelu(x)
    return x * (0.5 * (1 + torch.erf(x / math.sqrt(2)))).detach()


class TinyDeiT(nn.Module):
    def __init__(
        self,
        size: int = 32,
        patch: int = 8,
        dim: int = 16,
        heads: int = 2,
        depth: int = 2,
        classes: int = 5,
        prefix: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.patch = nn.Conv2d(3, dim, patch, patch)
        n = (size // patch) ** 2
        self.prefix = nn.Parameter(torch.randn(1, prefix, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, n + prefix, dim) * 0.5)
        self.heads = heads
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                dict(
                    n1=nn.LayerNorm(dim),
                    qkv=nn.Linear(dim, 3 * dim),
                    proj=nn.Linear(dim, dim),
                    n2=nn.LayerNorm(dim),
                    fc1=nn.Linear(dim, 2 * dim),
                    fc2=nn.Linear(2 * dim, dim),
                )
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.head_dist = nn.Linear(dim, classes)
        self.attn: list[torch.Tensor] = []
        self.lrp = False
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, lrp = x.shape[0], self.lrp
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix.expand(b, -1, -1), t], 1) + self.pos
        self.attn = []
        for blk in self.blocks:
            h = _layer_norm(t, blk["n1"], lrp)
            n, c = h.shape[1], h.shape[2]
            q, k, v = (
                blk["qkv"](h).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            )
            a = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
            if a.requires_grad:
                a.retain_grad()
            self.attn.append(a)
            t = t + blk["proj"](((a.detach() if lrp else a) @ v).transpose(1, 2).reshape(b, n, c))
            t = t + blk["fc2"](_gelu(blk["fc1"](_layer_norm(t, blk["n2"], lrp)), lrp))
        t = _layer_norm(t, self.norm, lrp)
        return (self.head(t[:, 0]) + self.head_dist(t[:, 1])) / 2


class TinySwinLike(nn.Module):
    """Patch embedding to B×8×8×C (channels last), two blocks of attention within 4×4 windows
    (the second on windows shifted by 2, as Swin), LayerNorm, mean pooling, a linear head."""

    def __init__(
        self, dim: int = 16, classes: int = 5, window: int = 4, heads: int = 2, seed: int = 0
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.window, self.heads = window, heads
        self.attn: list[torch.Tensor] = []
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                dict(
                    n1=nn.LayerNorm(dim),
                    qkv=nn.Linear(dim, 3 * dim),
                    proj=nn.Linear(dim, dim),
                    n2=nn.LayerNorm(dim),
                    fc1=nn.Linear(dim, 2 * dim),
                    fc2=nn.Linear(2 * dim, dim),
                )
            )
            for _ in range(2)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).permute(0, 2, 3, 1)  # B×H×W×C
        b, h, w, c = t.shape
        ws, nh = self.window, self.heads
        self.attn = []
        for i, blk in enumerate(self.blocks):
            shifted = torch.roll(t, (-2, -2), (1, 2)) if i % 2 else t
            u = blk["n1"](shifted).reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
            u = u.reshape(-1, ws * ws, c)
            q, k, v = (
                blk["qkv"](u).reshape(u.shape[0], ws * ws, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
            )
            a = (q @ k.transpose(-2, -1) / math.sqrt(c // nh)).softmax(-1)  # (B·windows)×heads×n×n
            if a.requires_grad:
                a.retain_grad()
            self.attn.append(a)
            u = (a @ v).transpose(1, 2).reshape(u.shape[0], ws * ws, c)
            u = blk["proj"](u).reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
            u = u.reshape(b, h, w, c)
            u = torch.roll(u, (2, 2), (1, 2)) if i % 2 else u
            t = t + u
            t = t + blk["fc2"](F.gelu(blk["fc1"](blk["n2"](t))))
        return self.head(self.norm(t).mean(dim=(1, 2)))


class TinyEffNetLike(nn.Module):
    """conv-BN-SiLU, a squeeze-and-excitation block (sigmoid gate), conv-Hardswish, pooling, head."""

    def __init__(self, classes: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.SiLU(), nn.Conv2d(4, 8, 1), nn.Sigmoid()
        )
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.Hardswish()
        self.head = nn.Linear(8, classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h * self.se(h)
        h = self.act(self.conv(h))
        return self.head(h.mean(dim=(2, 3)))
