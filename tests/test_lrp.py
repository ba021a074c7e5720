"""LRP: conservation through residual adds, the textbook rule by hand, z⁺/zᴮ by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xplain

from .conftest import export_classic


class _BiasFreeResNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 5, bias=False)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(h + self.c3(torch.relu(self.c2(h))))  # residual add
        h = nn.functional.max_pool2d(h, 2)
        return self.fc(torch.flatten(self.pool(h), 1))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    net = _BiasFreeResNet().eval()
    return net, xplain.load_model(
        export_classic(net, tmp_path_factory.mktemp("lrp") / "res.onnx", (1, 3, 16, 16))
    )


@pytest.mark.parametrize("name", ["lrp-epsilon", "lrp-zplus"])
def test_relevance_is_conserved_through_residual_adds(resnet, name):
    net, model = resnet
    x = model.example_input(3, seed=2)
    targets = torch.tensor([0, 3, 4])
    with torch.no_grad():
        logits = model(x).gather(1, targets[:, None])[:, 0]
    result = xplain.explain(model, x, targets, name, params={"epsilon": "1e-9"})
    torch.testing.assert_close(result.maps.flatten(1).sum(1), logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        torch.tensor(result.info["relevance_sum"]), logits, rtol=1e-4, atol=1e-5
    )


def test_epsilon_to_zero_equals_input_times_gradient_on_relu_nets(resnet):
    _, model = resnet
    x = model.example_input(2, seed=3)
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xr)[:, 1].sum(), xr)
    ours = xplain.explain(model, x, [1, 1], "lrp-epsilon", params={"epsilon": "0"}).maps
    torch.testing.assert_close(ours, (x * g).sum(1), rtol=1e-4, atol=1e-6)


def test_residual_add_splits_relevance_in_proportion(resnet):
    """Larger ε on a residual net: the answer differs from input×gradient, as the rule says."""
    _, model = resnet
    x = model.example_input(1, seed=4)
    eps_small = xplain.explain(model, x, [2], "lrp-epsilon", params={"epsilon": "1e-9"}).maps
    eps_big = xplain.explain(model, x, [2], "lrp-epsilon", params={"epsilon": "10"}).maps
    assert eps_big.abs().sum() < eps_small.abs().sum()  # ε absorbs relevance


def _mlp():
    torch.manual_seed(7)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def test_epsilon_rule_matches_textbook_computation_with_biases(tmp_path):
    net = _mlp()
    model = xplain.load_model(export_classic(net, tmp_path / "mlp.onnx", (1, 3, 2, 2)))
    x = model.example_input(1, seed=5)
    eps, target = 0.01, 2
    a0 = x.flatten(1)[0]
    w1, b1, w2, b2 = net[1].weight, net[1].bias, net[3].weight, net[3].bias
    z1 = w1 @ a0 + b1
    a1 = z1.clamp(min=0)
    z2 = w2 @ a1 + b2
    r2 = torch.zeros(3)
    r2[target] = z2[target]
    stab = lambda z: z + eps * torch.where(z >= 0, 1.0, -1.0)  # noqa: E731
    r1 = a1 * (w2.T @ (r2 / stab(z2)))  # R_i = sum_j a_i w_ij / (z_j + eps) R_j
    r0 = a0 * (w1.T @ (r1 / stab(z1)))  # ReLU passes relevance: R_z1 = R_a1
    ours = xplain.explain(model, x, [target], "lrp-epsilon", params={"epsilon": str(eps)}).maps
    torch.testing.assert_close(ours[0], r0.reshape(3, 2, 2).sum(0), rtol=1e-5, atol=1e-6)


def test_zplus_and_zbox_match_textbook_computation(tmp_path):
    torch.manual_seed(8)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 6, bias=False),
        nn.ReLU(),
        nn.Linear(6, 4, bias=False),
        nn.ReLU(),
        nn.Linear(4, 3, bias=False),
    ).eval()
    model = xplain.load_model(export_classic(net, tmp_path / "mlp.onnx", (1, 3, 2, 2)))
    x = model.example_input(1, seed=6)
    target = 1
    a0 = x.flatten(1)[0]
    w1, w2, w3 = net[1].weight, net[3].weight, net[5].weight
    z1 = w1 @ a0
    a1 = z1.clamp(min=0)
    z2 = w2 @ a1
    a2 = z2.clamp(min=0)
    z3 = w3 @ a2
    r3 = torch.zeros(3)
    r3[target] = z3[target]
    p = lambda w: w.clamp(min=0)  # noqa: E731
    div = lambda a, b: torch.where(b != 0, a / torch.where(b != 0, b, 1.0), 0.0)  # noqa: E731 - dead units get none
    r2 = a2 * (p(w3).T @ div(r3, p(w3) @ a2))
    r1 = a1 * (p(w2).T @ div(r2, p(w2) @ a1))
    low, high = torch.full_like(a0, float(a0.min())), torch.full_like(a0, float(a0.max()))
    zb = w1 @ a0 - p(w1) @ low - w1.clamp(max=0) @ high
    s1 = div(r1, zb)
    r0 = a0 * (w1.T @ s1) - low * (p(w1).T @ s1) - high * (w1.clamp(max=0).T @ s1)
    ours = xplain.explain(model, x, [target], "lrp-zplus", params={"epsilon": "0"}).maps
    torch.testing.assert_close(ours[0], r0.reshape(3, 2, 2).sum(0), rtol=1e-4, atol=1e-6)
    assert abs(float(r0.sum()) - float(z3[target])) < 1e-4 * max(1.0, abs(float(z3[target])))
