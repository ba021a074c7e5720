"""Transformer-era classifiers through the front door, with both of torch's exporters.

Tiny ViT, Swin, Swin-V2, ConvNeXt, MaxViT (torchvision constructors) and DeiT (timm, skipped
when timm is missing), from ``tests/modern_models.py``, exported with torch's default exporter
(``dynamo=True``: Gelu-20, Reduce*-18, Split-18, Pad-19, AveragePool-19, ScatterND-18, …) and
the classic one at opset 17 (LayerNormalization over windows whose size shape inference leaves
unknown, Clip with an omitted min). For each file:

* it loads and verifies against onnxruntime, and its logits equal the torch model's;
* the input gradient xplain computes equals the torch model's own autograd gradient — so the
  converters are right in the backward pass too, not only forward;
* gradient, integrated gradients and occlusion run, give non-trivial maps, and a batch of two
  gives the maps of two batches of one (invariant 4).

Exports are cached per session (``modern_models.export_model``); on 2 CPU cores the module takes
about a minute, nearly all of it in the dynamo exporter.
"""

from __future__ import annotations

import pytest
import torch

import xplain

from .modern_models import EXPORTERS, STATIC_BATCH, build_model, export_model

CASES = [
    (kind, exporter)
    for kind in ("vit", "swin", "convnext", "maxvit", "deit")
    for exporter in EXPORTERS
]
CASES.append(
    ("swin_v2", "classic")
)  # the classic exporter's Clip(x, "", max) in SwinV2's logit scale
TOL = 1e-4


def _close(got: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    scale = max(1.0, float(ref.abs().max()))
    diff = float((got.double() - ref.double()).abs().max())
    assert diff <= tol * scale, f"max |diff| {diff:.3g} > {tol} × {scale:.3g}"


@pytest.fixture(scope="module", params=CASES, ids=[f"{k}-{e}" for k, e in CASES])
def case(request):
    kind, exporter = request.param
    path = export_model(kind, exporter)
    return kind, exporter, xplain.load_model(path)


def test_loads_verifies_and_matches_torch(case):
    kind, exporter, model = case
    report = model.report
    assert report.verified and report.max_abs_diff <= TOL
    assert model.spec.fixed_batch == ((kind, exporter) in STATIC_BATCH)
    assert report.batch_checked == (not model.spec.fixed_batch)
    if exporter == "dynamo":
        assert any("xplain's converters" in note and "Gelu-20" in note for note in report.notes), (
            report.notes
        )
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _close(model(x), build_model(kind)(x))


def test_input_gradient_equals_torch_autograd(case):
    kind, _, model = case
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    reference = build_model(kind)
    xr = x.clone().requires_grad_(True)
    logits = reference(xr)
    targets = logits.argmax(dim=1)
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), xr)
    got = xplain.explain(model, x, targets=targets, method="gradient").maps
    _close(got, grad.sum(dim=1), tol=1e-3)
    assert got.abs().max() > 0


@pytest.mark.parametrize(
    "method,params",
    [
        ("gradient", {}),
        ("integrated-gradients", {"steps": 4}),
        ("occlusion", {"patch": 16, "stride": 16}),
    ],
)
def test_methods_run_batch_consistent(case, method, params):
    _, _, model = case
    x = model.example_input(2, seed=3)
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    both = xplain.explain(model, x, targets=targets, method=method, params=params).maps
    singles = torch.cat(
        [
            xplain.explain(
                model, x[i : i + 1], targets=targets[i : i + 1], method=method, params=params
            ).maps
            for i in range(2)
        ]
    )
    assert both.shape == (2, 32, 32) and torch.isfinite(both).all()
    assert both.abs().amax(dim=(1, 2)).min() > 0  # a map for each image, not all zeros
    _close(both, singles, tol=1e-4)
