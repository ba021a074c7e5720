"""Issue 24: the sanity metric's similarity measures and blocks, and guided-grad-cam."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xplain
from xplain.plugins.registry import Registry
from xplain.run.api import run_method

from .conftest import export_classic

REG = Registry().discover()


def _sanity(model, x, t, method, params):
    metric = REG.metric("sanity")
    p = xplain.validate_params(metric.params, params, "sanity")
    m = REG.method(method)
    mp = xplain.validate_params(m.params, {}, method)
    a = run_method(model, m, x, t, mp, 0)
    return metric.compute(
        model,
        x,
        t,
        a,
        params=p,
        seed=0,
        cache={},
        forward_batch=64,
        explain=lambda xx, tt: run_method(model, m, xx, tt, mp, 0),
    )


def test_hog_similarity_is_one_for_the_same_map_and_scale_free():
    from xplain_builtins.metrics.similarity import hog_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 32, 32, generator=g)
    b = torch.rand(2, 32, 32, generator=g)
    torch.testing.assert_close(hog_similarity(a, 3 * a + 1), torch.ones(2))
    assert (hog_similarity(a, b) < 0.5).all()  # independent noise: weakly correlated descriptors
    # a shifted copy keeps more of the orientation histogram than independent noise
    ramp = torch.linspace(0, 1, 32)[None, :, None].expand(2, 32, 32) + 0.05 * a
    assert (
        hog_similarity(ramp, ramp.transpose(1, 2)) < hog_similarity(ramp, ramp + 0.05 * b)
    ).all()


def test_measures_follow_their_definitions(tiny_model):
    """signed/abs Spearman agree with scipy on the step maps; `spearman` follows `absolute`."""
    x = tiny_model.example_input(2, seed=3)
    t = torch.tensor([0, 2])
    params = {"similarity": "ssim,spearman,spearman-abs,spearman-signed,hog", "layers": 2}
    r = _sanity(tiny_model, x, t, "saliency", params)
    for m in ("ssim", "spearman", "spearman-abs", "spearman-signed", "hog"):
        assert r[f"sanity-{m}-curve"].shape == (2, 3)
        assert (r[f"sanity-{m}-curve"][:, 0] == 1).all()
    torch.testing.assert_close(r["sanity-spearman-curve"], r["sanity-spearman-abs-curve"])
    # saliency is |gradient|: signed and absolute rank correlations are the same numbers
    torch.testing.assert_close(r["sanity-spearman-signed-curve"], r["sanity-spearman-abs-curve"])
    g = _sanity(tiny_model, x, t, "gradient", params)
    assert not torch.allclose(g["sanity-spearman-signed-curve"], g["sanity-spearman-abs-curve"])
    # the default measures and keys are unchanged
    d = _sanity(tiny_model, x, t, "saliency", {"layers": 2})
    torch.testing.assert_close(d["sanity"], r["sanity"])
    assert set(k for k in d if k.endswith("-curve")) == {
        "sanity-ssim-curve",
        "sanity-spearman-curve",
    }


def test_unknown_measure_is_a_usage_error(tiny_model):
    x = tiny_model.example_input(1, seed=3)
    with pytest.raises(xplain.UsageError, match="unknown similarity"):
        _sanity(tiny_model, x, torch.tensor([0]), "saliency", {"similarity": "ssim,pixels"})


def test_blocks_group_layers_by_onnx_name_prefix():
    from xplain_builtins.metrics.similarity import layer_blocks

    class Names:
        names = {
            "a": "/_fc/Gemm",
            "b": "/_blocks.1/_project_conv/Conv",
            "c": "/_blocks.1/_expand_conv/Conv",
            "d": "/_blocks.0/_project_conv/Conv",
            "e": "stem",
        }

        def onnx_name(self, n):
            return self.names[n]

    blocks = layer_blocks(Names(), list("abcde"), 1)
    assert blocks == [
        ("/_fc", ["a"]),
        ("/_blocks.1", ["b", "c"]),
        ("/_blocks.0", ["d"]),
        ("stem", ["e"]),
    ]
    assert [n for _, n in layer_blocks(Names(), list("abcde"), 0)] == [[c] for c in "abcde"]


def _relu_cnn():
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def test_guided_grad_cam_agrees_with_captum_bilinear(tmp_path):
    import captum.attr

    model = xplain.load_model(export_classic(_relu_cnn(), tmp_path / "r.onnx", (1, 3, 12, 12)))
    x = model.example_input(3, seed=4)
    targets = torch.tensor([0, 4, 2])
    a = xplain.explain(model, x, targets, "guided-grad-cam")
    layer = model.module(a.info["layer"])
    ref = (
        captum.attr.GuidedGradCam(model.graph, layer)
        .attribute(x.clone(), target=targets, interpolate_mode="bilinear")
        .sum(dim=1)
        .detach()
    )
    torch.testing.assert_close(a.maps, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    gbp = xplain.explain(model, x, targets, "guided-backprop").maps
    assert not torch.allclose(a.maps, gbp)
