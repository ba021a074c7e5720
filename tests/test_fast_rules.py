"""The fast backward paths of LRP and TR-GBP against the straightforward computation.

A MobileNet-like net (depthwise convs, ReLU6 after convs, a residual add before a ReLU, a
strided depthwise conv whose ONNX pads are asymmetric, so the loader makes it
``Sequential(pad, conv)``) exercises: the z⁺ backward as aten kernels, rectifiers paired with
their only producer (relevance handed back), the stacked zᴮ layer, and TR-GBP's convolutions
and pads folding the K classes into their batch under ``is_grads_batched``. Each is compared
with a hand-written textbook computation or with the same quantity computed without the fast
path, so a wrong fold, a wrong pairing or a wrong crop fails here."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xplain
from xplain.graph.lrp import _zbox_separate, zbox_relevance
from xplain.graph.rules import FoldedConv, FoldedPad

from .conftest import export_classic


class _MobileNetLike(nn.Module):
    """Exported with ``down``'s symmetric padding; the ONNX graph's pads are then edited to
    (0, 0, 1, 1) (same output size), which the textbook computation below pads by hand."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.project = nn.Conv2d(16, 8, 1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        d = F.relu6(self.dw(F.relu6(self.expand(h))))
        r = torch.relu(h + self.project(d))
        q = torch.relu(self.down(r))
        return self.fc(q.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def mobile(tmp_path_factory):
    torch.manual_seed(5)
    net = _MobileNetLike().eval()
    folder = tmp_path_factory.mktemp("fast")
    models = []
    for dynamic in (True, False):
        path = export_classic(net, folder / f"mobile{int(dynamic)}.onnx", (1, 3, 8, 8), dynamic)
        graph = onnx.load(str(path))
        for node in graph.graph.node:
            attrs = {a.name: a for a in node.attribute}
            if node.op_type == "Conv" and attrs["group"].i == 8:
                attrs["pads"].ints[:] = [0, 0, 1, 1]  # asymmetric: Sequential(pad, conv)
        onnx.save(graph, str(path))
        models.append(xplain.load_model(path))
    assert any(isinstance(m, nn.Sequential) for m in models[0].graph.modules())
    return net, models[0], models[1]


def _vjp(f, a, c):
    a = a.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(f(a), a, c)
    return g


def _textbook(net, x, target, mode, eps):
    """LRP by hand on the torch net: R = a ⊙ Wᵀ(R_out / den) per layer (den: z + ε sign z for
    the ε-rule, W⁺a + ε for z⁺), rectifiers pass R, the add and the mean use the ε-rule, and with
    ``zplus`` the stem uses zᴮ with the image's own min and max."""
    stab = lambda z: z + eps * torch.where(z >= 0, 1.0, -1.0)  # noqa: E731
    pos = lambda w: w.clamp(min=0)  # noqa: E731

    def div(r, den):
        return torch.where(den != 0, r / torch.where(den != 0, den, 1.0), 0.0)

    def layer(conv_fn, w, b, a, r):
        if mode == "zplus":
            return a * _vjp(lambda t: conv_fn(t, pos(w)), a, div(r, conv_fn(a, pos(w)) + eps))
        z = conv_fn(a, w)
        z = z + (b if z.dim() == 2 else b[:, None, None])
        return a * _vjp(lambda t: conv_fn(t, w), a, div(r, stab(z)))

    conv = lambda s, p=0, groups=1, pad=None: (  # noqa: E731
        lambda t, w: F.conv2d(t if pad is None else F.pad(t, pad), w, None, s, p, 1, groups)
    )
    stem_f, expand_f, dw_f = conv(1, 1), conv(1), conv(1, 1, 16)
    project_f, down_f = conv(1), conv(2, 0, 8, (0, 1, 0, 1))
    with torch.no_grad():
        h = torch.relu(net.stem(x))
        e = F.relu6(net.expand(h))
        d = F.relu6(net.dw(e))
        p = net.project(d)
        r = torch.relu(h + p)
        q = torch.relu(down_f(r, net.down.weight) + net.down.bias[:, None, None])
        g = q.mean(dim=(2, 3))
        logits = net.fc(g)
    out = torch.zeros_like(logits)
    out[0, target] = logits[0, target]
    r_g = layer(lambda t, w: F.linear(t, w), net.fc.weight, net.fc.bias, g, out)
    r_q = q * _vjp(lambda t: t.mean(dim=(2, 3)), q, div(r_g, stab(g)))
    r_r = layer(down_f, net.down.weight, net.down.bias, r, r_q)
    c_add = div(r_r, stab(h + p))
    r_h, r_p = h * c_add, p * c_add
    r_d = layer(project_f, net.project.weight, net.project.bias, d, r_p)
    r_e = layer(dw_f, net.dw.weight, net.dw.bias, e, r_d)
    r_h = r_h + layer(expand_f, net.expand.weight, net.expand.bias, h, r_e)
    if mode == "epsilon":
        return layer(stem_f, net.stem.weight, net.stem.bias, x, r_h).sum(1)
    w = net.stem.weight
    lo = torch.full_like(x, float(x.min()))
    hi = torch.full_like(x, float(x.max()))
    zb = stem_f(x, w) - stem_f(lo, pos(w)) - stem_f(hi, w.clamp(max=0))
    s = div(r_h, zb + 1e-9 * torch.where(zb >= 0, 1.0, -1.0))  # zbox_relevance's own ε
    rx = x * _vjp(lambda t: stem_f(t, w), x, s)
    rx = rx - lo * _vjp(lambda t: stem_f(t, pos(w)), lo, s)
    return (rx - hi * _vjp(lambda t: stem_f(t, w.clamp(max=0)), hi, s)).sum(1)


@pytest.mark.parametrize("name, mode", [("lrp-epsilon", "epsilon"), ("lrp-zplus", "zplus")])
def test_lrp_matches_textbook_on_a_mobilenet_like_net(mobile, name, mode):
    net, model, _ = mobile
    x = model.example_input(1, seed=9)
    for target, eps in ((2, 1e-4), (4, 0.01)):
        want = _textbook(net, x, target, mode, eps)
        got = xplain.explain(model, x, [target], name, params={"epsilon": str(eps)}).maps
        assert want.abs().max() > 1e-5
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_rectifiers_are_paired_with_their_only_producer(mobile):
    _, model, _ = mobile
    from xplain.graph.lrp import RelevancePassRule

    first = xplain.first_weight_layer(model)
    with xplain.apply_rules(model, xplain.lrp_rules("zplus", skip=(first,))) as rules:
        paired = [n for n, r in rules.items() if isinstance(r, RelevancePassRule)]
    # expand→ReLU6, dw→ReLU6, add→ReLU, down→ReLU; not the stem's (the stem is skipped)
    assert len(paired) == 4


@pytest.mark.parametrize("kind", ["padded conv", "linear", "transposed", "grouped"])
def test_stacked_zbox_equals_three_separate_layers(kind):
    from onnx2torch.node_converters.pad import OnnxPadStatic

    torch.manual_seed(2)
    if kind == "padded conv":
        module = nn.Sequential(OnnxPadStatic([0, 1, 0, 1]), nn.Conv2d(3, 4, 3, stride=2))
        x = torch.randn(2, 3, 7, 7)
    elif kind == "linear":
        module, x = nn.Linear(6, 4), torch.randn(2, 6)
    elif kind == "transposed":
        module, x = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1), torch.randn(2, 3, 5, 5)
    else:
        module, x = nn.Conv2d(4, 4, 3, groups=2), torch.randn(2, 4, 6, 6)
    module.requires_grad_(False)
    with torch.no_grad():
        out = module(x)
    relevance = torch.rand_like(out)
    low = x.flatten(1).min(1).values.reshape(-1, *[1] * (x.dim() - 1)).expand_as(x)
    high = x.flatten(1).max(1).values.reshape(-1, *[1] * (x.dim() - 1)).expand_as(x)
    want = _zbox_separate(module, x, relevance, low, high, 1e-9)
    got = zbox_relevance(module, x, relevance, low, high)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        got.flatten(1).sum(1), relevance.flatten(1).sum(1), rtol=1e-4, atol=1e-5
    )


def test_folded_conv_and_pad_backward_under_is_grads_batched_match_autograd():
    """One convolution_backward over K·N images, the same numbers as K separate ones."""
    from onnx2torch.node_converters.pad import OnnxPadDynamic, OnnxPadStatic

    torch.manual_seed(4)
    cases = [
        (nn.Conv2d(6, 6, 3, padding=1, groups=6), torch.randn(2, 6, 9, 9), ()),
        (nn.Conv2d(6, 5, 1), torch.randn(2, 6, 9, 9), ()),
        (OnnxPadStatic([1, 0, 2, 1]), torch.randn(2, 6, 9, 9), ()),
        (OnnxPadDynamic(), torch.randn(2, 6, 9, 9), (torch.tensor([0, 0, 1, 0, 0, 0, 2, 1]),)),
    ]
    for module, x, rest in cases:
        module.requires_grad_(False)
        folded = FoldedConv(module) if isinstance(module, nn.Conv2d) else FoldedPad(module)
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            y = module(xg, *rest)
            yf = folded(xg, *rest)
            torch.testing.assert_close(yf, y, rtol=0, atol=0)
            grads = torch.randn(4, *y.shape)
            (want,) = torch.autograd.grad(y, xg, grads, is_grads_batched=True)
            (got,) = torch.autograd.grad(yf, xg, grads, is_grads_batched=True)
            (one,) = torch.autograd.grad(yf, xg, grads[1])
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(one, want[1], rtol=1e-6, atol=1e-6)


def test_tr_gbp_batched_over_classes_equals_one_copy_per_class(mobile):
    """The dynamic graph runs the K classes as one batched backward (folded convolutions and
    pads); the graph fixed at batch 1 runs one copy per class. The maps and shares agree."""
    _, dynamic, fixed = mobile
    x = dynamic.example_input(2, seed=3)
    targets = torch.tensor([1, 4])
    batched = xplain.explain(dynamic, x, targets, "tr-gbp", params={"topk": "3"})
    copies = xplain.explain(fixed, x, targets, "tr-gbp", params={"topk": "3"})
    assert batched.info["backward"] == "batched" and copies.info["backward"] == "copies"
    torch.testing.assert_close(batched.maps, copies.maps, rtol=1e-5, atol=1e-6)
    for a, b in zip(batched.sample_info, copies.sample_info):
        assert a["classes"] == b["classes"]
        for key in ("shares", "map_shares", "layer_totals"):
            assert a[key].keys() == b[key].keys()
            for name in a[key]:
                assert a[key][name] == pytest.approx(b[key][name], rel=1e-4, abs=1e-6)
