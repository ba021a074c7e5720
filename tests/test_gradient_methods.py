"""gradient, input-x-gradient, integrated-gradients, smoothgrad and occlusion.

Agreement with Captum on ReLU networks converted from ONNX (Captum runs on the converted
``model.graph``), plus independent facts: finite differences, IG completeness, exact occlusion
values on a linear model, and the noise smoothgrad draws.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import xplain
from xplain_builtins.methods import gradients as G
from xplain_builtins.methods import occlusion as O

from .conftest import export_classic


def _relu_cnn():
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 5),
    ).eval()


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory):
    path = export_classic(_relu_cnn(), tmp_path_factory.mktemp("gm") / "relu.onnx", (2, 3, 16, 16))
    return xplain.load_model(path, engine="torch")  # Captum runs the torch graph


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    """logit0 = sum of the 3×3 single-channel image's pixels + 0.5; logit1 = another weighting."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(9, 2)).eval()
    with torch.no_grad():
        net[1].weight[0] = 1.0
        net[1].weight[1] = torch.arange(9.0) - 4
        net[1].bias.copy_(torch.tensor([0.5, -1.0]))
    path = export_classic(net, tmp_path_factory.mktemp("lin") / "linear.onnx", (2, 1, 3, 3))
    return xplain.load_model(path, engine="torch")  # Captum runs the torch graph


@pytest.fixture(params=["tiny", "relu"])
def model(request):
    return request.getfixturevalue("tiny_model" if request.param == "tiny" else "relu_model")


def _targets(model, n):
    return torch.arange(n) % model.num_classes


def _close(ours, ref, rtol=1e-5, scale=1e-6):
    """rtol 1e-5, and an atol of ``scale`` × the reference map's largest magnitude."""
    ref = ref.detach()
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=scale * float(ref.abs().max()))


# ----------------------------------------------------------------------------- gradient family
def test_gradient_family_agrees_with_captum(model):
    from captum.attr import InputXGradient, Saliency

    x = model.example_input(3, seed=11)
    xr = x.clone().requires_grad_(True)  # Captum's input
    t = _targets(model, 3) + 1
    grad = Saliency(model.graph).attribute(xr, target=t, abs=False)
    _close(xplain.explain(model, x, t, "gradient").maps, grad.sum(dim=1))
    _close(xplain.explain(model, x, t, "gradient", {"reduce": "mean"}).maps, grad.mean(dim=1))
    idx = grad.abs().argmax(dim=1, keepdim=True)
    _close(
        xplain.explain(model, x, t, "gradient", {"reduce": "max-abs"}).maps,
        grad.gather(1, idx)[:, 0],
    )
    sal = Saliency(model.graph).attribute(xr, target=t, abs=True).amax(dim=1)
    _close(xplain.explain(model, x, t, "saliency").maps, sal)
    ixg = InputXGradient(model.graph).attribute(xr, target=t)
    _close(xplain.explain(model, x, t, "input-x-gradient").maps, ixg.sum(dim=1))
    assert not torch.allclose(grad.sum(dim=1), ixg.sum(dim=1))


def test_gradient_and_input_x_gradient_match_finite_differences(model):
    """The channel-summed gradient at pixel (i, j) is the derivative along "raise all channels of
    (i, j)"; input-x-gradient the derivative along "scale pixel (i, j)". Central differences on a
    float64 copy of the graph."""
    x = model.example_input(1, seed=5)
    target = 1
    grad_map = xplain.explain(model, x, [target], "gradient").maps[0]
    ixg_map = xplain.explain(model, x, [target], "input-x-gradient").maps[0]
    g64 = copy.deepcopy(model.graph).double()
    x64 = x.double()
    h = 1e-5
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(16, (10, 2), generator=gen).tolist()
    scale_g, scale_x = float(grad_map.abs().max()), float(ixg_map.abs().max())
    with torch.no_grad():
        for i, j in pixels:
            e = torch.zeros_like(x64)
            e[0, :, i, j] = h
            fd = (g64(x64 + e)[0, target] - g64(x64 - e)[0, target]) / (2 * h)
            assert abs(float(fd) - float(grad_map[i, j])) <= 1e-4 * scale_g, (i, j)
            e = torch.zeros_like(x64)
            e[0, :, i, j] = h * x64[0, :, i, j]
            fd = (g64(x64 + e)[0, target] - g64(x64 - e)[0, target]) / (2 * h)
            assert abs(float(fd) - float(ixg_map[i, j])) <= 1e-4 * scale_x, (i, j)


# ----------------------------------------------------------------------------- integrated gradients
@pytest.mark.parametrize("rule", G._IG_RULES)
def test_integrated_gradients_agrees_with_captum(model, rule):
    from captum.attr import IntegratedGradients

    x = model.example_input(3, seed=12)
    t = _targets(model, 3)
    ours = xplain.explain(model, x, t, "integrated-gradients", {"steps": 24, "method": rule}).maps
    ref = (
        IntegratedGradients(model.graph)
        .attribute(
            x.clone(),
            baselines=torch.zeros_like(x),
            target=t,
            n_steps=24,
            method="riemann_trapezoid" if rule == "trapezoid" else rule,
        )
        .sum(dim=1)
    )
    if rule == "trapezoid":  # Captum's trapezoid weights sum to 1 − 1/n; the rule's to 1
        ref = ref * 24 / 23
    _close(ours, ref, scale=1e-5)


@pytest.mark.parametrize("kind", ["blur", "uniform"])
def test_integrated_gradients_other_baselines_agree_with_captum(relu_model, kind):
    from captum.attr import IntegratedGradients

    x = relu_model.example_input(2, seed=13)
    t = torch.tensor([4, 2])
    baseline = G.integrated_gradients_baseline(x, kind, blur_sigma=2.0, seed=5)
    if kind == "blur":  # gaussian_blur is checked against a dense 2-D Gaussian below
        torch.testing.assert_close(baseline, G.gaussian_blur(x, 2.0), rtol=0, atol=0)
    ours = xplain.explain(
        relu_model, x, t, "integrated-gradients", {"baseline": kind, "blur_sigma": 2.0}, seed=5
    ).maps
    ref = (
        IntegratedGradients(relu_model.graph)
        .attribute(x.clone(), baselines=baseline, target=t)
        .sum(dim=1)
    )
    _close(ours, ref, scale=1e-5)  # defaults: 50 steps, gausslegendre, as Captum's
    if kind == "uniform":
        lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
        assert (baseline.amin(dim=(1, 2, 3)) >= lo).all() and (
            baseline.amax(dim=(1, 2, 3)) <= hi
        ).all()
        assert (baseline.amax(dim=(1, 2, 3)) - baseline.amin(dim=(1, 2, 3)) > 0.9 * (hi - lo)).all()
        other = G.integrated_gradients_baseline(x, kind, seed=6)
        assert not torch.allclose(baseline, other)
        torch.testing.assert_close(
            G.integrated_gradients_baseline(x[1:], kind, seed=5), baseline[1:]
        )


def test_gaussian_blur_is_a_normalised_gaussian():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 12, 10, generator=gen)
    sigma = 1.7
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k2 = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2))
    k2 = k2 / k2.sum()  # dense 2-D kernel, float64
    padded = torch.nn.functional.pad(x.double(), (radius,) * 4, mode="replicate")
    dense = torch.nn.functional.conv2d(
        padded.reshape(6, 1, *padded.shape[2:]), k2[None, None]
    ).reshape(x.shape)
    torch.testing.assert_close(G.gaussian_blur(x, sigma), dense.float(), rtol=1e-5, atol=1e-6)
    flat = torch.full((1, 3, 5, 7), 0.3)
    torch.testing.assert_close(G.gaussian_blur(flat, 5.0), flat)  # kernel wider than the image
    torch.testing.assert_close(G.gaussian_blur(x, 0.0), x)


def test_integrated_gradients_completeness(model):
    """Σ IG = f(x) − f(baseline), up to a quadrature error that shrinks with the steps."""
    x = model.example_input(2, seed=14)
    t = torch.tensor([1, 2])
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, t[:, None])[:, 0]

    def gap(steps, rule):
        maps = xplain.explain(
            model,
            x,
            t,
            "integrated-gradients",
            {"steps": steps, "method": rule, "internal_batch": 512},
        ).maps
        return (maps.sum(dim=(1, 2)) - delta).abs(), maps.abs().sum(dim=(1, 2))

    for rule in ("gausslegendre", "trapezoid", "riemann_right"):
        (coarse, _), (fine, mass) = gap(16, rule), gap(256, rule)
        # the integrand is piecewise constant (ReLU, max-pool), so the error falls roughly like 1/steps
        assert (fine <= 2e-3 * mass).all(), (rule, fine, mass)
        assert fine.sum() <= 0.25 * coarse.sum(), (rule, fine, coarse)


def test_integrated_gradients_exact_on_a_linear_model(linear_model):
    x = linear_model.example_input(2, seed=3)
    w = linear_model.graph(torch.eye(9).view(9, 1, 3, 3)) - linear_model.graph(
        torch.zeros(1, 1, 3, 3)
    )
    for target in (0, 1):
        maps = xplain.explain(
            linear_model,
            x,
            [target] * 2,
            "integrated-gradients",
            {"steps": 2, "method": "riemann_right"},
        ).maps
        torch.testing.assert_close(maps, x[:, 0] * w[:, target].view(3, 3), rtol=1e-5, atol=1e-6)


def test_integrated_gradients_internal_batch_changes_nothing_but_the_passes(tiny_model):
    x = tiny_model.example_input(3, seed=15)
    t = torch.tensor([0, 3, 1])
    seen = []
    handle = tiny_model.graph.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[0])
    )
    try:
        small = xplain.explain(tiny_model, x, t, "integrated-gradients", {"internal_batch": 7}).maps
        small_passes, seen[:] = list(seen), []
        large = xplain.explain(
            tiny_model, x, t, "integrated-gradients", {"internal_batch": 64}
        ).maps
        large_passes = list(seen)
    finally:
        handle.remove()
    _close(small, large)
    assert small_passes == [6] * 25  # 2 interpolation points × 3 images per pass, 50 steps
    assert large_passes == [63, 63, 24]  # 21 + 21 + 8 points: exactly 50 gradients per image


# ----------------------------------------------------------------------------- smoothgrad
@pytest.mark.parametrize("square", [False, True])
def test_smoothgrad_agrees_with_captum_noise_tunnel_under_the_same_noise(
    model, monkeypatch, square
):
    from captum.attr import NoiseTunnel, Saliency

    x = model.example_input(2, seed=16)
    x[1] *= 2.5  # another value range, so another σ
    t = _targets(model, 2) + 2
    samples, seed = 12, 4
    ours = xplain.explain(
        model, x, t, "smoothgrad", {"samples": samples, "square": square}, seed=seed
    ).maps
    real_normal = torch.normal
    for b in range(2):
        xb = x[b : b + 1]
        sigma = 0.15 * float(xb.max() - xb.min())
        noise = G.smoothgrad_noise(xb, seed=seed, samples=samples)[0]

        def same_noise(mean, std, *args, _noise=noise, _sigma=sigma, **kwargs):
            assert mean == 0 and std.shape == _noise.shape
            torch.testing.assert_close(std, torch.full_like(std, _sigma))
            return _noise.clone()

        monkeypatch.setattr(torch, "normal", same_noise)
        ref = NoiseTunnel(Saliency(model.graph)).attribute(
            xb.clone(),
            nt_type="smoothgrad_sq" if square else "smoothgrad",
            nt_samples=samples,
            stdevs=sigma,
            target=t[b : b + 1],
            abs=False,
        )
        monkeypatch.setattr(torch, "normal", real_normal)
        _close(ours[b : b + 1], ref.sum(dim=1))
    if square:
        assert (ours >= 0).all()


def test_smoothgrad_is_seeded_and_internal_batch_free(tiny_model):
    x = tiny_model.example_input(2, seed=17)
    t = torch.tensor([0, 2])
    params = {"samples": 10}
    a = xplain.explain(tiny_model, x, t, "smoothgrad", params, seed=1).maps
    again = xplain.explain(tiny_model, x, t, "smoothgrad", params, seed=1).maps
    other = xplain.explain(tiny_model, x, t, "smoothgrad", params, seed=2).maps
    chunked = xplain.explain(
        tiny_model, x, t, "smoothgrad", {**params, "internal_batch": 3}, seed=1
    ).maps
    torch.testing.assert_close(a, again, rtol=0, atol=0)
    assert not torch.allclose(a, other, rtol=1e-2, atol=1e-3 * float(a.abs().max()))
    _close(a, chunked)
    plain = xplain.explain(tiny_model, x, t, "gradient").maps
    quiet = xplain.explain(tiny_model, x, t, "smoothgrad", {**params, "noise": 0.0}, seed=1).maps
    _close(quiet, plain)  # σ = 0: the plain gradient
    assert not torch.allclose(a, plain, rtol=1e-2, atol=1e-3 * float(plain.abs().max()))


def test_smoothgrad_noise_is_gaussian_with_a_sigma_of_15_percent_of_the_range():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    x[1] = x[1] * 4 + 1
    noise = G.smoothgrad_noise(x, seed=3, samples=400)
    assert noise.shape == (2, 400, 3, 16, 16)
    for b in range(2):
        sigma = 0.15 * float(x[b].max() - x[b].min())
        assert abs(float(noise[b].std()) / sigma - 1) < 0.01
        assert abs(float(noise[b].mean())) < 0.01 * sigma
    torch.testing.assert_close(
        G.smoothgrad_noise(x[1:], seed=3, samples=400)[0], noise[1]
    )  # batch-free
    torch.testing.assert_close(G.smoothgrad_noise(x, seed=3, samples=400, noise=0.3), 2 * noise)
    assert not torch.allclose(G.smoothgrad_noise(x, seed=4, samples=400), noise)


# ----------------------------------------------------------------------------- occlusion
@pytest.mark.parametrize(
    "patch, stride, baseline, batch",
    [(0, 0, 0.0, 256), (8, 4, 0.0, 64), (5, 3, 0.5, 7), (4, 4, -1.0, 64)],
)
def test_occlusion_agrees_with_captum(model, patch, stride, baseline, batch):
    from captum.attr import Occlusion

    x = model.example_input(2, seed=18)
    t = _targets(model, 2) + 1
    result = xplain.explain(
        model,
        x,
        t,
        "occlusion",
        {"patch": patch, "stride": stride, "baseline": baseline, "batch": batch},
        engine="torch",  # Captum runs the torch graph
    )
    p, s = result.info["patch"], result.info["stride"]
    assert (p, s) == ((patch, stride) if patch else (2, 1))  # auto on 16×16: patch 2, stride 1
    ref = Occlusion(model.graph).attribute(
        x.clone(),
        sliding_window_shapes=(3, p, p),
        strides=(3, s, s),
        baselines=baseline,
        target=t,
        perturbations_per_eval=128,
    )
    torch.testing.assert_close(
        ref, ref[:, :1].expand_as(ref)
    )  # Captum's value is the same in every channel
    _close(result.maps, ref[:, 0])


def test_occlusion_hand_computed_on_a_linear_model(linear_model):
    """logit0 = Σ pixels + 0.5, so occluding a window drops it by exactly the window's Σ (x − baseline)."""
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]

    def occ(**params):
        return xplain.explain(linear_model, x, [0], "occlusion", params).maps[0]

    # 2×2 windows, stride 1: sums 12 (top-left), 16, 24, 28; each pixel averages those covering it
    expected = torch.tensor([[12.0, 14.0, 16.0], [18.0, 20.0, 22.0], [24.0, 26.0, 28.0]])
    torch.testing.assert_close(occ(patch=2, stride=1), expected)
    torch.testing.assert_close(occ(patch=2, stride=1, baseline=1.0), expected - 4)
    # stride 2: windows at 0 and 2, the second cut off at the border (Captum's positions)
    torch.testing.assert_close(
        occ(patch=2, stride=2),
        torch.tensor([[12.0, 12.0, 9.0], [12.0, 12.0, 9.0], [15.0, 15.0, 9.0]]),
    )
    torch.testing.assert_close(occ(patch=1, stride=1), x[0, 0])
    assert O.occlusion_windows(3, 3, 2, 2) == [(0, 0), (0, 2), (2, 0), (2, 2)]


def test_occlusion_refuses_impossible_windows(tiny_model):
    x = tiny_model.example_input(1)
    with pytest.raises(xplain.UsageError, match="stride"):
        xplain.explain(tiny_model, x, [0], "occlusion", {"patch": 4, "stride": 5})
    with pytest.raises(xplain.UsageError, match="larger than the 16×16"):
        xplain.explain(tiny_model, x, [0], "occlusion", {"patch": 17})


def test_reduce_channels_hand_case():
    attr = torch.tensor([[[[1.0]], [[-3.0]], [[2.0]]]])  # B=1, C=3, 1×1
    assert xplain.reduce_channels(attr, "sum").item() == 0.0
    assert xplain.reduce_channels(attr, "mean").item() == 0.0
    assert (
        xplain.reduce_channels(attr, "max-abs").item() == -3.0
    )  # signed value of the largest magnitude
    with pytest.raises(ValueError, match="reduce must be one of"):
        xplain.reduce_channels(attr, "median")
