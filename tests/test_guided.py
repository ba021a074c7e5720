"""Guided backprop and deconvnet: Captum on ReLU nets, a hand-written reference on ReLU6 nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xplain

from .conftest import export_classic


def _relu_cnn():
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    ).eval()


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory):
    path = export_classic(_relu_cnn(), tmp_path_factory.mktemp("g") / "relu.onnx", (1, 3, 16, 16))
    return xplain.load_model(path)


@pytest.mark.parametrize(
    "name, captum_cls", [("guided-backprop", "GuidedBackprop"), ("deconvnet", "Deconvolution")]
)
def test_agrees_with_captum_on_relu_networks(relu_model, name, captum_cls):
    import captum.attr

    x = relu_model.example_input(3, seed=4)
    targets = torch.tensor([0, 4, 2])
    ours = xplain.explain(relu_model, x, targets, name).maps
    ref = (
        getattr(captum.attr, captum_cls)(relu_model.graph)
        .attribute(x.clone(), target=targets)
        .sum(dim=1)
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    plain = (
        xplain.explain(relu_model, x, targets, "gradient").maps
        if "gradient" in xplain.get_registry().methods
        else None
    )
    if plain is not None:
        assert not torch.allclose(ours, plain, atol=1e-6)


class _Relu6Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.l1, self.l2, self.l3 = nn.Linear(48, 32), nn.Linear(32, 24), nn.Linear(24, 4)
        with torch.no_grad():  # spread pre-activations across both ReLU6 bends
            self.l1.weight.mul_(6)
            self.l2.weight.mul_(6)

    def forward(self, x):
        return self.l3(torch.clamp(self.l2(torch.clamp(self.l1(x.flatten(1)), 0, 6)), 0, 6))


def _hand_reference(net: _Relu6Mlp, x: torch.Tensor, target: int, mode: str) -> torch.Tensor:
    """Layer-by-layer backward written out: no autograd, no xplain."""
    h = x.flatten(1)
    z1 = h @ net.l1.weight.T + net.l1.bias
    a1 = z1.clamp(0, 6)
    z2 = a1 @ net.l2.weight.T + net.l2.bias
    g = net.l3.weight[target].expand(x.shape[0], -1)  # d logit / d a2

    def through(g, z):
        if mode == "guided":
            return g.clamp(min=0) * ((z > 0) & (z < 6)).float()
        if mode == "deconvnet":
            return g.clamp(min=0)
        return g * ((z > 0) & (z < 6)).float()

    g = through(g, z2) @ net.l2.weight
    g = through(g, z1) @ net.l1.weight
    return g.reshape(x.shape)


@pytest.fixture(scope="module")
def relu6_model(tmp_path_factory):
    net = _Relu6Mlp().eval()
    path = export_classic(net, tmp_path_factory.mktemp("g6") / "relu6.onnx", (2, 3, 4, 4))
    model = xplain.load_model(path)
    assert {a.kind for a in model.activations()} == {"relu6"}
    return net, model


@pytest.mark.parametrize("name, mode", [("guided-backprop", "guided"), ("deconvnet", "deconvnet")])
def test_relu6_network_matches_hand_written_reference(relu6_model, name, mode):
    net, model = relu6_model
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for target in range(4):
        ours = xplain.explain(model, x, [target] * 4, name).maps
        ref = _hand_reference(net, x, target, mode).sum(dim=1)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        plain = _hand_reference(net, x, target, "plain").sum(dim=1)
        assert (ours - plain).abs().max() > 1e-3  # the rule really changed the backward pass


def test_captum_silently_ignores_relu6_but_we_do_not(relu6_model):
    import captum.attr

    net, model = relu6_model
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    captum_gbp = captum.attr.GuidedBackprop(model.graph).attribute(x.clone(), target=1).sum(dim=1)
    plain = _hand_reference(net, x, 1, "plain").sum(dim=1)
    torch.testing.assert_close(
        captum_gbp, plain, rtol=1e-5, atol=1e-5
    )  # Captum = plain gradient here
    ours = xplain.explain(model, x, [1, 1], "guided-backprop").maps
    assert (ours - captum_gbp).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["leaky_relu", "prelu", "clip"])
def test_rules_cover_other_rectifiers(tmp_path, kind):
    torch.manual_seed(0)
    act = {
        "leaky_relu": nn.LeakyReLU(0.1),
        "prelu": nn.PReLU(4, init=0.2),
        "clip": nn.Hardtanh(-1.0, 2.0),
    }[kind]
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), act, nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    ).eval()
    model = xplain.load_model(export_classic(net, tmp_path / f"{kind}.onnx", (1, 3, 8, 8)))
    x = model.example_input(1)
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        z = net[0](xr)
        g_out = net[3].weight[0].reshape(1, 4, 8, 8)
        if kind == "clip":
            local = ((z > -1) & (z < 2)).float()
        else:
            slope = 0.1 if kind == "leaky_relu" else 0.2
            local = torch.where(z > 0, torch.ones_like(z), torch.full_like(z, slope))
        (ref,) = torch.autograd.grad(z, xr, grad_outputs=g_out.clamp(min=0) * local)
    ours = xplain.explain(model, x, [0], "guided-backprop").maps
    torch.testing.assert_close(ours, ref.sum(dim=1), rtol=1e-5, atol=1e-6)
