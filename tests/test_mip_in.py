"""MIP-IN (issue 6): the inverses against independent computations, and the paper's claims.

Fits use the shipped data (``sample_models/digits_data``, 36 images per class) and small
budgets (few classes, few epochs) to keep the file fast on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import xplain
from xplain.cli.app import main
from xplain.data.images import Preprocess, load_image
from xplain_builtins.methods.mip_in import mip_in
from xplain_builtins.methods.mip_in.chain import _activations, _step_meta
from xplain_builtins.methods.mip_in.fit import _fit_closed, _fit_conv, _fit_conv_lstsq, fit
from xplain_builtins.methods.mip_in.invert import _inverse, _propagate, invert, load, source_logits

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
DATA = SAMPLES / "digits_data"


def _digits(classes=None, every=1, offset=0):
    paths = sorted(DATA.glob("*/*.png"))
    paths = [p for p in paths if classes is None or int(p.parent.name) in classes][offset::every]
    pre = Preprocess.from_options((1, 28, 28), preset="unit")
    x = torch.stack([torch.from_numpy(pre(load_image(p))[0]) for p in paths])
    return x, torch.tensor([int(p.parent.name) for p in paths])


def _params(**kw):
    return xplain.validate_params(mip_in._PARAMS, kw, "mip-in")


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """digits_mlp fitted for all ten classes through the CLI (about 3 s)."""
    state = tmp_path_factory.mktemp("mlp-state")
    assert (
        main(
            [
                "fit",
                "mip-in",
                str(SAMPLES / "digits_mlp.onnx"),
                str(DATA),
                "--state-dir",
                str(state),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    model = xplain.load_model(SAMPLES / "digits_mlp.onnx")
    model.state_dir = state
    return model


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """digits_cnn fitted for classes 3 and 7 on 12 images each, 4 epochs (a small budget)."""
    state = tmp_path_factory.mktemp("cnn-state")
    assert (
        main(
            [
                "fit",
                "mip-in",
                str(SAMPLES / "digits_cnn.onnx"),
                str(DATA),
                "--state-dir",
                str(state),
                "--device",
                "cpu",
                "--classes",
                "3,7",
                "--samples",
                "12",
                "-p",
                "epochs=4",
            ]
        )
        == 0
    )
    model = xplain.load_model(SAMPLES / "digits_cnn.onnx")
    model.state_dir = state
    return model


# ------------------------------------------------------------------ the inverses, one at a time
def test_dense_closed_form_equals_ridge_least_squares():
    gen = torch.Generator().manual_seed(0)
    n, d_s, d_x, lam = 40, 6, 9, 0.5
    s = torch.randn(n, d_s, generator=gen, dtype=torch.float64)
    x = (
        s @ torch.randn(d_s, d_x, generator=gen, dtype=torch.float64)
        + 0.3 * torch.randn(n, d_x, generator=gen, dtype=torch.float64)
        + 2.0
    )
    step = {"kind": "dense", "in_shape": [d_x]}
    pairs = lambda: iter([(s[:17].float(), x[:17].float()), (s[17:].float(), x[17:].float())])  # noqa: E731 streamed
    fitted, errors = _fit_closed(step, pairs, lam)
    # independent: ridge on centred data as an augmented least-squares problem
    sc, xc = s - s.mean(0), x - x.mean(0)
    a = torch.cat([sc, lam**0.5 * torch.eye(d_s, dtype=torch.float64)])
    b = torch.cat([xc, torch.zeros(d_s, d_x, dtype=torch.float64)])
    w_ref = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(fitted["weight"].double(), w_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        fitted["bias"].double(), x.mean(0) - w_ref @ s.mean(0), rtol=1e-4, atol=1e-5
    )
    # λ = 0: ordinary least squares with an intercept
    fitted0, errors0 = _fit_closed(step, pairs, 0.0)
    ones = torch.ones(n, 1, dtype=torch.float64)
    sol = torch.linalg.lstsq(torch.cat([s, ones], 1), x).solution
    torch.testing.assert_close(fitted0["weight"].double(), sol[:d_s].T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fitted0["bias"].double(), sol[d_s], rtol=1e-4, atol=1e-5)
    resid = x - (s @ sol[:d_s] + sol[d_s])
    assert errors0["mse"] == pytest.approx(float((resid**2).mean()), rel=1e-4)


def test_affine_and_pooling_inverses_recover_known_linear_maps():
    """A lone BatchNorm fed its true output is inverted exactly (slope 1/scale); the global-average-
    pool inverse finds the per-channel slope of X on S, shared by all positions."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(12, 3, 4, 5, generator=gen)
    scale, shift = torch.tensor([0.5, 2.0, -1.5]), torch.tensor([1.0, -2.0, 0.25])
    s = x * scale.reshape(1, 3, 1, 1) + shift.reshape(1, 3, 1, 1)
    fitted, errors = _fit_closed({"kind": "affine"}, lambda: iter([(s, x)]), 0.0)
    torch.testing.assert_close(fitted["weight"], 1 / scale, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fitted["bias"], -shift / scale, rtol=1e-5, atol=1e-5)
    assert errors["relative"] < 1e-10
    # pooling: X = a_c * S_c + pattern(c, h, w) + noise; the slope is shared over positions
    s_pool = torch.randn(40, 3, generator=gen)
    a = torch.tensor([1.5, -0.5, 3.0])
    pattern = torch.randn(3, 4, 5, generator=gen)
    x_pool = (
        a.reshape(1, 3, 1, 1) * s_pool.reshape(40, 3, 1, 1)
        + pattern
        + 0.01 * torch.randn(40, 3, 4, 5, generator=gen)
    )
    step = {"kind": "gap", "in_shape": [3, 4, 5]}
    fitted, _ = _fit_closed(step, lambda: iter([(s_pool.reshape(40, 3, 1, 1), x_pool)]), 0.0)
    torch.testing.assert_close(fitted["weight"], a, rtol=1e-2, atol=1e-2)
    recon = _inverse(step, fitted, s_pool, None)
    assert float(((recon - x_pool) ** 2).mean()) < 2e-4
    assert _inverse(step, fitted, s_pool, None, bias=False).shape == x_pool.shape


def test_maxpool_inverse_uses_the_samples_switches():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 6, generator=gen)
    s = torch.randn(2, 3, 3, 3, generator=gen)
    step = {
        "kind": "maxpool",
        "node": "p",
        "input": "x",
        "kernel": 2,
        "stride": 2,
        "padding": 0,
        "dilation": 1,
        "ceil_mode": False,
    }
    out = _inverse(step, {}, s, {"x": x})
    # independent: the gradient of max-pooling routes exactly through the switches
    xg = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(F.max_pool2d(xg, 2), xg, grad_outputs=s)
    torch.testing.assert_close(out, ref)


def test_conv_inverse_error_falls_and_beats_the_transposed_forward_filter(cnn):
    """digits_cnn's first convolution: train on 3s and 7s, compare on held-out ones."""
    conv = cnn.module("n00000_conv")
    x_train, _ = _digits({3, 7}, every=2)
    x_test, _ = _digits({3, 7}, every=2, offset=1)
    with torch.no_grad():
        s_train, s_test = conv(x_train), conv(x_test)
    step = _step_meta(
        {
            "node": "n00000_conv",
            "kind": "conv",
            "input": "input",
            "module": conv,
            "in_shape": [1, 28, 28],
            "out_shape": [16, 24, 24],
        }
    )
    pairs = lambda: iter(
        [(s_train[i : i + 16], x_train[i : i + 16]) for i in range(0, len(x_train), 16)]
    )  # noqa: E731
    fitted, errors = _fit_conv(step, pairs, _params(epochs=8), None)
    history = errors["epoch_mse"]
    assert history[-1] < 0.5 * history[0] and all(
        b <= a * 1.05 for a, b in zip(history, history[1:])
    )
    with torch.no_grad():
        ours = float(F.mse_loss(_inverse(step, fitted, s_test, None), x_test))
        deconv = F.conv_transpose2d(s_test - conv.bias.reshape(1, -1, 1, 1), conv.weight)
        alpha = float(
            (deconv * x_test).sum() / (deconv * deconv).sum()
        )  # best scale, even fitted on the test set
        deconv_err = float(F.mse_loss(alpha * deconv, x_test))
    assert ours < 0.5 * deconv_err
    # conv_solver=lstsq: the exact minimiser of the same family, so the loss gradient vanishes there
    exact, exact_errors = _fit_conv_lstsq(step, pairs, 0.0)
    assert exact_errors["mse"] <= errors["mse"] * 1.0001
    w, b = exact["weight"].clone().requires_grad_(True), exact["bias"].clone().requires_grad_(True)
    loss = ((_inverse(step, {"weight": w, "bias": b}, s_train, None) - x_train) ** 2).sum()
    grads = torch.autograd.grad(loss, [w, b])
    w_adam = fitted["weight"].clone().requires_grad_(True)
    loss_adam = (
        (_inverse(step, {"weight": w_adam, "bias": fitted["bias"]}, s_train, None) - x_train) ** 2
    ).sum()
    (grad_adam,) = torch.autograd.grad(loss_adam, [w_adam])
    assert float(grads[0].norm()) < 1e-3 * float(grad_adam.norm()) and float(
        grads[1].norm()
    ) < 1e-3 * float(loss.detach())


# ------------------------------------------------------------------ Algorithm 1 end to end
def test_recursive_fit_matches_an_independent_recursion(mlp):
    """Top-down: g3 from Y_c, then g2 from the *gated* reconstruction, each a ridge on centred data."""
    tensors, meta = mlp.fitted_state("mip-in")
    assert (
        meta["mode"] == "chain" and meta["classes"] == list(range(10)) and meta["lambda"] == 0.001
    )
    assert [s["kind"] for s in meta["steps"]] == [
        "reshape",
        "dense",
        "gate",
        "dense",
        "gate",
        "dense",
    ]
    c = 4
    x, y = _digits({c})
    with mlp.tap(["n00002_relu", "n00004_relu"], gradients=False) as tap, torch.no_grad():
        logits = mlp(x)
        h1, h2 = tap.activations["n00002_relu"].double(), tap.activations["n00004_relu"].double()

    def ridge(s, target, lam=0.001):
        sc, tc = s - s.mean(0), target - target.mean(0)
        w = torch.linalg.solve(sc.T @ sc + lam * torch.eye(s.shape[1], dtype=s.dtype), sc.T @ tc).T
        return w, target.mean(0) - w @ s.mean(0)

    y_c = logits[:, c : c + 1].double()
    w3, b3 = ridge(y_c, h2)
    torch.testing.assert_close(tensors[f"c{c}.s5.weight"].double(), w3, rtol=1e-3, atol=1e-5)
    s2 = (y_c @ w3.T + b3) * (h2 != 0)  # forward-ReLU gating by the sample's own pattern
    w2, b2 = ridge(s2, h1)
    recon_ref = s2 @ w2.T + b2
    recon = s2 @ tensors[f"c{c}.s3.weight"].double().T + tensors[f"c{c}.s3.bias"].double()
    torch.testing.assert_close(recon, recon_ref, rtol=1e-3, atol=1e-3)
    errors = meta["reconstruction_errors"][str(c)]
    assert set(errors) == {"n00001_gemm", "n00003_gemm", "n00005_gemm"}
    assert 0 < errors["n00005_gemm"]["relative"] < 1  # a scalar explains part of a 512-d layer


def test_attribution_is_the_linear_part_and_source_signal_has_the_biases(mlp):
    x, y = _digits({2, 5}, every=9)
    params = _params()
    a, s0, logits, start = invert(mlp, x, y, params)
    assert start is None and a.shape == s0.shape == x.shape
    # A is linear in Y_c: the chain without biases maps Y_c to A, so A / Y_c is the gated linear map
    state = load(mlp, params)
    steps, inv = state[1], state[2]
    _, acts = _activations(mlp, x, None, steps)
    for i in range(len(y)):
        sub = {k: v[i : i + 1] for k, v in acts.items()}
        unit = _propagate(steps, inv[int(y[i])], torch.ones(1, 1), sub, 0, bias=False)
        torch.testing.assert_close(a[i : i + 1], unit * logits[i, y[i]], rtol=1e-4, atol=1e-6)
        zero = _propagate(steps, inv[int(y[i])], torch.zeros(1, 1), sub, 0, bias=True)
        torch.testing.assert_close(
            s0[i : i + 1], a[i : i + 1] + zero, rtol=1e-4, atol=1e-5
        )  # S_0 = A + bias path
    attribution = xplain.explain(mlp, x, targets=y, method="mip-in")
    torch.testing.assert_close(attribution.maps, a[:, 0])
    torch.testing.assert_close(attribution.extras["source_signal"], s0)


def test_local_adaptation_needs_the_gating(mlp):
    """Figure 3: without forward-ReLU gating all 0s get the same map (up to Y_c); with it they differ."""
    x, y = _digits({0}, every=6)

    def mean_cos(params):
        maps = F.normalize(
            xplain.explain(mlp, x, targets=y, method="mip-in", params=params).maps.flatten(1), dim=1
        )
        sims = maps @ maps.T
        return float(sims[~torch.eye(len(y), dtype=torch.bool)].mean())

    assert mean_cos({"gating": False}) > 0.9999
    assert mean_cos({}) < 0.97


def test_completeness_mlp(mlp):
    """Section 5 / Table 1 (paper: APC 10.1 %, Positive APC 2.6 %), measured on the fitting data."""
    x, y = _digits()
    result = mip_in.completeness(mlp, x, y)
    assert result["classes"] == 10 and result["samples"] == 360
    assert result["apc"] < 20 and result["positive_apc"] < 10


def test_completeness_and_class_sensitivity_cnn(cnn):
    x, y = _digits({3, 7}, every=3)
    result = mip_in.completeness(cnn, x, y)
    assert result["apc"] < 40 and result["positive_apc"] < 25
    _class_sensitivity(cnn, x, y, swap={3: 7, 7: 3}, factor=1.5)


def test_class_sensitivity_mlp(mlp):
    x, y = _digits({1, 4, 8}, every=4)
    _class_sensitivity(mlp, x, y, swap={1: 4, 4: 8, 8: 1}, factor=1.5)


def _class_sensitivity(model, x, y, swap, factor):
    """Section 6.4: mean l2 distance between the (unit-norm) maps of two classes."""
    other = torch.tensor([swap[int(t)] for t in y])

    def distance(method):
        a = xplain.explain(model, x, targets=y, method=method).maps.flatten(1)
        b = xplain.explain(model, x, targets=other, method=method).maps.flatten(1)
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        return float((a - b).norm(dim=1).mean())

    ours, guided = distance("mip-in"), distance("guided-backprop")
    assert ours > factor * guided, (ours, guided)


# ------------------------------------------------------------------ graphs beyond a chain, errors
def test_head_mode_on_a_residual_graph(tmp_path):
    """shapes_cnn has a residual add: the head from the default feature layer is inverted."""
    model = xplain.load_model(SAMPLES / "shapes_cnn.onnx")
    model.state_dir = tmp_path
    assert (
        main(
            [
                "fit",
                "mip-in",
                str(SAMPLES / "shapes_cnn.onnx"),
                str(SAMPLES / "shapes_eval" / "manifest.csv"),
                "--state-dir",
                str(tmp_path),
                "--device",
                "cpu",
                "--classes",
                "square,cross",
            ]
        )
        == 0
    )
    _, meta = model.fitted_state("mip-in")
    feature = model.default_feature_layer().name
    assert meta["mode"] == "head" and meta["start"] == feature and meta["classes"] == [1, 3]
    assert [s["kind"] for s in meta["steps"]] == ["gap", "reshape", "dense"]
    pre = Preprocess.from_options((3, 64, 64), preset="unit")
    x = torch.from_numpy(pre(load_image(SAMPLES / "images" / "shapes_square_cross.png"))[0])[None]
    att = xplain.explain(model, x.repeat(2, 1, 1, 1), targets=[1, 3], method="mip-in")
    a = att.extras["attribution"]
    with model.tap([feature], gradients=False) as tap, torch.no_grad():
        model(x)
    assert a.shape == (2, *tap.activations[feature].shape[1:])
    assert bool(((a != 0) <= (tap.activations[feature] != 0)).all())  # gated on the start layer too
    expected = F.interpolate(
        a.mean(1, keepdim=True), size=(64, 64), mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(att.maps, expected)
    # known locations: each class's positive evidence lies mostly in its own box, not the other's
    from xplain.data.datasets import read_voc

    boxes = {
        b.label: b for b in read_voc(SAMPLES / "images" / "shapes_square_cross.xml", model.labels)
    }

    def mass(i, box):
        return float(
            att.maps[i]
            .clamp(min=0)[int(box.ymin) - 1 : int(box.ymax), int(box.xmin) - 1 : int(box.xmax)]
            .sum()
        )

    assert mass(0, boxes[1]) > 2 * mass(0, boxes[3])  # "square" map
    assert mass(1, boxes[3]) > 2 * mass(1, boxes[1])  # "cross" map
    # the source signal at the feature layer still drives the head
    result = mip_in.completeness(model, x.repeat(2, 1, 1, 1), torch.tensor([1, 3]))
    assert result["apc"] < 80
    # each record carries Φ(S₀), the head's logit of the source signal, so APC works in head mode
    phi = source_logits(model, att.extras["source_signal"], torch.tensor([1, 3]), feature)
    assert [i["source_logit"] for i in att.sample_info] == pytest.approx(phi.tolist(), rel=1e-5)
    score = (
        xplain.get_registry()
        .metric("completeness")
        .compute(model, x.repeat(2, 1, 1, 1), torch.tensor([1, 3]), att)
    )
    assert torch.isfinite(score["completeness"]).all()


def test_explain_without_state_names_the_fit_command(tmp_path, capsys):
    code = main(
        [
            "explain",
            str(SAMPLES / "digits_mlp.onnx"),
            str(SAMPLES / "images" / "digit_3.png"),
            "--method",
            "mip-in",
            "--state-dir",
            str(tmp_path),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == xplain.ExitCode.INPUT
    assert "xplain fit mip-in" in capsys.readouterr().err


def test_unfitted_class_is_a_clear_error(cnn, tmp_path, capsys):
    code = main(
        [
            "explain",
            str(SAMPLES / "digits_cnn.onnx"),
            str(SAMPLES / "images" / "digit_0.png"),
            "--method",
            "mip-in",
            "--state-dir",
            str(cnn.state_dir),
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--target",
            "0",
        ]
    )
    assert code == xplain.ExitCode.INPUT
    assert "--classes 0,3,7" in capsys.readouterr().err


def test_fit_records_the_run(cnn):
    _, meta = cnn.fitted_state("mip-in")
    assert meta["samples_per_class"] == {"3": 12, "7": 12} and meta["samples"] == 24
    assert meta["epochs"] == 4 and meta["params"]["classes"] == "3,7"
    conv = meta["reconstruction_errors"]["3"]["n00002_conv"]
    assert len(conv["epoch_mse"]) == 4 and conv["epoch_mse"][-1] < conv["epoch_mse"][0]
    json.dumps(meta)


def test_strided_conv_chain_and_layer_option(tmp_path):
    """Geometry: a stride-2 padded convolution inverts back to the exact input size; --layer
    starts the head at a chosen layer (gated there too)."""
    from torch import nn

    from tests.conftest import export_classic

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 3),
    )
    with torch.no_grad():  # a BatchNorm after a ReLU is not folded: it stays a lone affine layer
        net[2].running_mean.uniform_(-0.5, 0.5)
        net[2].running_var.uniform_(0.5, 2.0)
    path = export_classic(net, tmp_path / "strided.onnx", (2, 1, 15, 15))
    model = xplain.load_model(path)
    x = model.example_input(24, seed=3)
    ys = torch.arange(24) % 3
    batches = lambda labels=False: iter([(x, ys)] if labels else [x])  # noqa: E731
    tensors, meta = fit(model, batches, _params(epochs=3), None)
    assert meta["mode"] == "chain"
    assert [s["kind"] for s in meta["steps"]] == [
        "conv",
        "gate",
        "affine",
        "conv",
        "gate",
        "reshape",
        "dense",
    ]

    from xplain.run.state import save_state

    save_state(model.digest, "mip-in", tensors, meta, root=tmp_path / "s")
    model.state_dir = tmp_path / "s"
    a, s0, _, start = invert(model, x[:3], ys[:3], _params())
    assert start is None and a.shape == s0.shape == (3, 1, 15, 15)
    errors = meta["reconstruction_errors"]["0"]
    conv_names = [s["node"] for s in meta["steps"] if s["kind"] == "conv"]
    assert all(errors[n]["epoch_mse"][-1] < errors[n]["epoch_mse"][0] for n in conv_names)
    # the exact solver on the same strided geometry: the top convolution (fitted on the same S)
    # reconstructs at least as well as Adam
    _, exact_meta = fit(model, batches, _params(epochs=3, conv_solver="lstsq", ridge=0.0), None)
    top = conv_names[-1]
    for c in ("0", "1", "2"):
        assert (
            exact_meta["reconstruction_errors"][c][top]["mse"]
            <= meta["reconstruction_errors"][c][top]["mse"] * 1.0001
        )
    # start at the first ReLU: only the second conv and the head are inverted, gated at the start
    relu = [s["node"] for s in meta["steps"] if s["kind"] == "gate"][0]
    tensors, meta = fit(model, batches, _params(epochs=2, layer=relu), None)
    assert meta["mode"] == "head" and meta["start"] == relu
    assert [s["kind"] for s in meta["steps"]] == ["affine", "conv", "gate", "reshape", "dense"]


def test_fit_reads_image_labels_from_a_labels_file(tmp_path):
    """``--labels`` labels a plain folder (here deliberately all "3": predictions would say 3 and 7)."""
    import shutil

    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = ["path,label"]
    for d in (3, 7):
        for p in sorted((DATA / str(d)).glob("*.png"))[:3]:
            shutil.copy(p, folder / f"{d}_{p.name}")
            rows.append(f"{d}_{p.name},3")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    state = tmp_path / "state"
    assert (
        main(
            [
                "fit",
                "mip-in",
                str(SAMPLES / "digits_mlp.onnx"),
                str(folder),
                "--labels",
                str(tmp_path / "labels.csv"),
                "--state-dir",
                str(state),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    meta = json.loads(next(state.rglob("mip-in.json")).read_text())
    assert meta["classes"] == [3] and meta["samples_per_class"] == {"3": 6}


def test_sanity_marks_mip_in_not_comparable(mlp):
    """MIP-IN's inverse is fitted on the trained model and it cannot run without it: cascading
    randomisation reports its score as not comparable (NaN + the stale-state score), even though
    the state is cached on the model object."""
    from xplain.plugins.registry import get_registry
    from xplain.run.api import run_method

    registry = get_registry()
    method, metric = registry.method("mip-in"), registry.metric("sanity")
    x, y = _digits(classes=[3, 7], every=25)
    mparams = _params()
    a = run_method(mlp, method, x[:2], y[:2], mparams, 0)  # fills the model's state cache
    res = metric.compute(
        mlp,
        x[:2],
        y[:2],
        a,
        seed=0,
        method=method,
        explain=lambda xx, tt: run_method(mlp, method, xx, tt, mparams, 0),
    )
    assert (res["sanity-comparable"] == 0).all()
    assert torch.isnan(res["sanity"]).all() and torch.isfinite(res["sanity-stale"]).all()
    assert (
        run_method(mlp, method, x[:2], y[:2], mparams, 0).maps.shape == a.maps.shape
    )  # state usable again


def test_view_flatten_of_the_classic_exporter_is_one_reshape(tmp_path):
    """``y.view(y.size(0), -1)``, exported classic, is Shape → Gather → Unsqueeze → Concat →
    Reshape: the shape chain is not a second signal input (it used to refuse "has 2 signal
    inputs"). The fit and the attribution equal those of the same network with ``nn.Flatten``."""
    from torch import nn

    from tests.conftest import export_classic
    from xplain.run.state import save_state

    class Net(nn.Module):
        def __init__(self, view: bool):
            super().__init__()
            torch.manual_seed(0)
            self.view = view
            self.fc1, self.fc2 = nn.Linear(64, 16), nn.Linear(16, 3)

        def forward(self, x):
            flat = x.view(x.size(0), -1) if self.view else torch.flatten(x, 1)
            return self.fc2(torch.relu(self.fc1(flat)))

    results = []
    for view in (True, False):
        path = export_classic(Net(view).eval(), tmp_path / f"view{view}.onnx", (2, 1, 8, 8))
        model = xplain.load_model(path)
        x = model.example_input(12, seed=3)
        ys = torch.arange(12) % 3
        batches = lambda labels=False, x=x, ys=ys: iter([(x, ys)] if labels else [x])  # noqa: E731
        torch.manual_seed(0)
        tensors, meta = fit(model, batches, _params(epochs=2), None)
        assert meta["mode"] == "chain"
        assert [s["kind"] for s in meta["steps"]] == ["reshape", "dense", "gate", "dense"]
        save_state(model.digest, "mip-in", tensors, meta, root=tmp_path / f"s{view}")
        model.state_dir = tmp_path / f"s{view}"
        a, s0, _, start = invert(model, x[:3], ys[:3], _params())
        assert start is None and a.shape == (3, 1, 8, 8)
        results.append(a)
    torch.testing.assert_close(results[0], results[1])
