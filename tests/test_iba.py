"""``iba`` and ``input-iba``: formulas against independent computations, statistics, the graph split,
localisation on the shapes model (known object boxes), the input bottleneck's β limits,
parameter randomisation, determinism and fitted state round trips."""

from __future__ import annotations

import math
import warnings
import xml.etree.ElementTree as ET

import pytest
import torch

import xplain
from xplain.data.images import Preprocess, load_image
from xplain.plugins.registry import get_registry
from xplain.run.api import sample_generators
from xplain.run.fitting import fit_method
from xplain_builtins.methods.iba import iba, iba_input

from .conftest import SAMPLES

SHAPES = SAMPLES / "shapes_cnn.onnx"
IMAGES = SAMPLES / "images"
#: reduced InputIBA work for tests (paper: 20 epochs over 200 targets); stage 1 and 3 at paper defaults
FAST_GAN = {"gan_epochs": 2, "gan_dataset": 64}


@pytest.fixture(scope="module")
def shapes():
    return xplain.load_model(SHAPES, device="cpu")


def _image(model, name):
    pre = Preprocess.from_options((3, 64, 64), sidecar=model.sidecar)
    return torch.from_numpy(pre(load_image(IMAGES / f"{name}.png"))[0])[None]


def _box_mask(name, folder=IMAGES):
    """The first object's VOC box (inclusive pixel coordinates) as a 64×64 boolean mask."""
    root = ET.parse(folder / f"{name}.xml").getroot()
    box = root.find("object").find("bndbox")
    x0, y0, x1, y1 = (int(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
    mask = torch.zeros(64, 64)
    mask[y0 : y1 + 1, x0 : x1 + 1] = 1
    return mask.bool()


def _density_ratio(heat, mask):
    """Mean map value inside the box over the mean outside it (1 = no localisation)."""
    heat = heat.clamp_min(0)
    return float(heat[mask].mean() / heat[~mask].mean())


def _mass_inside(heat, mask):
    """Share of the map's positive mass inside the box ("most of the mass" = more than 0.5)."""
    heat = heat.clamp_min(0)
    return float(heat[mask].sum() / heat.sum())


def _quiet_explain(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xplain.explain(*args, **kwargs)


# ----------------------------------------------------------------------------- formulas
def test_iba_capacity_matches_hand_computed_gaussian_kl():
    # KL[N(m1, s1²) || N(0, 1)] = ½(s1² + m1² − 1) − log s1, with m1 = λ(r−μ)/σ, s1 = 1−λ
    r = torch.tensor([2.0, -1.0, 0.5])
    mean = torch.tensor([1.0, 0.0, 0.5])
    std = torch.tensor([2.0, 0.5, 1.0])
    lam = torch.tensor([0.5, 0.9, 0.2])
    expected = []
    for ri, mi, si, li in zip(r.tolist(), mean.tolist(), std.tolist(), lam.tolist()):
        m1, s1 = li * (ri - mi) / si, 1 - li
        expected.append(0.5 * (s1**2 + m1**2 - 1) - math.log(s1))
    # first element by hand: m1 = 0.25, s1 = 0.5 → ½(0.25 + 0.0625 − 1) + ln 2 = 0.3494...
    assert expected[0] == pytest.approx(0.5 * (0.25 + 0.0625 - 1) + math.log(2))
    torch.testing.assert_close(iba.iba_capacity(r, mean, std, lam), torch.tensor(expected))
    # λ = 0: nothing passes, no information
    assert float(iba.iba_capacity(r, mean, std, torch.zeros(3)).abs().max()) < 1e-7


def _numerical_kl(m1, s1, m2, s2):
    """∫ p log(p/q) for two 1-D Gaussians by quadrature on a fine grid."""
    grid = torch.linspace(m1 - 12 * s1, m1 + 12 * s1, 200001, dtype=torch.float64)
    logp = -0.5 * ((grid - m1) / s1) ** 2 - math.log(s1 * math.sqrt(2 * math.pi))
    logq = -0.5 * ((grid - m2) / s2) ** 2 - math.log(s2 * math.sqrt(2 * math.pi))
    return float(torch.trapezoid(logp.exp() * (logp - logq), grid))


@pytest.mark.parametrize(
    "x,mu,sigma,lam,prior",
    [
        (1.5, 0.2, 0.7, 0.6, 0.3),
        (-0.4, 0.5, 1.3, 0.95, 0.8),
        (0.0, 0.0, 1.0, 0.3, 0.0),
        (2.0, -1.0, 0.5, 0.1, 0.99),
    ],
)
def test_proposition3_matches_numerical_kl(x, mu, sigma, lam, prior):
    # Remark 2: P(Z_I|I) = N(Λx + (1−Λ)μ, (1−Λ)²σ²)
    # Remark 1: P(Z_I) = N(λ_GΛx + (1−λ_GΛ)μ, (1−λ_GΛ)²σ²)
    numeric = _numerical_kl(
        lam * x + (1 - lam) * mu,
        (1 - lam) * sigma,
        prior * lam * x + (1 - prior * lam) * mu,
        (1 - prior * lam) * sigma,
    )
    closed = iba.input_kl(
        *(torch.tensor([v], dtype=torch.float64) for v in (x, mu, sigma, lam, prior))
    )
    assert float(closed) == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_proposition3_limits():
    x, mu, sigma = torch.tensor([1.3, -0.2]), torch.tensor([0.1, 0.4]), torch.tensor([0.8, 1.1])
    lam = torch.tensor([0.7, 0.4])
    # λ_G = 1: the prior already passes everything the mask passes → no information
    assert float(iba.input_kl(x, mu, sigma, lam, torch.ones(2)).abs().max()) < 1e-6
    # λ_G = 0: the prior is N(μ, σ²) → IBA's capacity with r̃ = (x − μ)/σ
    torch.testing.assert_close(
        iba.input_kl(x, mu, sigma, lam, torch.zeros(2)), iba.iba_capacity(x, mu, sigma, lam)
    )


def test_welford_matches_batch_statistics():
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(37, 3, 4, generator=gen) * 3 + 1
    data[data < 0.5] = 0
    acc = iba.Welford()
    for chunk in data.split(10):
        acc.update(chunk)
    out = acc.result()
    torch.testing.assert_close(out["mean"], data.mean(0))
    torch.testing.assert_close(out["std"], data.std(0, unbiased=True))
    torch.testing.assert_close(out["active_fraction"], (data != 0).float().mean(0))


def test_gaussian_smoothing_keeps_constants_and_total():
    t = torch.full((1, 2, 6, 6), 0.3)
    torch.testing.assert_close(iba.gaussian_smooth(t, 1.0), t)
    delta = torch.zeros(1, 1, 9, 9)
    delta[0, 0, 4, 4] = 1
    blurred = iba.gaussian_smooth(delta, 1.0)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-6)  # kernel 5×5 fits inside: mass kept
    assert float(blurred[0, 0, 4, 4]) == pytest.approx(max(blurred.flatten().tolist()))


# ----------------------------------------------------------------------------- graph split, critic
@pytest.mark.parametrize("path", [SHAPES, SAMPLES / "shapes_cnn.dynamo.onnx"])
def test_split_prefix_then_suffix_is_the_model(path):
    model = xplain.load_model(path, device="cpu", verify=False)
    x = model.example_input(3, seed=4)
    for layer in model.feature_layers():
        split = model.split_at(layer.name)
        with torch.no_grad():
            values = split.prefix(x)
            torch.testing.assert_close(split.suffix(values[0], values[1:]), model(x))
            assert values[0].shape[1:] == layer.shape


def test_grouped_critic_scores_each_image_with_its_own_critic():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 5, 4, 8, 8, generator=gen)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    kw = {"device": x.device, "dtype": x.dtype}
    both = iba_input.GroupedCritic(2, 4, 8, 8, sample_generators(x, 0), **kw)(feats)
    for i in range(2):
        one = iba_input.GroupedCritic(1, 4, 8, 8, sample_generators(x[i : i + 1], 0), **kw)(
            feats[i : i + 1]
        )
        torch.testing.assert_close(both[i : i + 1], one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_critic_constant_slope_gives_leaky_relus_numbers_and_penalty_gradients(
    monkeypatch, dtype, batch_norm
):
    """The critic's LeakyReLU is ``h`` times a constant slope, so the gradient penalty's double
    backward no longer sends autograd's zero second derivative back through the critic (the
    speed-up of docs/input-iba.md, "Speed"). Scores, the critic step's parameter gradients with
    the penalty, and the generator step's gradient are bit-identical to ``F.leaky_relu``'s."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=dtype)
    real = torch.randn(2, 6, 4, 8, 8, generator=gen, dtype=dtype)
    fake = torch.randn(2, 6, 4, 8, 8, generator=gen, dtype=dtype).requires_grad_(True)
    kw = {"device": x.device, "dtype": dtype, "batch_norm": batch_norm}

    def grads():
        gens = sample_generators(x, 0)
        critic = iba_input.GroupedCritic(2, 4, 8, 8, gens, **kw)
        d = (critic(fake.detach()).mean(1) - critic(real).mean(1)).sum()
        d = d + 10 * iba_input._gradient_penalty(critic, real, fake.detach(), gens)
        out = list(torch.autograd.grad(d, critic.params))
        out += torch.autograd.grad(-critic(fake).mean(1).sum(), fake)
        return [*out, critic(real).detach()]

    new = grads()
    monkeypatch.setattr(iba_input, "_leaky_relu", lambda h: F.leaky_relu(h, 0.2))
    old = grads()
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert torch.equal(a, b)
    assert any(float(g.abs().max()) > 0 for g in new[:-2])


# ----------------------------------------------------------------------------- shapes model
@pytest.mark.parametrize("name,target", [("shapes_circle", 0), ("shapes_triangle", 2)])
def test_iba_localises_the_object(shapes, name, target):
    x = _image(shapes, name)
    a = _quiet_explain(shapes, x, targets=[target], method="iba")
    assert "not fitted" in a.info["stats"]
    heat = a.maps[0]
    assert float(heat.min()) >= 0
    # the map's total is the bottleneck's information in bits (area scaling)
    assert float(heat.sum()) == pytest.approx(a.sample_info[0]["total_bits"], rel=1e-3)
    assert _density_ratio(heat, _box_mask(name)) > 2.0  # measured: circle 2.47, triangle 2.93


@pytest.fixture(scope="module")
def shapes_train_stats(shapes, tmp_path_factory):
    """``iba`` statistics fitted on 500 training-like images (the first 500 of the seeded
    training set of ``sample_models/make_samples.py``; generated here, never shipped)."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    make_samples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_samples)
    images, _ = make_samples.make_shapes_set(make_samples.SEED + 10, 500, p_two=0.5)
    data = tmp_path_factory.mktemp("shapes_train")
    for i, img in enumerate(images):
        Image.fromarray(img, "RGB").save(data / f"train_{i:03d}.png")
    state = tmp_path_factory.mktemp("state")
    fit_method(
        shapes, get_registry().method("iba"), data, params={}, state_dir=state, batch_size=100
    )
    return state


def _one_object_eval_images(model):
    """The 20 one-object images of ``shapes_eval`` with their class index and box mask."""
    import csv

    root = SAMPLES / "shapes_eval"
    pre = Preprocess.from_options((3, 64, 64), sidecar=model.sidecar)
    classes = (SAMPLES / "shapes.labels.txt").read_text().split()
    xs, targets, masks = [], [], []
    with open(root / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            xml = root / row["boxes"]
            if len(ET.parse(xml).getroot().findall("object")) != 1:
                continue
            xs.append(torch.from_numpy(pre(load_image(root / row["path"]))[0]))
            targets.append(classes.index(row["label"]))
            masks.append(_box_mask(xml.stem, xml.parent))
    return torch.stack(xs), torch.tensor(targets), masks


def test_iba_with_fitted_statistics_and_converged_steps_puts_most_mass_in_the_box(
    shapes, shapes_train_stats
):
    """The issue's claim "most of the mass inside the object's box" for `iba` holds on shapes_cnn
    with data-set statistics once the optimisation has converged (steps=60). At the paper's 10
    steps the mask has not left its uniform descent yet (docs/input-iba.md): in-box share 0.16."""
    xs, targets, masks = _one_object_eval_images(shapes)
    assert len(masks) == 20
    x = torch.cat([_image(shapes, "shapes_circle"), _image(shapes, "shapes_triangle"), xs])
    targets = torch.cat([torch.tensor([0, 2]), targets])
    masks = [_box_mask("shapes_circle"), _box_mask("shapes_triangle")] + masks
    shapes.state_dir = shapes_train_stats
    try:
        a = xplain.explain(shapes, x, targets=targets, method="iba", params={"steps": 60}, seed=0)
    finally:
        shapes.state_dir = None
    assert a.info["stats"] == "fitted (500 images)"
    inside = [_mass_inside(a.maps[i], m) for i, m in enumerate(masks)]
    # measured with seeds 0, 1, 2: circle 0.63, 0.63, 0.63; triangle 0.41–0.42 (box area 0.06)
    assert inside[0] > 0.5
    assert inside[1] > 0.3
    # the 20 one-object shapes_eval images: mean 0.56 (each seed), 14 of 20 above 0.5, the lowest 0.25
    assert sum(inside[2:]) / 20 > 0.5
    assert sum(v > 0.5 for v in inside[2:]) >= 12
    assert min(inside[2:]) > 0.15
    # density inside vs outside the box: circle 12.6–12.9, triangle 11.0–11.6 (fallback, 10 steps: 2.5 / 2.9)
    assert _density_ratio(a.maps[0], masks[0]) > 6 and _density_ratio(a.maps[1], masks[1]) > 6


def test_input_iba_localises_the_circle(shapes):
    x = _image(shapes, "shapes_circle")
    a = _quiet_explain(shapes, x, targets=[0], method="input-iba", params=FAST_GAN)
    heat = a.maps[0]
    assert float(heat.min()) >= 0 and float(heat.max()) <= 1
    mask = _box_mask("shapes_circle")
    # measured 5.4, 3.6, 7.5 (seeds 0, 1, 2); the triangle is not localised by input-iba on this
    # model (0.5–0.6): noise with the image's own statistics is a triangle to it (docs/input-iba.md)
    assert _density_ratio(heat, mask) > 2.5
    assert set(a.info["stage_seconds"]) == {"feature", "gan", "input"}
    assert a.extras["feature_map"].shape == a.extras["gan_mask"].shape == (1, 64, 64)
    feature_only = _quiet_explain(
        shapes, x, targets=[0], method="input-iba", params={"return": "feature"}
    )
    torch.testing.assert_close(feature_only.maps, a.extras["feature_map"])


def test_input_iba_puts_most_of_the_circle_mask_in_the_box_with_a_converged_stage_1(shapes):
    """With 30 stage-1 steps (paper: 10) the stage-1 map, and so the λ_G prior, concentrates on the
    circle, and stage 3 keeps it: most of the input mask lies inside the box."""
    x = _image(shapes, "shapes_circle")
    mask = _box_mask("shapes_circle")
    heat = _quiet_explain(
        shapes, x, targets=[0], method="input-iba", params={**FAST_GAN, "steps": 30}
    ).maps[0]
    # measured: 0.76, 0.71, 0.78 (seeds 0, 1, 2); at the paper's 10 steps 0.42, 0.32, 0.50; box area 0.12
    assert _mass_inside(heat, mask) > 0.5


@pytest.mark.parametrize("beta,low,high", [(0.0, 0.95, 1.0), (1000.0, 0.0, 0.05)])
def test_input_bottleneck_beta_limits(shapes, beta, low, high):
    x = _image(shapes, "shapes_circle")
    prior = torch.full_like(x, 0.5)
    mask, _, _ = iba_input.input_bottleneck(
        shapes,
        x,
        torch.tensor([0]),
        prior,
        torch.zeros(1, 3, 1, 1),
        torch.ones(1, 3, 1, 1),
        sample_generators(x, 0),
        beta=beta,
        steps=60,
        lr=1.0,
        copies=4,
        initial_alpha=5.0,
        sigma=1.0,
    )
    assert low <= float(mask.mean()) <= high


def test_input_iba_is_sensitive_to_cascading_randomisation(shapes):
    """Section 4.3: randomising the weights from the top down moves the map away from the original."""
    x = _image(shapes, "shapes_circle")
    params = {**FAST_GAN, "input_steps": 30}
    original = _quiet_explain(
        shapes, x, targets=[0], method="input-iba", params=params, seed=0
    ).maps[0]
    rerun = _quiet_explain(shapes, x, targets=[0], method="input-iba", params=params, seed=1).maps[
        0
    ]
    model = xplain.load_model(SHAPES, device="cpu", verify=False)
    layers = [
        m for m in model.graph.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ][::-1]
    gen = torch.Generator().manual_seed(0)

    def corr(a, b):  # on 8×8 blocks: pixel-level masks are noisy from run to run, the layout is not
        a, b = (torch.nn.functional.avg_pool2d(t[None, None], 8).flatten() for t in (a, b))
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    similarity = []
    for layer in layers[:2]:  # the linear head, then the last convolution
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * layer.weight.std())
        randomised = _quiet_explain(
            model, x, targets=[0], method="input-iba", params=params, seed=0
        ).maps[0]
        similarity.append(corr(original, randomised))
    same = corr(original, rerun)  # measured: 0.81 (seed 0 vs 1); after two layers: -0.55
    assert same > 0.6
    assert similarity[-1] < 0.2


# ----------------------------------------------------------------------------- determinism, fitted state
def test_iba_deterministic_under_seed(shapes):
    x = torch.cat([_image(shapes, "shapes_circle"), _image(shapes, "shapes_triangle")])
    a = _quiet_explain(shapes, x, method="iba", seed=3).maps
    b = _quiet_explain(shapes, x, method="iba", seed=3).maps
    c = _quiet_explain(shapes, x, method="iba", seed=4).maps
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_fitted_statistics_saved_and_reloaded_give_identical_maps(shapes, tmp_path, recwarn):
    method = get_registry().method("iba")
    data = SAMPLES / "shapes_eval" / "images"
    fit_method(shapes, method, data, params={}, state_dir=tmp_path, batch_size=16)
    saved, meta = xplain.load_state(shapes.digest, "iba", root=tmp_path)
    assert meta["layer"] == shapes.default_feature_layer().name and meta["n"] == 40
    # the statistics are those of the bottleneck layer over the data (forward stopped there)
    pre = Preprocess.from_options((3, 64, 64), sidecar=shapes.sidecar)
    xs = torch.stack([torch.from_numpy(pre(load_image(p))[0]) for p in sorted(data.glob("*.png"))])
    with shapes.tap([meta["layer"]], gradients=False) as tap, torch.no_grad():
        shapes(xs)
    feats = tap.activations[meta["layer"]]
    torch.testing.assert_close(saved["mean"], feats.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(saved["std"], feats.std(0), rtol=1e-4, atol=1e-5)

    x = torch.cat([_image(shapes, "shapes_circle"), _image(shapes, "shapes_triangle")])
    targets = torch.tensor([0, 2])
    # in memory, straight from the fit (no file) …
    split = shapes.split_at(meta["layer"])
    active = (saved["active_fraction"] > 0.01).float().expand(2, *saved["mean"].shape)
    cap, *_ = iba.feature_bottleneck(
        split,
        x,
        targets,
        saved["mean"].expand(2, -1, -1, -1),
        saved["std"].clamp_min(0.01).expand(2, -1, -1, -1),
        active,
        sample_generators(x, 5),
        beta=10.0,
        steps=10,
        lr=1.0,
        copies=10,
        initial_alpha=5.0,
        sigma=1.0,
    )
    direct = iba.saliency_bits(cap, (64, 64))
    # … and through the saved file
    shapes.state_dir = tmp_path
    try:
        recwarn.clear()
        a = xplain.explain(shapes, x, targets=targets, method="iba", seed=5)
        b = xplain.explain(shapes, x, targets=targets, method="iba", seed=5)
    finally:
        shapes.state_dir = None
    assert not [w for w in recwarn if "no fitted statistics" in str(w.message)]
    assert a.info["stats"] == "fitted (40 images)"
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=0)
    torch.testing.assert_close(a.maps, direct, rtol=0, atol=0)
    # another layer than the fitted one: not used, the fallback says so
    shapes.state_dir = tmp_path
    try:
        with pytest.warns(UserWarning, match="no fitted statistics"):
            c = xplain.explain(
                shapes, x, targets=targets, method="iba", params={"layer": "n00009_relu"}, seed=5
            )
    finally:
        shapes.state_dir = None
    assert "n00013_clip" in c.info["stats_note"]


def test_fallback_warns_and_records(shapes):
    x = _image(shapes, "shapes_circle")
    with pytest.warns(UserWarning, match="xplain fit iba"):
        a = xplain.explain(shapes, x, method="input-iba", params={"return": "feature"})
    assert "not fitted" in a.info["stats"]


def test_unknown_layer_is_a_usage_error(shapes):
    with pytest.raises(xplain.UsageError):
        xplain.explain(
            shapes, _image(shapes, "shapes_circle"), method="iba", params={"layer": "nope"}
        )


@pytest.mark.parametrize(
    "method,params",
    [("iba", {}), ("input-iba", {"gan_epochs": 1, "gan_dataset": 8, "input_steps": 5})],
)
def test_graph_fixed_at_batch_one_gives_the_same_maps(tmp_path, tiny_model, method, params):
    """A batch-1 graph runs the split prefix/suffix row by row; the maps must not change."""
    from .conftest import export_classic, tiny_cnn

    fixed = xplain.load_model(
        export_classic(tiny_cnn(), tmp_path / "fixed.onnx", (1, 3, 16, 16), dynamic=False)
    )
    assert fixed.spec.fixed_batch
    x = tiny_model.example_input(2, seed=3)
    targets = torch.tensor([1, 2])
    a = _quiet_explain(tiny_model, x, targets=targets, method=method, params=params, seed=2).maps
    b = _quiet_explain(fixed, x, targets=targets, method=method, params=params, seed=2).maps
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fit_and_gan_stage_stop_at_the_bottleneck(shapes, tmp_path):
    """Layers after the bottleneck never run while fitting statistics or training the GAN."""
    shapes.feature_layers()  # shape propagation (runs the whole model once) before counting
    head = [m for m in shapes.graph.modules() if isinstance(m, torch.nn.Linear)][-1]
    batches = []
    handle = head.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        fit_method(
            shapes,
            get_registry().method("iba"),
            SAMPLES / "shapes_eval" / "images",
            params={},
            state_dir=tmp_path,
            batch_size=20,
        )
        assert batches == []
        x = _image(shapes, "shapes_circle")
        _quiet_explain(
            shapes,
            x,
            targets=[0],
            method="input-iba",
            params={**FAST_GAN, "gan_batch": 7, "return": "gan"},
        )
        assert batches == [10] * 10  # only stage 1's 10 steps × 10 noise copies reach the head
    finally:
        handle.remove()


def test_cli_fit_then_explain_records_stats_stages_and_extras(tmp_path, capsys):
    import json

    import numpy as np

    from xplain.cli.app import main

    state = tmp_path / "state"
    assert (
        main(
            [
                "fit",
                "iba",
                str(SHAPES),
                str(SAMPLES / "shapes_eval" / "images"),
                "--state-dir",
                str(state),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "explain",
                str(SHAPES),
                str(IMAGES / "shapes_circle.png"),
                "--method",
                "input-iba",
                "--state-dir",
                str(state),
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "out"),
                "--json",
                "--param",
                "gan_epochs=1",
                "--param",
                "gan_dataset=32",
                "--param",
                "input_steps=5",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)[0]
    assert record["info"]["stats"] == "fitted (40 images)"
    assert record["info"]["input_noise"] == "fitted per-channel mean/std"
    assert set(record["info"]["stage_seconds"]) == {"feature", "gan", "input"}
    assert record["info"]["stage1_bits"] > 0
    feature = np.load(record["files"]["feature_map"])
    assert feature.shape == (64, 64) and feature.min() >= 0
    assert np.load(record["files"]["gan_mask"]).shape == (64, 64)


def test_gan_target_samples_follow_the_chosen_distribution():
    gen_x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    gens = sample_generators(gen_x, 0)
    r = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(3))
    mean, std = torch.full_like(r, 0.7), torch.full_like(r, 2.0)
    active = torch.ones_like(r)
    base = {"gan_dataset": 400, "gan_subset": 400}
    idx = torch.arange(400).expand(2, 400)
    # paper: Z* = λR + (1−λ)ε — λ = 1 gives R, λ = 0 gives ε ~ N(μ, σ²)
    keep = iba_input._target_sampler(
        r, torch.ones_like(r), None, mean, std, active, gens, {**base, "gan_target": "paper"}
    )(idx)
    torch.testing.assert_close(keep, r[:, None].expand_as(keep))
    noise = iba_input._target_sampler(
        r, torch.zeros_like(r), None, mean, std, active, gens, {**base, "gan_target": "paper"}
    )(idx)
    assert float(noise.mean()) == pytest.approx(0.7, abs=0.05)
    assert float(noise.std()) == pytest.approx(2.0, rel=0.05)
    # reference: C⊙R + (1−C)⊙(s·N(0,1) + m), one (s, m) per sub-data set, s ~ U(0,5), m ~ U(−2,2)
    ref = iba_input._target_sampler(
        r, None, torch.zeros_like(r), mean, std, active, gens, {**base, "gan_target": "reference"}
    )(idx)
    for i in range(2):
        assert -2 <= float(ref[i].mean()) <= 2 and 0 < float(ref[i].std()) <= 5.2
    same = iba_input._target_sampler(
        r, None, torch.ones_like(r), mean, std, active, gens, {**base, "gan_target": "reference"}
    )(idx)
    torch.testing.assert_close(same, r[:, None].expand_as(same))


def test_sanity_reestimates_fitted_statistics_and_marks_stateful_methods(shapes, tmp_path):
    """Cascading randomisation must not reuse state fitted on the trained model: iba with fitted
    statistics re-estimates them on every randomised model (and on the trained one for the
    reference), so it scores exactly as without any fit; a method that needs its state is
    reported as not comparable (NaN, with the stale-state score beside it)."""
    from xplain.run.api import run_method

    registry = get_registry()
    method = registry.method("iba")
    metric = registry.metric("sanity")
    fit_method(
        shapes,
        method,
        SAMPLES / "shapes_eval" / "images",
        params={},
        state_dir=tmp_path / "fit",
        batch_size=20,
    )
    x = _image(shapes, "shapes_circle")
    t = torch.tensor([0])
    mparams = xplain.validate_params(method.params, {}, "iba")

    def sanity(state_dir, m):
        shapes.state_dir = state_dir
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = run_method(shapes, m, x, t, mparams, 0)
                return a, metric.compute(
                    shapes,
                    x,
                    t,
                    a,
                    params={"layers": 2},
                    seed=0,
                    method=m,
                    explain=lambda xx, tt: run_method(shapes, m, xx, tt, mparams, 0),
                )
        finally:
            shapes.state_dir = None

    fitted_map, fitted = sanity(tmp_path / "fit", method)
    plain_map, plain = sanity(tmp_path / "empty", method)
    assert fitted_map.info["stats"].startswith("fitted") and not torch.equal(
        fitted_map.maps, plain_map.maps
    )
    assert float(fitted["sanity-comparable"][0]) == 1.0
    torch.testing.assert_close(fitted["sanity"], plain["sanity"], rtol=0, atol=0)
    torch.testing.assert_close(
        fitted["sanity-spearman-curve"], plain["sanity-spearman-curve"], rtol=0, atol=0
    )

    def needs_state(model, xx, tt, params, seed):  # reads the fitted mean, like mip-in its inverse
        tensors, _ = model.fitted_state("iba")
        with torch.enable_grad():
            xg = xx.clone().requires_grad_(True)
            model(xg).gather(1, tt[:, None]).sum().backward()
        return xplain.Attribution(xg.grad.abs().sum(1) * float(tensors["mean"].abs().mean()))

    def no_fit(model, batches, params, console=None):
        return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the positional explain form is deprecated, still accepted
        stateful = xplain.Method(name="needs-state", summary="", explain=needs_state, fit=no_fit)
    _, stale = sanity(tmp_path / "fit", stateful)
    assert float(stale["sanity-comparable"][0]) == 0.0
    assert math.isnan(float(stale["sanity"][0])) and math.isnan(float(stale["sanity-spearman"][0]))
    assert 0 < float(stale["sanity-stale"][0]) < 1


def test_bottleneck_layer_is_the_papers_one_eighth_grid(tmp_path):
    """IBA/InputIBA's default layer: VGG16's conv4_1 grid in general terms — the last feature
    layer on the coarsest grid that is still >= 1/8 of the input (28×28 at 224). A padded map
    before a stride-2 conv (9×9 here, 29×29 on EfficientNet) is not taken for that grid."""
    import contextlib
    import io

    from torch import nn

    def block(cin, cout):
        return [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.ReLU(),
        ]

    torch.manual_seed(0)
    net = nn.Sequential(
        *block(3, 4),
        nn.MaxPool2d(2),
        *block(4, 4),
        nn.MaxPool2d(2),  # 64 → 32 → 16
        *block(4, 8),
        nn.MaxPool2d(2),
        *block(8, 8),  # → 8×8 (1/8): conv4_1 … relu4_2
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.Conv2d(8, 8, 3, stride=2),
        nn.ReLU(),  # 9×9 → 4×4
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    ).eval()
    path = tmp_path / "vgg_like.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 64, 64),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "b"}},
        )
    model = xplain.load_model(path, device="cpu")
    shapes = [f.shape for f in model.feature_layers()]
    assert (8, 9, 9) in shapes  # the padded map is a feature layer …
    chosen = model.bottleneck_layer()
    assert chosen.shape == (8, 8, 8)  # … but the 1/8 grid is 8×8
    assert chosen.name == [f.name for f in model.feature_layers() if f.shape == (8, 8, 8)][-1]
    assert model.default_feature_layer().shape == (8, 4, 4)  # Grad-CAM's: the last spatial layer
    a = _quiet_explain(model, torch.rand(1, 3, 64, 64), method="iba", params={"steps": 1})
    assert a.info["layer"] == chosen.name


def test_marginal_w2_hand_cases():
    """Σ_e (μ̂−μ*)² + (σ̂−σ*)² over Σ σ*²: 0 for identical samples; a shift by one target std in
    every element gives 1; doubling the spread gives (2σ−σ)²/σ² = 1."""
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(2, 500, 3, 2, 2, generator=gen)
    torch.testing.assert_close(iba_input.marginal_w2(real, real), torch.zeros(2))
    std = real.flatten(2).std(1, keepdim=True).reshape(2, 1, 3, 2, 2)
    torch.testing.assert_close(
        iba_input.marginal_w2(real + std, real), torch.ones(2), rtol=1e-4, atol=1e-4
    )
    mean = real.mean(1, keepdim=True)
    torch.testing.assert_close(
        iba_input.marginal_w2(mean + 2 * (real - mean), real), torch.ones(2), rtol=1e-4, atol=1e-4
    )


def test_gan_stage_critic_gradients_and_recorded_distance(shapes):
    """The evidence of docs/input-iba.md in small: the weight-clipped critic hands the mask logits
    gradients of ~1e-7 after a few steps (noise for RMSProp), the gradient-penalty critic of order
    1; each record reports the critic-free distance to P(Z*) before and after stage 2."""
    method = get_registry().method("input-iba")
    grads = {}
    for critic in ("clip", "gp"):
        params = xplain.validate_params(
            method.params, {**FAST_GAN, "gan_critic": critic}, "input-iba"
        )
        split, x, bits, sampler, gens = _gan_inputs(shapes, params)
        seen = {}
        iba_input.gan_stage(
            split,
            x,
            bits,
            sampler,
            gens,
            params,
            monitor=lambda e, v, seen=seen: seen.__setitem__(e, v),
            monitor_epochs={2},
        )
        grads[critic] = float(seen[2]["mask_grad"].max())
    assert grads["clip"] < 1e-4 < 1e-2 < grads["gp"], grads  # measured ~5e-7 and ~5
    circle = _image(shapes, "shapes_circle")
    a = _quiet_explain(
        shapes, circle, targets=[0], method="input-iba", params={**FAST_GAN, "input_steps": 2}
    )
    before, after = a.sample_info[0]["gan_w2"]
    assert before > 0 and after > 0 and math.isfinite(before) and math.isfinite(after)


def _gan_inputs(shapes, params):
    """Stage 1 on the circle and the triangle: what gan_stage needs, for the GAN-stage tests."""
    x = torch.cat([_image(shapes, "shapes_circle"), _image(shapes, "shapes_triangle")])
    layer, _ = iba.resolve_layer(shapes, "", "input-iba", spatial=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split, gens, mean, std, active, _, _ = iba._stats_and_gens(
            shapes, x, params, 0, "input-iba", layer
        )
    cap, lam, r, _ = iba.feature_bottleneck(
        split,
        x,
        torch.tensor([0, 2]),
        mean,
        std,
        active,
        gens,
        beta=10.0,
        steps=10,
        lr=1.0,
        copies=10,
        initial_alpha=5.0,
        sigma=1.0,
    )
    sampler = iba_input._target_sampler(r, lam, cap, mean, std, active, gens, params)
    return split, x, iba.saliency_bits(cap, (64, 64)), sampler, gens


@pytest.mark.parametrize("critic", ["gp", "clip"])
def test_gan_stage_skipped_gradients_change_no_number(shapes, monkeypatch, critic):
    """The GAN stage differentiates each loss only for the parameters its step updates, and the
    recorded distance comes from a gradient-free probe pass; the generated samples go through the
    prefix a few at a time. Against the plain loop (one pass, every ``backward`` into every leaf,
    the full monitor), λ_G and the recorded W2 are bit-identical: the skipped gradients were never
    used, and passes change no sample's arithmetic."""
    method = get_registry().method("input-iba")
    params = xplain.validate_params(
        method.params,
        {**FAST_GAN, "gan_dataset": 40, "gan_batch": 8, "critic_iter": 2, "gan_critic": critic},
        "input-iba",
    )

    inputs = {True: _gan_inputs(shapes, params), False: _gan_inputs(shapes, params)}

    def run(plain):
        seen = {}
        prior, counts = iba_input.gan_stage(
            *inputs[plain],
            params,
            monitor=lambda e, v: seen.__setitem__(e, v["w2"]),
            monitor_epochs={0, 2},
            monitor_w2_only=not plain,
            per_pass=None if plain else 12,  # 16 samples a batch: passes of 8 and 8
        )
        return prior, seen, counts

    lean = run(plain=False)
    original = torch.Tensor.backward
    calls = []

    def full_backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        calls.append(inputs is not None)
        original(self, gradient, retain_graph, create_graph)  # into every leaf, as before

    monkeypatch.setattr(torch.Tensor, "backward", full_backward)
    plain = run(plain=True)
    assert calls and all(calls)  # every step's backward named its inputs in the lean run
    assert lean[2] == plain[2] and lean[2]["generator_steps"] == 6
    assert torch.equal(lean[0], plain[0])
    assert (lean[0] != torch.sigmoid(torch.zeros(()))).any()  # λ_G is not a trivial constant
    for epoch in (0, 2):
        assert torch.equal(lean[1][epoch], plain[1][epoch])


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_input_iba_batched_equals_one_image_at_a_time(shapes, precision):
    """Issue 24: the images of a batch optimise their bottlenecks, generators and critics in one
    loop, each with its own parameters and seed stream, so a batch gives each image the map it
    gets alone, up to the rounding of the grouped critic's sums (docs/input-iba.md): 1e-4 of the
    map's range with a float32 critic; with a bfloat16 critic a one-unit rounding difference can
    flip, so a few pixels differ by up to 15 % and the mean by at most 3e-4 of the range (measured:
    7 % and 4e-5; the two images' maps differ by 4e-3 in mean)."""
    x = torch.cat([_image(shapes, n) for n in ("shapes_circle", "shapes_triangle")])
    params = {**FAST_GAN, "return": "input", "critic_precision": precision}
    together = _quiet_explain(shapes, x, method="input-iba", params=params, seed=5).maps
    alone = torch.cat(
        [
            _quiet_explain(shapes, x[i : i + 1], method="input-iba", params=params, seed=5).maps
            for i in range(2)
        ]
    )
    scale = float(alone.abs().max())
    if precision == "float32":
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-4 * scale)
    else:
        assert float((together - alone).abs().mean()) <= 3e-4 * scale
        assert float((together - alone).abs().max()) <= 0.15 * scale
    assert not torch.allclose(alone[0], alone[1], atol=1e-2 * scale)  # the images differ
    assert float((alone[0] - alone[1]).abs().mean()) > 1e-3 * scale


def test_critic_precision_choice():
    """auto picks bfloat16 only where the device computes it natively, never for float64 runs."""
    cpu32 = torch.zeros(1)
    assert iba_input.critic_amp("float32", cpu32) is None
    assert iba_input.critic_amp("bfloat16", cpu32) is torch.bfloat16
    assert iba_input.critic_amp("bfloat16", cpu32.double()) is None
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert iba_input.critic_amp("auto", cpu32) is (torch.bfloat16 if native else None)


def test_bfloat16_critic_scores_and_gradients_follow_float32():
    """The autocast critic computes the float32 critic's function: scores, the penalty's input
    gradient and the parameter gradients agree to bfloat16's resolution (a wrong cast, e.g.
    weights rounded in place, would show at the first step)."""
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 16, 8, 12, 12, generator=g)
    kw = {"device": "cpu", "dtype": torch.float32, "batch_norm": False}
    exact = iba_input.GroupedCritic(2, 8, 12, 12, sample_generators(feats, 0), **kw)
    low = iba_input.GroupedCritic(
        2, 8, 12, 12, sample_generators(feats, 0), **kw, amp=torch.bfloat16
    )
    for a, b in zip(exact.params, low.params):
        assert torch.equal(a, b) and b.dtype == torch.float32
    outs = []
    for critic in (exact, low):
        x = feats.clone().requires_grad_(True)
        score = critic(x)
        assert score.dtype == torch.float32
        (gx,) = torch.autograd.grad(score.sum(), x, create_graph=True)
        (score.sum() + (gx.flatten(2).norm(dim=2) - 1).pow(2).sum()).backward(inputs=critic.params)
        outs.append((score.detach(), gx.detach(), [p.grad for p in critic.params]))
    (s32, g32, p32), (s16, g16, p16) = outs
    assert (s16 - s32).abs().max() <= 0.03 * s32.abs().max()
    assert torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.99
    for a, b in zip(p32, p16):
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_bfloat16_critic_moves_the_map_far_less_than_a_new_seed(shapes):
    """The reason bfloat16 may be the default: at the same seed it changes λ_G and the final map
    far less than re-running with another seed does (measured: 1/13 and 1/70 of it in mean)."""
    x = _image(shapes, "shapes_circle")

    def run(precision, seed, ret):
        params = {**FAST_GAN, "return": ret, "critic_precision": precision}
        return _quiet_explain(shapes, x, method="input-iba", params=params, seed=seed).maps

    for ret, share in (("gan", 0.25), ("input", 0.1)):
        base = run("float32", 5, ret)
        low = (run("bfloat16", 5, ret) - base).abs().mean()
        reseeded = (run("float32", 6, ret) - base).abs().mean()
        assert 0 < low < share * reseeded, (ret, float(low), float(reseeded))
