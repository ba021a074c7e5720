"""Plugin contract v1: typed request/context objects, lazy implementation references, the
deprecated positional forms, and what the model-loader hook may return."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import sys
import textwrap
import warnings

import pytest
import torch

import xplain
from xplain.plugins.registry import Registry
from xplain.run.api import run_method

from .conftest import REPO


def _saliency_v1(request: xplain.ExplainRequest):
    with torch.enable_grad():
        x = request.x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(request.model(x).gather(1, request.targets[:, None]).sum(), x)
    return g.abs().amax(dim=1)


def _saliency_legacy(model, x, targets, params, seed):
    return _saliency_v1(xplain.ExplainRequest(model, x, targets, params, seed))


def test_version_and_contract_version_are_exposed():
    assert xplain.__version__ == importlib.metadata.version("xplain")
    assert xplain.CONTRACT_VERSION == 1
    assert (REPO / "xplain" / "py.typed").exists()


def test_request_is_frozen_and_its_generators_are_the_per_sample_ones(tiny_model):
    x = tiny_model.example_input(2, seed=3)
    request = xplain.ExplainRequest(tiny_model, x, torch.tensor([0, 1]), {"k": 1}, seed=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.seed = 6  # type: ignore[misc]
    assert request.device == x.device
    want = [torch.rand(3, generator=g) for g in xplain.sample_generators(x, 5)]
    got = [torch.rand(3, generator=g) for g in request.generators]
    torch.testing.assert_close(torch.stack(got), torch.stack(want))


def test_positional_explain_still_works_with_a_deprecation_warning(tiny_model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = xplain.Method("old-form", "s", explain=_saliency_legacy)
        new = xplain.Method("new-form", "s", explain=_saliency_v1)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(messages) == 1 and "'old-form'" in messages[0] and "ExplainRequest" in messages[0]
    assert caught[0].filename == __file__  # the warning points at the plugin's declaration
    x = tiny_model.example_input(2, seed=1)
    t = torch.tensor([1, 2])
    torch.testing.assert_close(
        run_method(tiny_model, old, x, t, {}, 0).maps, run_method(tiny_model, new, x, t, {}, 0).maps
    )


def test_positional_score_gets_the_old_context_dict(tiny_model):
    seen = {}

    def old_score(model, x, targets, attribution, context):
        seen.update(context)
        return {"old": attribution.maps.flatten(1).sum(1)}

    with pytest.warns(DeprecationWarning, match="'old'.*MetricContext"):
        metric = xplain.Metric("old", "s", score=old_score)
    x = tiny_model.example_input(2)
    maps = torch.ones(2, 16, 16)
    out = metric.compute(
        tiny_model, x, torch.tensor([0, 1]), xplain.Attribution(maps), seed=4, boxes=[None, None]
    )
    torch.testing.assert_close(out["old"], torch.full((2,), 256.0))
    assert seen["seed"] == 4 and seen["boxes"] == [None, None] and seen["params"] == {}
    assert {"cache", "explain", "method", "forward_batch", "box_labels"} <= set(seen)


def test_a_callable_of_another_shape_is_refused_at_declaration():
    with pytest.raises(TypeError, match="'bad'.*one argument"):
        xplain.Method("bad", "s", explain=lambda a, b: None)
    with pytest.raises(ValueError, match="'ref'.*package.module:function"):
        xplain.Method("ref", "s", explain="no_colon_here")


def test_lazy_reference_is_imported_on_first_use(tiny_model, tmp_path, monkeypatch):
    (tmp_path / "lazy_impl_mod.py").write_text(
        textwrap.dedent("""
        import torch

        def explain(request):
            return torch.full((request.x.shape[0], 16, 16), float(request.params["v"]))
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    method = xplain.Method(
        "lazy",
        "s",
        explain="lazy_impl_mod:explain",
        params=[xplain.Param("v", "float", 2.0, "value")],
    )
    assert "lazy_impl_mod" not in sys.modules  # declaring (registering) imports nothing
    maps = run_method(
        tiny_model, method, tiny_model.example_input(1), torch.tensor([0]), {"v": 3.0}, 0
    ).maps
    assert "lazy_impl_mod" in sys.modules and float(maps.mean()) == 3.0
    monkeypatch.delitem(sys.modules, "lazy_impl_mod")
    broken = xplain.Method("broken", "s", explain="lazy_impl_mod:missing")
    with pytest.raises(xplain.PluginError, match="'broken'.*lazy_impl_mod:missing"):
        run_method(tiny_model, broken, tiny_model.example_input(1), torch.tensor([0]), {}, 0)


def test_a_loader_hook_returning_no_model_is_a_plugin_error(tmp_path):
    class Wrong:
        @xplain.hookimpl
        def load_model(self, path, options):
            return object()  # not an xplain.Model

    registry = Registry().discover()
    registry.register_plugin(Wrong(), "wrong")
    with pytest.raises(xplain.PluginError, match="returned object, not an xplain.Model"):
        xplain.load_model(REPO / "sample_models" / "digits_mlp.onnx", registry=registry)
