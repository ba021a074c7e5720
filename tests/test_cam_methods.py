"""``grad-cam`` against Captum, ``fullgrad`` against its completeness identity and a hand computation.

Every model is built here, exported to ONNX with BatchNorm kept as its own node (so the loader
must fold it), loaded with :func:`xplain.load_model` and explained through the public API.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
from torch import nn

import xplain
from xplain.cli.app import main

from .test_architectures import Block

UNFOLDED = {
    "preserve": {"training": torch.onnx.TrainingMode.PRESERVE},
    "no_folding": {"do_constant_folding": False},
}


def export(module: nn.Module, path, shape, dynamic: bool = True, **kwargs):
    module.eval()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(1, *shape),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=axes,
            **kwargs,
        )
    return str(path)


def randomize_bn(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=gen) * 0.5)
    return module


class ResNetLike(nn.Module):
    """conv(+bias)→BN→ReLU→maxpool stem, identity block, strided block with projection, GAP, fc."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.block1, self.block2 = Block(8, 8), Block(8, 16, stride=2)
        self.fc = nn.Linear(16, 5)
        randomize_bn(self, seed=1)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class PlainCNN(nn.Module):
    """VGG-style: conv→ReLU→maxpool twice, flatten, fc (16×16 input)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class HandNet(nn.Module):
    """conv(+bias)→BN→ReLU→maxpool, conv(+bias)→ReLU, flatten, fc: 1×6×6 in, 3 classes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv1, self.bn1 = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 3)
        randomize_bn(self, seed=3)

    def forward(self, x, keep=None):
        z1 = self.conv1(x)
        z2 = self.bn1(z1)
        z3 = self.conv2(F.max_pool2d(torch.relu(z2), 2))
        out = self.fc(torch.flatten(torch.relu(z3), 1))
        if keep is not None:
            for t in (z1, z2, z3, out):
                t.retain_grad()
            keep.extend([z1, z2, z3, out])
        return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam")
    cache = {}

    def get(key):
        if key not in cache:
            build, shape, kwargs = {
                "resnet_preserve": (ResNetLike, (3, 16, 16), UNFOLDED["preserve"]),
                "resnet_no_folding": (ResNetLike, (3, 16, 16), UNFOLDED["no_folding"]),
                "plain": (PlainCNN, (3, 16, 16), {}),
                "hand_fixed_batch": (
                    HandNet,
                    (1, 6, 6),
                    {"dynamic": False, **UNFOLDED["preserve"]},
                ),
            }[key]
            module = build().eval()
            path = export(module, root / f"{key}.onnx", shape, **kwargs)
            cache[key] = (xplain.load_model(path, device="cpu"), module)
        return cache[key]

    return get


def relative_close(got, ref, rtol=1e-5):
    got, ref = got.detach().double(), ref.detach().double()
    assert got.shape == ref.shape
    diff = float((got - ref).abs().max())
    scale = float(ref.abs().max())
    assert scale > 0 and diff <= rtol * scale, f"max |diff| {diff:.3g} > {rtol} * {scale:.3g}"
    return diff / scale


def is_add(model, node) -> bool:
    if node.op != "call_module":
        return False
    module = model.graph.get_submodule(node.target)
    return isinstance(module, OnnxBinaryMathOperation) and module.math_op_function is torch.add


# ============================================================================= grad-cam
def captum_gradcam(model, layer: str, x, targets, relu: bool, align_corners: bool = False):
    """Captum's LayerGradCam at the module whose output is the feature map, then upsampled as
    LayerAttribution.interpolate(..., "bilinear") does (align_corners=False)."""
    from captum.attr import LayerAttribution, LayerGradCam

    module = model.graph.get_submodule(model.node(layer).target)
    with torch.enable_grad():
        attr = LayerGradCam(model.graph, module).attribute(
            x.clone(), target=targets, relu_attributions=relu
        )
    attr = attr.detach()
    size = (model.spec.height, model.spec.width)
    if align_corners:
        return F.interpolate(attr, size=size, mode="bilinear", align_corners=True)[:, 0]
    return LayerAttribution.interpolate(attr, size, "bilinear")[:, 0]


GRADCAM_CASES = {
    # key: (model, layer picker over the ReLU names in graph order, relu)
    "resnet_default": ("resnet_preserve", None, True),
    "resnet_default_signed": ("resnet_preserve", None, False),
    "resnet_block1_out": ("resnet_preserve", lambda relus, m: relus[2], True),  # 8×8: 2× upsampling
    "resnet_branch_conv": (
        "resnet_preserve",
        lambda relus, m: m.node(relus[3]).args[0].args[0].name,
        False,
    ),
    "plain_default": ("plain", None, True),
    "plain_first_relu": ("plain", lambda relus, m: relus[0], True),
}


@pytest.mark.parametrize("case", sorted(GRADCAM_CASES))
def test_gradcam_agrees_with_captum(models, case):
    key, pick, relu = GRADCAM_CASES[case]
    model, _ = models(key)
    relus = [a.name for a in model.activations()]
    layer = pick(relus, model) if pick else model.default_feature_layer().name
    params = {"relu": relu} if pick is None else {"layer": layer, "relu": relu}
    x = model.example_input(3, seed=4)
    targets = torch.tensor([0, 3, 1])
    got = xplain.explain(model, x, targets, "grad-cam", params=params)
    assert got.info["layer"] == layer
    ref = captum_gradcam(model, layer, x, targets, relu)
    rel = relative_close(got.maps, ref, 1e-5)
    assert rel < 1e-5
    if relu:
        assert float(got.maps.min()) >= 0
    else:  # a signed map really has both signs here (the ReLU is not silently applied)
        assert float(got.maps.min()) < 0 < float(got.maps.max())
    # the upsampling choice matters (and is checked): align_corners=True would disagree
    if model.shape(layer)[2] != model.spec.height:
        corners = captum_gradcam(model, layer, x, targets, relu, align_corners=True)
        assert float((got.maps - corners).abs().max()) > 1e-3 * float(ref.abs().max())


def test_gradcam_default_layer_is_post_add_relu(models):
    model, _ = models("resnet_preserve")
    got = xplain.explain(model, model.example_input(2), [0, 1], "grad-cam")
    layer = got.info["layer"]
    assert isinstance(model.module(layer), nn.ReLU)
    assert is_add(model, model.node(layer).args[0])  # the ReLU after the last residual add
    assert got.info["layer_shape"] == [16, 4, 4]
    # the last post-add ReLU of the graph, not the one of the first block
    post_add = [a.name for a in model.activations() if is_add(model, model.node(a.name).args[0])]
    assert post_add[-1] == layer and len(post_add) == 2


def test_gradcam_layer_errors(models):
    model, _ = models("resnet_preserve")
    x = model.example_input(1)
    with pytest.raises(xplain.UsageError, match="no layer named 'nope'"):
        xplain.explain(model, x, [0], "grad-cam", params={"layer": "nope"})
    fc = [
        n.name
        for n in model.graph.graph.nodes
        if n.op == "call_module" and isinstance(model.graph.get_submodule(n.target), nn.Linear)
    ][-1]
    with pytest.raises(xplain.UsageError, match="not a spatial feature map"):
        xplain.explain(model, x, [0], "grad-cam", params={"layer": fc})


def test_gradcam_cli_layer_param(tiny_cnn_path, rgb_image, tmp_path, capsys):
    base = [
        "explain",
        str(tiny_cnn_path),
        str(rgb_image),
        "--method",
        "grad-cam",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*base, "--param", "layer=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "Traceback" not in err[0]
    model = xplain.load_model(tiny_cnn_path, device="cpu")
    layer = model.activations()[0].name  # the stem ReLU: a valid non-default layer
    assert main([*base, "--param", f"layer={layer}", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["info"]["layer"] == layer


def test_gradcam_tiny_default_is_post_add_rectifier(tiny_model):
    got = xplain.explain(tiny_model, tiny_model.example_input(1), [2], "grad-cam")
    layer = got.info["layer"]
    assert isinstance(tiny_model.module(layer), nn.ReLU6)
    assert is_add(tiny_model, tiny_model.node(layer).args[0])


# ============================================================================= fullgrad
@pytest.mark.parametrize("how", sorted(UNFOLDED))
def test_fullgrad_completeness_relu_bn_residual(models, how):
    """input term + all bias terms == target logit (ReLU net, BN unfolded, residual adds)."""
    model, module = models(f"resnet_{how}")
    bn_nodes = [
        b.node for b in model.bias_layers() if isinstance(model.module(b.node), nn.BatchNorm2d)
    ]
    assert len(bn_nodes) == 6  # stem (folded with its biased conv) + 2 per block + projection
    x = model.example_input(4, seed=6)
    with torch.no_grad():
        logits = module(x)
    targets = torch.tensor([0, 4, 2, int(logits[3].argmax())])
    got = xplain.explain(model, x, targets, "fullgrad")
    info = got.info
    f = logits.gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(info["logit"]), f, rtol=1e-5, atol=1e-5)
    bias_sum = torch.tensor([sum(v[i] for v in info["bias_terms"].values()) for i in range(4)])
    total = torch.tensor(info["input_term"]) + bias_sum
    tol = 1e-4 * f.abs().clamp(min=1.0)
    assert ((total - f).abs() <= tol).all(), (total, f)
    assert (torch.tensor(info["completeness_gap"]) <= tol).all()
    # the biases matter: the input term alone, or dropping any one bias term, breaks the identity
    assert ((torch.tensor(info["input_term"]) - f).abs() > 100 * tol).any()
    for name, values in info["bias_terms"].items():
        assert ((total - torch.tensor(values) - f).abs() > tol).any(), f"{name} contributes nothing"
    # the stem conv has its own bias before BatchNorm: two terms (conv, BN shift), as the reference
    stem = model.bias_layers()[0]
    assert stem.layer != stem.node and {stem.layer, stem.node} <= set(info["bias_terms"])
    assert info["scalar_bias_terms"] == [model.bias_layers()[-1].node]  # the fc bias: no map
    assert len(info["spatial_bias_terms"]) == len(info["bias_terms"]) - 1
    assert float(got.maps.min()) >= 0


def _bilinear_matrix(out: int, inp: int) -> np.ndarray:
    """Interpolation weights of bilinear resizing with align_corners=True, written out."""
    m = np.zeros((out, inp))
    for i in range(out):
        src = i * (inp - 1) / (out - 1) if out > 1 else 0.0
        lo = int(np.floor(src))
        hi = min(lo + 1, inp - 1)
        w = src - lo
        m[i, lo] += 1 - w
        m[i, hi] += w
    return m


def _hand_postprocess(term: np.ndarray, size: int) -> np.ndarray:
    """|t|, (t - min) / (max + 1e-6) over C×H×W, bilinear (align_corners=True), sum over C."""
    a = np.abs(term)
    a = a - a.min()
    a = a / (a.max() + 1e-6)
    m_rows, m_cols = _bilinear_matrix(size, a.shape[1]), _bilinear_matrix(size, a.shape[2])
    return sum(m_rows @ a[c] @ m_cols.T for c in range(a.shape[0]))


def test_fullgrad_matches_hand_computation(models):
    """The reference's decomposition (hooks on conv1, BN1, conv2, fc of the source module) and
    post-processing written out by hand; the ONNX graph is fixed at batch 1, so xplain's batch
    of two runs sample by sample."""
    model, module = models("hand_fixed_batch")
    assert model.spec.fixed_batch
    x = model.example_input(2, seed=8)
    targets = [2, 0]
    got = xplain.explain(model, x, targets, "fullgrad")
    assert got.maps.shape == (2, 6, 6)
    bn = module.bn1
    bn_shift = (
        bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    ).detach()
    for i, t in enumerate(targets):
        xi = x[i : i + 1].clone().requires_grad_(True)
        keep = []
        out = module(xi, keep)
        out[0, t].backward()
        z1, z2, z3, _ = keep
        terms = [
            (z1.grad * module.conv1.bias.detach()[None, :, None, None])[0],
            (z2.grad * bn_shift[None, :, None, None])[0],
            (z3.grad * module.conv2.bias.detach()[None, :, None, None])[0],
        ]
        fc_term = float(module.fc.bias.detach()[t])
        input_term = (xi.grad * xi)[0].detach()
        # completeness of the hand decomposition and of xplain's
        logit = float(out[0, t].detach())
        hand_total = float(input_term.sum()) + sum(float(v.sum()) for v in terms) + fc_term
        assert abs(hand_total - logit) <= 1e-4 * max(1.0, abs(logit))
        assert got.info["completeness_gap"][i] <= 1e-4 * max(1.0, abs(logit))
        assert abs(got.info["input_term"][i] - float(input_term.sum())) <= 1e-5 * max(
            1.0, abs(logit)
        )
        ours_terms = sorted(v[i] for v in got.info["bias_terms"].values())
        hand_terms = sorted([float(v.sum()) for v in terms] + [fc_term])
        np.testing.assert_allclose(ours_terms, hand_terms, rtol=1e-4, atol=1e-6)
        # the map
        a = np.abs(input_term.numpy().astype(np.float64))
        a = a - a.min()
        expected = (a / (a.max() + 1e-6)).sum(axis=0)
        for term in terms:
            expected = expected + _hand_postprocess(term.detach().numpy().astype(np.float64), 6)
        np.testing.assert_allclose(
            got.maps[i].numpy(), expected, rtol=1e-5, atol=1e-5 * expected.max()
        )
