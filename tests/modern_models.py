"""Tiny transformer-era classifiers exported to ONNX, shared by the test modules.

``export_model(kind, exporter)`` returns the path of an ONNX file (cached for the whole test
session: each (kind, exporter) is built and exported once) for

* ``kind``: ``vit``, ``swin``, ``swin_v2``, ``convnext``, ``maxvit`` (torchvision constructors
  with tiny configurations) and ``deit``, ``convnext_v2`` (timm, if installed; else the test
  is skipped);
* ``exporter``: ``"dynamo"`` (torch's default exporter, opset 18+, weights in PATH.data) or
  ``"classic"`` (the TorchScript exporter at opset 17).

The batch axis is dynamic; where the exporter refuses it (torch.export on Swin's window
partition), the file has a fixed batch of 1, as a user exporting the model would get —
``STATIC_BATCH`` lists those. Models are seeded and in eval mode; ``build_model(kind)``
returns the torch module itself, for comparing logits. Input: 3×32×32, 5 classes.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

from xplain.onnx.export import export_classifier

KINDS = ("vit", "swin", "swin_v2", "convnext", "maxvit", "deit", "convnext_v2")
TIMM_KINDS = ("deit", "convnext_v2")
EXPORTERS = ("dynamo", "classic")
SIZE, CLASSES = 32, 5
#: (kind, exporter) pairs exported with a fixed batch of 1 because the exporter refused a dynamic one
STATIC_BATCH: set[tuple[str, str]] = set()

_DIR = Path(tempfile.mkdtemp(prefix="xplain-modern-"))


def build_model(kind: str) -> nn.Module:
    """The tiny seeded model of ``kind`` (eval mode)."""
    torch.manual_seed(0)
    if kind == "vit":
        from torchvision.models import VisionTransformer

        model = VisionTransformer(
            image_size=SIZE,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=CLASSES,
        )
    elif kind in ("swin", "swin_v2"):
        from torchvision.models import SwinTransformer
        from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

        extra = (
            {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2}
            if kind == "swin_v2"
            else {}
        )
        model = SwinTransformer(
            patch_size=[4, 4],
            embed_dim=16,
            depths=[2, 2],
            num_heads=[2, 2],
            window_size=[4, 4],
            num_classes=CLASSES,
            **extra,
        )
    elif kind == "convnext":
        from torchvision.models import ConvNeXt
        from torchvision.models.convnext import CNBlockConfig

        model = ConvNeXt(
            [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=CLASSES
        )
    elif kind == "maxvit":
        from torchvision.models import MaxVit

        model = MaxVit(
            input_size=(SIZE, SIZE),
            stem_channels=8,
            partition_size=2,
            block_channels=[16, 32],
            block_layers=[1, 1],
            head_dim=8,
            stochastic_depth_prob=0.0,
            num_classes=CLASSES,
        )
    elif kind in TIMM_KINDS:
        timm = pytest.importorskip("timm")
        if kind == "deit":
            model = timm.create_model(
                "deit_tiny_patch16_224",
                pretrained=False,
                img_size=SIZE,
                patch_size=8,
                depth=2,
                num_heads=2,
                embed_dim=32,
                num_classes=CLASSES,
            )
        else:
            model = timm.create_model(
                "convnextv2_atto",
                pretrained=False,
                depths=(1, 1, 1, 1),
                dims=(8, 8, 16, 16),
                num_classes=CLASSES,
            )
    else:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    with torch.no_grad():  # non-trivial norms and biases, so a wrong conversion shows in the logits
        for name, param in model.named_parameters():
            if param.dim() >= 2 and not param.any():  # zero-initialised heads (torchvision's ViT)
                param.normal_(0.0, 0.2)
            elif name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@cache
def export_model(kind: str, exporter: str) -> str:
    """Path of ``kind`` exported by ``exporter`` (once per test session)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; one of {EXPORTERS}")
    model = build_model(kind)
    path = _DIR / f"{kind}_{exporter}.onnx"
    quiet = [
        logging.getLogger(name)
        for name in ("torch._guards", "torch.export", "torch._dynamo", "torch.onnx")
    ]
    levels = [log.level for log in quiet]
    try:
        for log in quiet:
            log.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                export_classifier(model, path, (3, SIZE, SIZE), exporter, dynamic=True)
            except Exception:  # noqa: BLE001 - the exporter refuses a dynamic batch: as a user would, fix it
                export_classifier(model, path, (3, SIZE, SIZE), exporter, dynamic=False)
                STATIC_BATCH.add((kind, exporter))
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return str(path)
