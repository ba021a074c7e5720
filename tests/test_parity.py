"""Parity with the reference libraries on tiny networks (bench/parity.py runs the full-size ones).

xplain runs on the ONNX export (both exporters), the reference (zennit 0.5.1, Captum,
pytorch-grad-cam) on the torch module, with the same input and targets; the reference adapters
are bench/parity.py's. Then the places where LRP rules differ — the bias in z⁺'s denominator, a
BatchNorm that survives the export, the residual add — each on a case computed by hand.
"""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import xplain
from xplain.onnx.export import export_classifier

from .conftest import REPO

pytest.importorskip("zennit")
pytest.importorskip("pytorch_grad_cam")

_spec = importlib.util.spec_from_file_location("parity_bench", REPO / "bench" / "parity.py")
assert _spec is not None and _spec.loader is not None
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)


def _randomise(net: nn.Module, seed: int) -> nn.Module:
    """BatchNorm statistics and affines, and biases, away from their identity defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 2 - 0.5)  # some negative scales
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net.eval()


class TinyResNet(nn.Module):
    """conv-BN-ReLU, max-pool, a torchvision BasicBlock and a Bottleneck with a downsample
    (so zennit's ResNetCanonizer applies), global average pool, linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(8, 8)
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer2 = Bottleneck(8, 4, stride=2, downsample=down)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)
        _randomise(self, 1)

    def forward(self, x):
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layer2(self.layer1(h))), 1))


class TinyVGG(nn.Module):
    """VGG's pattern: conv-ReLU stacks with biases, one BatchNorm, max-pools, two linears."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),  # folded: one bias, as the reference's
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 5))
        _randomise(self, 3)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


NETS = {"vgg": TinyVGG, "resnet": TinyResNet}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """``cases(name, exporter) -> (net, model, x, targets)``, each exported once."""
    made: dict = {}

    def get(name, exporter):
        if (name, exporter) not in made:
            net = NETS[name]()
            path = tmp_path_factory.mktemp("parity") / f"{name}-{exporter}.onnx"
            export_classifier(net, path, (3, 16, 16), exporter)
            x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
            with torch.no_grad():
                targets = net(x).argmax(1)
            made[name, exporter] = net, xplain.load_model(path), x, targets
        return made[name, exporter]

    return get


#: every LRP row on both networks' classic export; the dynamo export (other ONNX ops for the
#: global mean and the flatten) with the rows that differ most in their rules
LRP_CASES = [(n, "classic", row) for n in NETS for row in parity.LRP_ROWS] + [
    ("resnet", "dynamo", "lrp-zplus bias=positive"),
    ("resnet", "dynamo", "lrp epsilon-gamma-box"),
    ("vgg", "dynamo", "lrp epsilon-plus-flat"),
]


def _rel(ours, ref):
    return parity.compare(ours, ref)[0]


@pytest.mark.parametrize(("name", "exporter", "row"), LRP_CASES)
def test_lrp_equals_zennit(cases, name, exporter, row):
    net, model, x, targets = cases(name, exporter)
    method, params = parity.LRP_ROWS[row]
    ours = xplain.explain(model, x, targets, method, params=params).maps
    assert _rel(ours, parity.zennit_lrp(net, x, targets, row)) <= 1e-4


@pytest.mark.parametrize("rule", parity.IG_RULES)
def test_integrated_gradients_equals_captum_on_the_source_module(cases, rule):
    net, model, x, targets = cases("resnet", "classic")
    ours = xplain.explain(
        model, x, targets, "integrated-gradients", params={"steps": 8, "method": rule}
    ).maps
    assert _rel(ours, parity.captum_ig(net, x, targets, 8, rule)) <= 1e-4


@pytest.mark.parametrize(("name", "exporter"), [("vgg", "classic"), ("resnet", "dynamo")])
def test_fullgrad_and_gradcam_equal_pytorch_grad_cam(cases, name, exporter):
    net, model, x, targets = cases(name, exporter)
    ours = xplain.explain(model, x, targets, "fullgrad", {"postprocess": "pytorch-grad-cam"}).maps
    assert _rel(ours, parity.fullgrad_reference(net, x, targets)) <= 1e-4
    default = xplain.explain(model, x, targets, "fullgrad").maps
    assert _rel(default, parity.fullgrad_reference(net, x, targets)) > 1e-2  # a real difference
    layer = net.layer2 if name == "resnet" else net.features[-1]
    ours = xplain.explain(
        model,
        x,
        targets,
        "grad-cam",
        {"normalise": "pytorch-grad-cam", "layer": _last_spatial(model)},
    ).maps
    assert _rel(ours, parity.gradcam_reference(net, layer, x, targets)) <= 1e-4


def _last_spatial(model) -> str:
    """The node of the last max-pool (VGG) / the last block's ReLU (ResNet): the module output
    the reference hooks."""
    names = [n.name for n in model.graph.graph.nodes if n.op == "call_module"]
    kinds = [type(model.module(n)).__name__ for n in names]
    last = max(i for i, k in enumerate(kinds) if k in ("ReLU", "MaxPool2d") and i < len(kinds) - 3)
    return names[last]


# ----------------------------------------------------------------------------- hand cases
def _export_net(net: nn.Module, path, shape, fold: bool = True):
    """Classic export; ``fold=False`` keeps BatchNorm as its own ONNX node."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.randn(1, *shape),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=fold,
        )
    return xplain.load_model(path)


def _stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0)


def test_zplus_bias_positive_puts_b_plus_into_the_denominator_by_hand(tmp_path):
    """bias: the default z⁺ has no bias term (relevance conserved: the map sums to the logit on
    this all-positive-weight head); bias=positive divides by W⁺x⁺ + b⁺ + W⁻x⁻, as zennit."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        net[1].bias.copy_(torch.tensor([0.5, -0.4, 0.3, 0.2]))
        net[3].bias.copy_(torch.tensor([0.2, -0.1, 0.3]))
    model = _export_net(net, tmp_path / "mlp.onnx", (3, 2, 2))
    x = model.example_input(1, seed=1)
    eps, target = 1e-6, 0  # logit 0.40, b⁺ = 0.2
    a0 = x.flatten(1)[0]
    w1, b1, w2, b2 = (t.detach() for t in (net[1].weight, net[1].bias, net[3].weight, net[3].bias))
    a1 = (w1 @ a0 + b1).clamp(min=0)
    z2 = w2 @ a1 + b2
    p, n = (lambda t: t.clamp(min=0)), (lambda t: t.clamp(max=0))
    for bias in ("none", "positive"):
        extra = p(b2[target]) if bias == "positive" else 0.0
        # R_i = a_i w⁺_i / (Σ a w⁺ + b⁺) · z_target on ReLU inputs (a ≥ 0)
        r1 = a1 * p(w2[target]) / _stab(p(w2[target]) @ a1 + extra, eps) * z2[target]
        lo, hi = torch.full_like(a0, float(a0.min())), torch.full_like(a0, float(a0.max()))
        zb = w1 @ a0 - p(w1) @ lo - n(w1) @ hi  # zᴮ at the first layer (the biases cancel)
        s = r1 / _stab(zb, eps if bias == "positive" else 1e-9)
        r0 = a0 * (w1.T @ s) - lo * (p(w1).T @ s) - hi * (n(w1).T @ s)
        ours = xplain.explain(model, x, [target], "lrp-zplus", {"bias": bias}).maps[0]
        assert ours.abs().max() > 1e-2
        torch.testing.assert_close(ours, r0.reshape(3, 2, 2).sum(0), rtol=1e-4, atol=1e-6)
    conserved = xplain.explain(model, x, [target], "lrp-zplus").info["relevance_sum"][0]
    absorbed = xplain.explain(model, x, [target], "lrp-zplus", {"bias": "positive"})
    assert abs(absorbed.info["relevance_sum"][0]) < abs(conserved)


def test_batchnorm_is_merged_into_its_conv_like_zennits_canonizer(tmp_path):
    """BatchNorm: on a graph that keeps the BN node, the default folds it into the conv (the
    number of the folded export and of zennit with SequentialMergeBatchNorm); batchnorm=epsilon
    is the ε-rule on the BN itself, checked by hand through the BN's affine map."""
    torch.manual_seed(6)
    net = _randomise(
        nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 2 * 2, 2),
        ),
        7,
    )
    kept = _export_net(net, tmp_path / "kept.onnx", (1, 4, 4), fold=False)
    folded = _export_net(net, tmp_path / "folded.onnx", (1, 4, 4), fold=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in kept.graph.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.graph.modules())
    x = kept.example_input(2, seed=2)
    targets = torch.tensor([0, 1])
    for method, params in (("lrp-zplus", {}), ("lrp", {"composite": "epsilon-gamma-box"})):
        merged = xplain.explain(kept, x, targets, method, params=params).maps
        want = xplain.explain(folded, x, targets, method, params=params).maps
        torch.testing.assert_close(merged, want, rtol=1e-4, atol=1e-6)
    ref = parity.zennit_lrp(net, x, targets, "lrp epsilon-gamma-box")
    assert (
        _rel(xplain.explain(kept, x, targets, "lrp", {"composite": "epsilon-gamma-box"}).maps, ref)
        < 1e-4
    )
    # the separate rule: R_z = z·s·R_y/(y+ε), then the conv's ε-rule on R_z, by hand
    eps = 0.1
    conv, bn, fc = net[0], net[1], net[4]
    with torch.no_grad():
        z = conv(x)
        y = bn(z)
        a = y.clamp(min=0).flatten(1)
        out = fc(a)
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().view(1, -1, 1, 1)
    r_out = torch.zeros_like(out).scatter_(1, targets[:, None], out.gather(1, targets[:, None]))
    r_a = a * ((r_out / _stab(out, eps)) @ fc.weight.detach())
    r_y = r_a.view_as(y)  # ReLU passes relevance
    r_z = z * scale * r_y / _stab(y, eps)
    s = r_z / _stab(z, eps)
    r_x = x * torch.nn.grad.conv2d_input(x.shape, conv.weight.detach(), s)
    ours = xplain.explain(kept, x, targets, "lrp-epsilon", {"epsilon": eps, "batchnorm": "epsilon"})
    torch.testing.assert_close(ours.maps, r_x.sum(1), rtol=1e-4, atol=1e-6)
    merged = xplain.explain(kept, x, targets, "lrp-epsilon", {"epsilon": eps}).maps
    assert not torch.allclose(merged, ours.maps, rtol=1e-3)  # with a large ε the two differ


def test_residual_add_splits_relevance_in_proportion_by_hand(tmp_path):
    """The residual add: R_a = a / stab(a + b) · R_(a+b) for each summand — zennit's Norm on the
    Sum module its ResNetCanonizer inserts."""

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(8)
            self.f1, self.f2, self.f3 = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(4, 2)

        def forward(self, x):
            x = torch.flatten(x, 1)
            return self.f3(torch.relu(torch.relu(self.f1(x)) + self.f2(x)))

    net = Residual().eval()
    model = _export_net(net, tmp_path / "res.onnx", (1, 2, 3))
    x = model.example_input(1, seed=3)
    eps, target = 0.05, 1
    w1, b1, w2, b2, w3, b3 = (t.detach() for t in net.parameters())
    a0 = x.flatten(1)[0]
    h1 = (w1 @ a0 + b1).clamp(min=0)
    h2 = w2 @ a0 + b2
    s = h1 + h2
    a = s.clamp(min=0)
    out = w3 @ a + b3
    r_a = a * w3[target] / _stab(out[target], eps) * out[target]
    r_h1, r_h2 = h1 / _stab(s, eps) * r_a, h2 / _stab(s, eps) * r_a
    r0 = a0 * (w1.T @ (r_h1 / _stab(w1 @ a0 + b1, eps))) + a0 * (w2.T @ (r_h2 / _stab(h2, eps)))
    ours = xplain.explain(model, x, [target], "lrp-epsilon", {"epsilon": eps}).maps[0]
    torch.testing.assert_close(ours, r0.reshape(1, 2, 3).sum(0), rtol=1e-4, atol=1e-6)
