"""TR-GBP (issue 4): the bias ones-map term is exact, the centring is eq. 10, all classes go
through one forward and one backward, and the paper's predictability claims hold on shapes_cnn
(class sensitivity, cascading randomisation, weak borders of a fully random model)."""

from __future__ import annotations

import copy
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import xplain
from xplain_builtins.methods.tr_gbp import bias_terms, guided_terms, ones_map_gradient

from .conftest import SAMPLES, export_classic

IMAGES = SAMPLES / "images"


@pytest.fixture(scope="module")
def shapes():
    return xplain.load_model(SAMPLES / "shapes_cnn.onnx", device="cpu")


@pytest.fixture(scope="module")
def pristine():
    """A shapes_cnn that is only ever deep-copied: a Model caches its bias layers (bias values
    included) on first use, so a copy of a used model would keep the trained biases after its
    weights are redrawn."""
    return xplain.load_model(SAMPLES / "shapes_cnn.onnx", device="cpu")


def _image(stem):
    """The sample image in the model's `unit` preset (64×64 already) and its VOC boxes (0-based masks)."""
    array = np.asarray(Image.open(IMAGES / f"{stem}.png").convert("RGB"), dtype=np.float32) / 255
    boxes = {}
    for obj in ET.parse(IMAGES / f"{stem}.xml").findall("object"):
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (int(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        mask = torch.zeros(64, 64, dtype=torch.bool)
        mask[y0 - 1 : y1, x0 - 1 : x1] = True  # VOC: 1-based, inclusive
        boxes[obj.find("name").text] = mask
    return torch.from_numpy(array).permute(2, 0, 1)[None], boxes


def _explain(model, x, targets, **params):
    return xplain.explain(model, x, targets=targets, method="tr-gbp", params=params)


# ----------------------------------------------------------------------------- the bias term
def test_ones_map_gradient_hand_case():
    """A 3×3 conv with padding 1 and G·b = 1 everywhere: an interior pixel lies in 9 windows
    (9 × 1/9 = 1), an edge pixel in 6, a corner in 4 (section 4.2 (2))."""
    conv = nn.Conv2d(1, 1, 3, padding=1)
    got = ones_map_gradient(torch.ones(1, 1, 5, 5), conv, (5, 5), (1, 1))[0, 0]
    want = torch.ones(5, 5)
    want[0, :] = want[-1, :] = want[:, 0] = want[:, -1] = 6 / 9
    want[0, 0] = want[0, -1] = want[-1, 0] = want[-1, -1] = 4 / 9
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "kernel,stride,padding,size,dilation",
    [(3, 2, 1, 9, 1), (5, 2, 2, 8, 1), (4, 3, 0, 11, 1), (2, 1, 0, 6, 1), (3, 2, 2, 10, 2)],
)
def test_ones_map_gradient_is_the_transpose_of_the_window_mean(
    kernel, stride, padding, size, dilation
):
    """<ones_map_gradient(S), O> == <S, window-mean of O padded with ones> for any O: the
    adjoint identity, checked with autograd on the forward it claims to transpose."""
    conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding, dilation=dilation)
    gen = torch.Generator().manual_seed(kernel * 100 + size)
    ones = torch.ones(2, 1, size, size, requires_grad=True)
    field = F.conv2d(
        F.pad(ones, (padding,) * 4, value=1.0),
        torch.full((1, 1, kernel, kernel), 1 / kernel**2),
        stride=stride,
        dilation=dilation,
    )
    torch.testing.assert_close(field.detach(), torch.ones_like(field))  # the forward is unchanged
    weighted = torch.randn(field.shape, generator=gen)
    (want,) = torch.autograd.grad(field, ones, weighted)
    torch.testing.assert_close(
        ones_map_gradient(weighted, conv, (size, size), (padding, padding)), want
    )


class _PositiveNet(nn.Module):
    """conv+BN (any sign) → ReLU → conv stride 2 (positive) → ReLU → mean → linear (positive).

    Every gradient reaching a ReLU is ≥ 0, so the guided rule equals the plain one here."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.head = nn.Linear(5, 3)
        with torch.no_grad():
            self.conv2.weight.abs_()
            self.head.weight.abs_()
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.3, 0.3)
            self.conv1.bias.uniform_(0.2, 0.6)
            self.conv2.bias.uniform_(-0.4, 0.4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv1(x)))
        h = torch.relu(self.conv2(h))
        return self.head(h.mean(dim=(2, 3)))

    def with_ones(self, x, ones1, ones2):
        """The same network with each conv bias fed by an all-ones map (eq. 8): b_c/(3·3) on
        every position of the 3×3 window of a one-channel map padded with ones."""
        s = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        b1 = (
            self.conv1.bias - self.bn.running_mean
        ) * s + self.bn.bias  # BatchNorm's effective bias
        k1 = (b1 / 9).reshape(4, 1, 1, 1).expand(4, 1, 3, 3)
        k2 = (self.conv2.bias / 9).reshape(5, 1, 1, 1).expand(5, 1, 3, 3)
        h = F.conv2d(x, self.conv1.weight, padding=1) * s.reshape(1, 4, 1, 1)
        h = torch.relu(h + F.conv2d(F.pad(ones1, (1, 1, 1, 1), value=1.0), k1))
        h = F.conv2d(h, self.conv2.weight, stride=2, padding=1)
        h = torch.relu(h + F.conv2d(F.pad(ones2, (1, 1, 1, 1), value=1.0), k2, stride=2))
        return self.head(h.mean(dim=(2, 3)))


def test_bias_terms_match_finite_differences(tmp_path):
    """R̃ˡ of both convs (BatchNorm's effective bias, padding, stride 2) equals the central
    difference of the logit w.r.t. each pixel of the layer's ones-map, computed in float64 on an
    independent torch re-statement of the network."""
    net = _PositiveNet().eval()
    model = xplain.load_model(
        export_classic(net, tmp_path / "pos.onnx", (2, 3, 8, 8)), device="cpu"
    )
    terms = [t for t in bias_terms(model) if t.mode == "conv"]
    assert len(terms) == 2 and all(t.in_hw == (8, 8) for t in terms)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    target = 1
    guided = guided_terms(model, x, torch.tensor([target]), terms, rule="guided")
    plain = guided_terms(model, x, torch.tensor([target]), terms, rule="plain")
    for name in guided[1]:  # the premise: guided == plain on this network
        torch.testing.assert_close(guided[1][name], plain[1][name])

    ref = copy.deepcopy(net).double()
    xd = x.double()
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ref.with_ones(xd, ones, ones), ref(xd))
        h = 1e-4
        for which, term in enumerate(terms):  # graph order: conv1, conv2
            fd = torch.zeros(8, 8, dtype=torch.float64)
            for i in range(8):
                for j in range(8):
                    e = torch.zeros_like(ones)
                    e[0, 0, i, j] = h
                    args = [(ones + e, ones), (ones, ones + e)][which]
                    minus = [(ones - e, ones), (ones, ones - e)][which]
                    fd[i, j] = (
                        ref.with_ones(xd, *args)[0, target] - ref.with_ones(xd, *minus)[0, target]
                    ) / (2 * h)
            got = guided[1][term.name][0].double()
            assert fd.abs().max() > 1e-3  # the term is not trivially zero
            torch.testing.assert_close(got, fd, rtol=1e-4, atol=1e-5 * float(fd.abs().max()))
            assert abs(float(guided[2][term.name][0]) - float(fd.sum())) < 1e-4 * float(
                fd.abs().sum()
            )


# ----------------------------------------------------------------------------- identities
def test_ablations_reduce_to_guided_backprop(tiny_model):
    """bias=false, center=false is guided backprop; center=false adds exactly the bias maps."""
    x = tiny_model.example_input(2, seed=4)
    targets = torch.tensor([1, 3])
    gbp = xplain.explain(tiny_model, x, targets=targets, method="guided-backprop").maps
    torch.testing.assert_close(_explain(tiny_model, x, targets, bias=False, center=False).maps, gbp)
    terms = bias_terms(tiny_model)
    _, maps, totals = guided_terms(tiny_model, x, targets, terms)
    assert maps, "the tiny CNN has spatial bias layers"
    torch.testing.assert_close(
        _explain(tiny_model, x, targets, center=False, fc_bias="none").maps,
        gbp + sum(maps.values()),
        rtol=1e-5,
        atol=1e-6,
    )
    # eq. 9: a linear layer's ones-input is one value, psi(1x1 map) puts it on every pixel
    scalar = [t.name for t in terms if t.name not in maps]
    assert scalar, "the tiny CNN has a linear layer"
    fc = sum(totals[n] for n in scalar)[:, None, None]
    assert float(fc.abs().min()) > 1e-4  # the term is not trivially zero
    hw = x.shape[2] * x.shape[3]
    for mode, offset in (("upsample", fc), ("spread", fc / hw)):
        torch.testing.assert_close(
            _explain(tiny_model, x, targets, center=False, fc_bias=mode).maps,
            gbp + sum(maps.values()) + offset,
            rtol=1e-5,
            atol=1e-6,
        )
    assert (
        xplain.explain(tiny_model, x, targets=targets, method="tr-gbp").info["fc_bias"]
        == "upsample"
    )


def test_centring_is_the_top_k_mean():
    """digits_cnn has 10 classes: the maps of the top-5 sum to zero, and a target outside the
    top-5 is centred over the top-5 plus itself (eq. 10 with the target included)."""
    model = xplain.load_model(SAMPLES / "digits_cnn.onnx", device="cpu")
    x = model.example_input(1, seed=3).clamp(0, 1)
    order = model(x)[0].argsort(descending=True).tolist()
    top5, outside = order[:5], order[7]
    centred = _explain(model, x.repeat(5, 1, 1, 1), top5)
    assert centred.maps.abs().max() > 0
    torch.testing.assert_close(
        centred.maps.sum(dim=0),
        torch.zeros(28, 28),
        rtol=0,
        atol=1e-5 * float(centred.maps.abs().max()),
    )
    assert all(sorted(s["classes"]) == sorted(top5) for s in centred.sample_info)
    classes = top5 + [outside]
    raw = _explain(model, x.repeat(6, 1, 1, 1), classes, center=False).maps
    got = _explain(model, x, [outside])
    assert sorted(got.sample_info[0]["classes"]) == sorted(classes)
    torch.testing.assert_close(got.maps[0], raw[5] - raw.mean(dim=0), rtol=1e-4, atol=1e-6)


def _counting(monkeypatch, model):
    """Record (batch, grad enabled) of every model call and (batched?) of every autograd.grad call."""
    calls, grads = [], []
    real_call, real_grad = type(model).__call__, torch.autograd.grad

    def counting_call(self, inp):
        calls.append((inp.shape[0], torch.is_grad_enabled()))
        return real_call(self, inp)

    def counting_grad(*args, **kwargs):
        grads.append(bool(kwargs.get("is_grads_batched")))
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(type(model), "__call__", counting_call)
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    return calls, grads


def test_all_classes_in_one_forward_and_one_backward(shapes, monkeypatch):
    """Two images × all their top-4 targets (8 rows): one model call on the 2 distinct images
    and one autograd call, batched over the 4 classes; the maps equal explaining each row alone."""
    x = torch.cat([_image("shapes_square_cross")[0], _image("shapes_circle")[0]])
    rows = x.repeat_interleave(4, dim=0)
    targets = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    calls, grads = _counting(monkeypatch, shapes)
    got = _explain(shapes, rows, targets)
    assert calls == [(2, True)] and grads == [True]
    assert got.info["classes_per_pass"] == 8 and got.info["backward"] == "batched"
    monkeypatch.undo()
    alone = torch.cat(
        [_explain(shapes, rows[i : i + 1], targets[i : i + 1]).maps for i in range(8)]
    )
    torch.testing.assert_close(got.maps, alone, rtol=1e-4, atol=1e-5)


def test_fixed_batch_graph_uses_copies(tmp_path, tiny_model, monkeypatch):
    """A graph fixed at batch 1 runs K copies per image (one call per copy, one backward); targets
    outside the top-k add one copy each. The maps equal the batched path's on the dynamic twin."""
    from .conftest import tiny_cnn

    fixed = xplain.load_model(
        export_classic(tiny_cnn(), tmp_path / "fixed.onnx", (1, 3, 16, 16), dynamic=False)
    )
    x = tiny_model.example_input(2, seed=6)
    order = tiny_model(x).argsort(dim=1, descending=True)
    targets = torch.stack([order[0, 3], order[1, 0]])  # the first outside its top-2
    want = _explain(tiny_model, x, targets, topk=2)
    calls, grads = _counting(monkeypatch, fixed)
    got = _explain(fixed, x, targets, topk=2)
    assert calls == [(4, True), (1, True)] and grads == [
        False
    ]  # Model.__call__ then splits per sample
    assert (
        got.info["backward"] == "copies"
        and got.sample_info[0]["classes"] == want.sample_info[0]["classes"]
    )
    assert len(got.sample_info[0]["classes"]) == 3
    torch.testing.assert_close(got.maps, want.maps, rtol=1e-4, atol=1e-5)


def test_layers_parameter_and_shares(shapes):
    x, _ = _image("shapes_square_cross")
    full = _explain(shapes, x, [1])
    info = full.sample_info[0]
    convs = ["n00000_conv", "n00003_conv", "n00005_conv", "n00007_conv", "n00010_conv"]
    assert full.info["map_layers"] == convs + [
        "n00016_gemm"
    ]  # eq. 9: the linear bias as a uniform map
    assert full.info["scalar_layers"] == ["n00016_gemm"]
    assert abs(sum(info["shares"].values()) - 1) < 1e-4
    assert set(info["shares"]) == {"input", *full.info["map_layers"], "n00016_gemm"}
    assert abs(sum(info["map_shares"].values()) - 1) < 1e-4
    assert set(info["map_shares"]) == {"input", *full.info["map_layers"]}
    # the map is the sum of its parts: the input term's share is its L1 mass over the map's parts' mass
    gbp_part = _explain(shapes, x, [1], bias=False).maps[0]
    parts_mass = gbp_part.abs().sum() / info["map_shares"]["input"]
    assert full.maps[0].abs().sum() <= parts_mass * (1 + 1e-4)
    assert _explain(shapes, x, [1], fc_bias="none").info["map_layers"] == convs
    one = _explain(shapes, x, [1], layers="n00010_conv")
    assert one.info["map_layers"] == ["n00010_conv"]
    none = _explain(shapes, x, [1], bias=False)
    terms = bias_terms(shapes, "n00010_conv")
    _, maps, _ = guided_terms(shapes, torch.cat([x] * 4), torch.tensor([1, 3, 0, 2]), terms)
    extra = maps["n00010_conv"]
    torch.testing.assert_close(
        one.maps[0] - none.maps[0], extra[0] - extra.mean(dim=0), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(xplain.UsageError, match="unknown bias layer"):
        _explain(shapes, x, [1], layers="n00000_conv,nope")


# ----------------------------------------------------------------------------- predictability claims
def _pearson(a, b):
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def _spearman(a, b):
    rank = lambda t: t.flatten().argsort().argsort().float()  # noqa: E731
    return _pearson(rank(a), rank(b))


@pytest.mark.parametrize("stem", ["shapes_square_cross", "shapes_triangle_circle"])
def test_class_sensitivity_on_two_objects(shapes, stem):
    """Section 5.2.1: each class's positive TR-GBP mass lies mostly on its own object (measured:
    own/other box ratio 2.1–3.7), and the two classes' maps are anti-correlated (measured −0.61,
    −0.23), where plain guided backprop's maps of the two classes correlate (+0.29, +0.72).

    The positive-mass part holds without the linear layer's bias (fc_bias=none): eq. 9's uniform
    linear-bias term (the default) shifts the whole map, which leaves the correlations as they
    are but turns most pixels of one class positive (measured in docs/tr-gbp.md)."""
    x, boxes = _image(stem)
    names = list(boxes)
    classes = [shapes.labels.index(n) for n in names]
    tr = _explain(shapes, x.repeat(2, 1, 1, 1), classes, fc_bias="none").maps
    eq9 = _explain(shapes, x.repeat(2, 1, 1, 1), classes).maps
    assert _pearson(eq9[0], eq9[1]) == pytest.approx(_pearson(tr[0], tr[1]), abs=1e-4)
    gbp = xplain.explain(
        shapes, x.repeat(2, 1, 1, 1), targets=classes, method="guided-backprop"
    ).maps
    for i, name in enumerate(names):
        positive = tr[i].clamp(min=0)
        own, other = positive[boxes[name]].sum(), positive[boxes[names[1 - i]]].sum()
        assert own > 1.6 * other, (name, float(own), float(other))
    assert _pearson(tr[0], tr[1]) < 0
    assert _pearson(gbp[0], gbp[1]) > 0.2
    assert _pearson(gbp[0], gbp[1]) - _pearson(tr[0], tr[1]) > 0.6


_TOP_DOWN = [
    "n00016_gemm",
    "n00010_conv",
    "n00007_conv",
    "n00005_conv",
    "n00003_conv",
    "n00000_conv",
]


def _randomised(model, layers, seed):
    """A copy of the model whose named layers' weights and biases are redrawn from N(0, std²)
    of each tensor (Adebayo et al.'s cascading randomisation, from the top)."""
    assert "_bias_layers" not in vars(model), "randomise a model whose bias layers were never read"
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in layers:
            module = other.module(name)
            for p in (module.weight, module.bias):
                p.copy_(torch.randn(p.shape, generator=gen) * p.std())
    return other


def test_cascading_randomisation_changes_tr_gbp_not_gbp(shapes, pristine):
    """Section 5.2.2: with the top two layers randomised, the TR-GBP map's rank correlation with
    the trained model's map collapses (measured 0.01, −0.005) while guided backprop's stays high
    (0.74, 0.78)."""
    for stem in ("shapes_square_cross", "shapes_triangle_circle"):
        x, _ = _image(stem)
        target = [int(shapes(x).argmax())]
        rand = _randomised(pristine, _TOP_DOWN[:2], seed=0)
        tr = _spearman(_explain(rand, x, target).maps, _explain(shapes, x, target).maps)
        gbp = _spearman(
            xplain.explain(rand, x, targets=target, method="guided-backprop").maps,
            xplain.explain(shapes, x, targets=target, method="guided-backprop").maps,
        )
        assert tr < 0.3 and gbp > 0.6 and gbp - tr > 0.4, (stem, tr, gbp)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fully_random_model_has_weak_borders(pristine, seed):
    """Section 4.2 (2): border pixels take part in fewer convolutions, so with every layer
    randomised the map is weaker on the image border (mean |R| on the 1-pixel border / inside:
    measured 0.5–0.74 over these seeds and images)."""
    rand = _randomised(pristine, _TOP_DOWN, seed)
    border = torch.zeros(64, 64, dtype=torch.bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    for stem in ("shapes_square_cross", "shapes_circle"):
        x, _ = _image(stem)
        # the claim is about the convolutions: eq. 9's uniform linear-bias term has no border
        R = _explain(rand, x, [int(rand(x).argmax())], fc_bias="none").maps[0].abs()
        assert R[border].mean() < 0.85 * R[~border].mean(), (
            stem,
            float(R[border].mean()),
            float(R[~border].mean()),
        )


class _OnesConv(nn.Module):
    """A conv restated with its bias fed by a ones-map parameter (same forward): used to get the
    reference gradient with respect to the ones-map by plain autograd."""

    def __init__(self, weight, bias, stride, pads):
        super().__init__()
        self.weight, self.bias, self.stride, self.pads = (
            weight,
            bias,
            stride,
            pads,
        )  # pads: l, r, t, b
        self.ones = None

    def forward(self, x):
        out, kh, kw = self.weight.shape[0], *self.weight.shape[2:]
        y = F.conv2d(F.pad(x, self.pads), self.weight, stride=self.stride)
        kernel = (self.bias / (kh * kw)).reshape(out, 1, 1, 1).expand(out, 1, kh, kw)
        return y + F.conv2d(F.pad(self.ones, self.pads, value=1.0), kernel, stride=self.stride)


def test_asymmetric_padding_conv(tmp_path):
    """onnx2torch turns a Conv with asymmetric pads into Sequential(pad, conv); the ones-map
    gradient must use both paddings: compared with autograd on the restated conv."""
    from onnx import helper, numpy_helper

    from .onnx_factory import make_model, save, tensor_info

    g = np.random.default_rng(1)
    w = (g.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32)
    b = (g.standard_normal(4) * 0.5).astype(np.float32)
    fc_w = (g.standard_normal((3, 4)) * 0.5).astype(np.float32)
    fc_b = np.zeros(3, np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], pads=[0, 1, 1, 0], strides=[2, 2]
        ),  # top, left, bottom, right
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(a, n)
        for n, a in (("w", w), ("b", b), ("fc_w", fc_w), ("fc_b", fc_b))
    ]
    onnx_model = make_model(
        nodes, [tensor_info("x", ["N", 3, 9, 9])], [tensor_info("y", ["N", 3])], inits
    )
    model = xplain.load_model(save(onnx_model, tmp_path / "asym.onnx"), device="cpu")
    (term,) = [t for t in bias_terms(model) if t.mode == "conv"]
    assert term.in_hw == (9, 9) and term.pad_tl == (0, 1)
    x = torch.rand(1, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    _, maps, _ = guided_terms(model, x, torch.tensor([2]), [term], rule="plain")

    restated = _OnesConv(torch.from_numpy(w), torch.from_numpy(b), 2, (1, 0, 0, 1))
    restated.ones = torch.ones(1, 1, 9, 9, requires_grad=True)
    with model.swap_modules({term.node: restated}), torch.enable_grad():
        logits = model(x)
        torch.testing.assert_close(
            logits, xplain.load_model(tmp_path / "asym.onnx")(x), rtol=1e-5, atol=1e-5
        )
        (want,) = torch.autograd.grad(logits[0, 2], restated.ones)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(maps[term.name], want[:, 0], rtol=1e-5, atol=1e-6)


def test_falls_back_to_copies_when_the_backward_cannot_be_vmapped(tiny_model, monkeypatch):
    x = tiny_model.example_input(2, seed=8)
    targets = torch.tensor([0, 2])
    want = _explain(tiny_model, x, targets).maps
    real_grad = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented (simulated)")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    got = _explain(tiny_model, x, targets)
    assert got.info["backward"] == "copies"
    torch.testing.assert_close(got.maps, want, rtol=1e-4, atol=1e-5)


class _Unfolded(nn.Module):
    """Mean subtraction in the graph, conv+BN, a lone BN after a ReLU, valid (unpadded) convs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.register_buffer("mean", torch.tensor([0.2, 0.5, 0.3]).reshape(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2)
        self.head = nn.Linear(5, 3)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        h = self.bn2(torch.relu(self.bn1(self.conv1(x - self.mean))))
        h = torch.relu(self.conv2(h))
        return self.head(h.mean(dim=(2, 3)))


def test_every_bias_kind_and_completeness(tmp_path):
    """With the plain rule on a ReLU network whose convs do not pad, the input term x·∇f plus the
    totals of all bias terms (constant add, conv+BN, lone BN, conv, linear) is the logit (the
    FullGrad identity), and the constant add's map is Σ_c ∂f/∂x_c · (−mean_c)."""
    net = _Unfolded().eval()
    path = tmp_path / "unfolded.onnx"
    with (
        warnings.catch_warnings()
    ):  # PRESERVE keeps BatchNormalization nodes instead of folding them
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(2, 3, 11, 11),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            training=torch.onnx.TrainingMode.PRESERVE,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    model = xplain.load_model(path, device="cpu")
    terms = bias_terms(model)
    modes = sorted(t.mode for t in terms)
    assert modes == ["conv", "conv", "elementwise", "elementwise", "scalar"], [
        (t.name, t.mode) for t in terms
    ]
    x = torch.rand(3, 3, 11, 11, generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([0, 1, 2])
    with torch.no_grad():
        logits = model(x).gather(1, classes[:, None])[:, 0]
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(xg).gather(1, classes[:, None]).sum(), xg)
    _, maps, totals = guided_terms(model, x, classes, terms, rule="plain")
    complete = (grad * x).flatten(1).sum(1) + sum(totals.values())
    torch.testing.assert_close(complete, logits, rtol=1e-4, atol=1e-4)
    (sub,) = [t for t in terms if t.mode == "elementwise" and t.in_hw == (11, 11)]
    torch.testing.assert_close(maps[sub.name], (grad * -net.mean).sum(dim=1), rtol=1e-4, atol=1e-6)
