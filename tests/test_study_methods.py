"""``expected-gradients``, ``deeplift``, ``deeplift-shap``, ``grad-cam-plus-plus``, ``score-cam`` and
``attention`` against their reference libraries (Captum, pytorch-grad-cam) on the same converted
graph with the same inputs, baselines and random draws, and against identities
(summation-to-delta) and hand computations. Tolerance: max|ours − ref| / max|ref| ≤ 1e-4."""

from __future__ import annotations

import importlib.util
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xplain
from xplain.run.api import run_method

from .conftest import REPO, export_classic

TOL = 1e-4


def _parity_module():
    """bench/study_methods_parity.py: the reference-library calls the bench runs at full size."""
    spec = importlib.util.spec_from_file_location(
        "study_methods_parity", REPO / "bench" / "study_methods_parity.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PARITY = _parity_module()


def rel(ours, ref) -> float:
    ours, ref = (
        torch.as_tensor(ours, dtype=torch.float64),
        torch.as_tensor(ref, dtype=torch.float64),
    )
    return float((ours - ref).abs().max() / ref.abs().max())


def explain(model, name, x, targets, seed=0, **params):
    method = xplain.get_registry().method(name)
    values = xplain.validate_params(method.params, params, name)
    return run_method(model, method, x, torch.as_tensor(targets), values, seed=seed)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------------------- expected gradients
def captum_gradient_shap(model, x, targets, refset, n, stdevs, draws):
    """Captum's GradientShap with its random draws (baseline indices, α, noise) replaced by ours."""
    from captum.attr import GradientShap

    first, second, third = PARITY.captum_draws(*draws)
    with first, second, third:
        attr = GradientShap(model.graph).attribute(
            x, baselines=refset, n_samples=n, stdevs=stdevs, target=targets
        )
    return attr.sum(dim=1)


@pytest.mark.parametrize(
    "baselines, n, stdevs", [("batch", 4, 0.0), ("zeros", 3, 0.3), ("file", 6, 0.1)]
)
def test_expected_gradients_equals_captum_gradient_shap(tiny_model, tmp_path, baselines, n, stdevs):
    from xplain_builtins.methods.expected_gradients import expected_gradients_draws

    x = tiny_model.example_input(3, seed=1)
    targets = torch.tensor([0, 3, 1])
    if baselines == "batch":
        refset = x
    elif baselines == "zeros":
        refset = torch.zeros_like(x[:1])
    else:
        refset = torch.randn(5, *x.shape[1:], generator=torch.Generator().manual_seed(4))
        baselines = str(tmp_path / "refs.npy")
        np.save(baselines, refset.numpy())
    ours = explain(
        tiny_model,
        "expected-gradients",
        x,
        targets,
        seed=5,
        baselines=baselines,
        n_samples=n,
        stdevs=stdevs,
    ).maps
    draws = expected_gradients_draws(x, 5, n, stdevs, refset.shape[0])
    ref = captum_gradient_shap(tiny_model, x, targets, refset, n, stdevs, draws)
    assert rel(ours, ref) <= TOL


def test_expected_gradients_converges_to_integrated_gradients(tiny_model):
    """With one zero baseline and no noise, EG is a Monte-Carlo estimate of IG: many draws agree
    with IG to a few per cent (the estimator, not just its shape)."""
    x = tiny_model.example_input(1, seed=3)
    eg = explain(tiny_model, "expected-gradients", x, [2], n_samples=4000, internal_batch=512).maps
    ig = explain(tiny_model, "integrated-gradients", x, [2], steps=64).maps
    assert rel(eg, ig) < 0.1
    assert float(eg.sum()) == pytest.approx(float(ig.sum()), rel=0.05)


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "or an existing .npy file"),
        ("pickle", "pickled Python objects"),
        ("text", "no NumPy header"),
        ("shape", "of shape 2×3×8×8"),
        ("nan", "NaN"),
        ("dir", "not a regular file"),
    ],
)
def test_bad_baselines_file_is_one_line(tiny_model, tmp_path, content, problem):
    path = tmp_path / "refs.npy"
    if content == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif content == "shape":
        np.save(path, np.zeros((2, 3, 8, 8), np.float32))
    elif content == "nan":
        np.save(path, np.full((1, 3, 16, 16), np.nan, np.float32))
    elif content == "dir":
        path.mkdir()
    elif content == "text":
        path.write_text("x\n")
    for name in ("expected-gradients", "deeplift-shap"):
        with pytest.raises(xplain.InputDataError) as info:
            explain(tiny_model, name, tiny_model.example_input(1), [0], baselines=str(path))
        text = str(info.value)
        assert problem in text and str(path) in text and "\n" not in text
        assert info.value.exit_code == 5


# ----------------------------------------------------------------------------- deeplift
captum_deeplift = PARITY.captum_deeplift  # nn.ReLU6 added to Captum's rule table


def test_deeplift_equals_captum_on_relu_relu6_maxpool_network(tiny_model):
    x = tiny_model.example_input(2, seed=1)
    targets = torch.tensor([0, 3])
    ours = explain(tiny_model, "deeplift", x, targets)
    ref = captum_deeplift(tiny_model, x, targets, torch.zeros_like(x))
    assert rel(ours.maps, ref.sum(dim=1)) <= TOL
    for info, total in zip(ours.sample_info, ref.flatten(1).sum(dim=1)):  # summation-to-delta
        assert info["attribution_sum"] == pytest.approx(info["delta"], abs=1e-5)
        assert info["attribution_sum"] == pytest.approx(float(total), abs=1e-5)


class OverlapPool(nn.Module):
    """conv → ReLU → 3×3/2 max-pool (ResNet's stem pool: overlapping windows) → conv → ReLU →
    GAP → linear, plus a LeakyReLU: the case where Captum's pool rule loses summation-to-delta."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.b = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.LeakyReLU(0.1))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def overlap_model(tmp_path_factory):
    path = export_classic(
        OverlapPool().eval(), tmp_path_factory.mktemp("ov") / "m.onnx", (2, 3, 16, 16)
    )
    return xplain.load_model(path, device="cpu")


def test_deeplift_rescale_maxpool_sums_to_delta_with_overlapping_windows(overlap_model):
    """maxpool=rescale: Σ map = f(x) − f(x') exactly (overlapping windows accumulate); the
    default gradient rule equals Captum here (Captum's pool rule is lost behind the ReLU)."""
    x = overlap_model.example_input(2, seed=2)
    base = 0.3 * overlap_model.example_input(2, seed=9)
    targets = torch.tensor([1, 2])
    for b in range(2):
        grad, delta, swapped = xplain.deeplift_multipliers(
            overlap_model, x[b : b + 1], base[b : b + 1], targets[b : b + 1], maxpool="rescale"
        )
        assert swapped == 3
        assert float(((x[b] - base[b]) * grad[0]).sum()) == pytest.approx(float(delta), abs=1e-5)
    grad, _, _ = xplain.deeplift_multipliers(overlap_model, x, base, targets)
    ref = captum_deeplift(overlap_model, x, targets, base)
    assert rel((x - base) * grad, ref) <= TOL


def test_deeplift_shap_equals_captum(tiny_model, tmp_path):
    x = tiny_model.example_input(2, seed=6)
    targets = torch.tensor([1, 2])
    refs = 0.5 * torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "refs.npy", refs.numpy())
    ours = explain(tiny_model, "deeplift-shap", x, targets, baselines=str(tmp_path / "refs.npy"))
    ref = captum_deeplift(tiny_model, x, targets, refs, "DeepLiftShap")
    assert rel(ours.maps, ref.sum(dim=1)) <= TOL
    assert ours.info["reference_set_size"] == 3


def test_deeplift_refuses_models_without_rectifiers(tiny_transformer):
    for name in ("deeplift", "deeplift-shap"):
        method = xplain.get_registry().method(name)
        with pytest.raises(xplain.UsageError) as info:
            xplain.check_requirements(tiny_transformer, method)
        text = str(info.value)
        assert info.value.exit_code == 2 and "\n" not in text
        assert "needs rectifier activations" in text and "GELU" in text


# ----------------------------------------------------------------------------- CAM variants
def grad_cam_reference(cls, model, layer_name, x, targets, reshape=None):
    """pytorch-grad-cam's CAM before its min-max scaling, upsampled as xplain's grad-cam."""
    return PARITY.grad_cam_reference(cls, model, layer_name, x, targets, reshape)[0]


def _token_reshape(layout):
    def reshape(t):
        h, w = layout.grid
        return t[:, layout.prefix :, :].reshape(t.shape[0], h, w, -1).permute(0, 3, 1, 2)

    return reshape


@pytest.mark.parametrize(
    "name, cls", [("grad-cam-plus-plus", "GradCAMPlusPlus"), ("score-cam", "ScoreCAM")]
)
def test_cam_variants_equal_pytorch_grad_cam(tiny_model, name, cls):
    x = tiny_model.example_input(2, seed=4)
    targets = torch.tensor([3, 1])
    ours = (
        explain(tiny_model, name, x, targets, batch=3)
        if name == "score-cam"
        else explain(tiny_model, name, x, targets)
    )
    layer = tiny_model.default_feature_layer()
    assert ours.info["layer"] == layer.name
    ref = grad_cam_reference(cls, tiny_model, layer.name, x, targets)
    assert float(ref.abs().max()) > 0
    assert rel(ours.maps, ref) <= TOL


@pytest.mark.parametrize(
    "name, cls", [("grad-cam-plus-plus", "GradCAMPlusPlus"), ("score-cam", "ScoreCAM")]
)
def test_cam_variants_on_class_token_layout(tiny_transformer, name, cls):
    """The DeiT layer (tokens after the last block's first LayerNorm; class and distillation
    tokens dropped) is grad-cam's, and the map is pytorch-grad-cam's with the usual
    reshape_transform."""
    model = tiny_transformer
    x = model.example_input(1, seed=2)
    layer = model.default_feature_layer()
    assert layer.layout.kind == "tokens" and layer.layout.prefix == 2
    ours = explain(model, name, x, [4])
    assert ours.info["layer"] == explain(model, "grad-cam", x, [4]).info["layer"]
    ref = grad_cam_reference(cls, model, layer.name, x, [4], _token_reshape(layer.layout))
    assert rel(ours.maps, ref) <= TOL


def test_score_cam_forwards_go_through_infer(tiny_model):
    """Every masked forward is a Model.infer call (the run's forward-only engine), the batching
    never changes the map, and the count is K masks per image."""
    x = tiny_model.example_input(2, seed=8)
    calls = []
    real = type(tiny_model).infer

    def counting(self, batch):
        calls.append(batch.shape[0])
        return real(self, batch)

    with mock.patch.object(type(tiny_model), "infer", counting):
        one = explain(tiny_model, "score-cam", x, [0, 1], batch=5).maps
    channels = tiny_model.default_feature_layer().spatial_shape[0]
    assert sum(calls) == 2 * channels and max(calls) == 5
    assert torch.allclose(
        explain(tiny_model, "score-cam", x, [0, 1], batch=64).maps, one, atol=1e-6
    )


# ----------------------------------------------------------------------------- attention
def test_attention_is_the_last_blocks_class_token_row(tiny_transformer):
    """By hand: the last Softmax's probabilities (captured with a forward hook on the graph),
    mean over heads, row 0 without the two prefix columns, on the 4×4 patch grid, upsampled."""
    model = tiny_transformer
    x = model.example_input(2, seed=3)
    last = model.attention()[-1]
    seen = {}
    module = model.graph.get_submodule(str(model.node(last.node).target))
    handle = module.register_forward_hook(lambda m, i, o: seen.setdefault("p", o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    probs = seen["p"].reshape(2, -1, last.tokens, last.tokens)
    row = probs.mean(dim=1)[:, 0, 2:].reshape(2, 1, 4, 4)
    want = F.interpolate(row, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    got = explain(model, "attention", x, [0, 1])
    assert rel(got.maps, want) <= 1e-6
    assert got.info["prefix_tokens"] == 2
    assert torch.equal(explain(model, "attention", x, [3, 3]).maps, got.maps)  # class-agnostic


def test_attention_refuses_cnn(tiny_model):
    method = xplain.get_registry().method("attention")
    with pytest.raises(xplain.UsageError) as info:
        xplain.check_requirements(tiny_model, method)
    assert info.value.exit_code == 2 and "attention" in str(info.value)


def test_attention_on_windowed_swin_equals_hand_computation(tmp_path):
    """Swin-like shifted windows, no class token: the last block's head-mean window attention
    placed on the 8×8 grid (the model's own geometry), its mean row, upsampled."""
    from .test_transformers import _swin_full
    from .tiny_transformers import TinySwinLike

    module = TinySwinLike()
    model = xplain.load_model(export_classic(module, tmp_path / "swin.onnx", (1, 3, 32, 32)))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        module(x)
    row = _swin_full(module.attn[-1].detach(), len(module.attn) - 1).mean(dim=1)
    want = F.interpolate(row.reshape(2, 1, 8, 8), size=(32, 32), mode="bilinear")[:, 0]
    got = explain(model, "attention", x, [0, 1])
    assert got.info["windowed"] and got.info["prefix_tokens"] == 0
    assert rel(got.maps, want) <= 1e-5
