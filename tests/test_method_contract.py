"""ARCHITECTURE.md's contract, checked for every registered method (built-in or installed)."""

from __future__ import annotations

import pytest
import torch

import xplain
from xplain.run.api import run_method
from xplain.plugins.registry import Registry

from .conftest import fit_for_tests

METHODS = sorted(Registry().discover().methods)


def _method(name):
    return Registry().discover().method(name)


_FITTED: dict = {}


@pytest.fixture()
def prepared(tiny_model, tmp_path_factory):
    """``prepare(method)`` gives tiny_model, with fitted state for methods that need fitting
    (fitted once per session by :func:`conftest.fit_for_tests`, in a temporary state dir)."""
    saved = tiny_model.state_dir

    def prepare(method):
        if method.capabilities.needs_fitting:
            if method.name not in _FITTED:
                _FITTED[method.name] = tmp_path_factory.mktemp("state")
                fit_for_tests(tiny_model, method, _FITTED[method.name])
            tiny_model.state_dir = _FITTED[method.name]
        return tiny_model

    yield prepare
    tiny_model.state_dir = saved


def _state(model):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.graph.modules())
    modules = {name: id(m) for name, m in model.graph.named_modules()}
    return model.graph.code, hooks, modules


@pytest.mark.parametrize("name", METHODS)
def test_contract_shapes_finite_deterministic(name, prepared):
    method = _method(name)
    tiny_model = prepared(method)
    x = tiny_model.example_input(3, seed=1)
    targets = torch.tensor([0, 3, 1])
    params = xplain.validate_params(method.params, {}, name)
    first = run_method(tiny_model, method, x, targets, params, seed=7)
    assert first.maps.shape == (3, 16, 16) and first.maps.dtype == torch.float32
    assert torch.isfinite(first.maps).all()
    again = run_method(tiny_model, method, x, targets, params, seed=7)
    torch.testing.assert_close(first.maps, again.maps, rtol=0, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_contract_batch_consistency(name, prepared):
    method = _method(name)
    tiny_model = prepared(method)
    x = tiny_model.example_input(2, seed=2)
    targets = torch.tensor([2, 1])
    params = xplain.validate_params(method.params, {}, name)
    both = run_method(tiny_model, method, x, targets, params, seed=3).maps
    one = torch.cat([run_method(tiny_model, method, x[i:i + 1], targets[i:i + 1], params, seed=3).maps for i in range(2)])
    torch.testing.assert_close(both, one, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_contract_model_restored_also_after_error(name, prepared, monkeypatch):
    method = _method(name)
    tiny_model = prepared(method)
    before = _state(tiny_model)
    x = tiny_model.example_input(2)
    params = xplain.validate_params(method.params, {}, name)
    run_method(tiny_model, method, x, torch.tensor([0, 1]), params, seed=0)
    assert _state(tiny_model) == before
    calls = {"n": 0}
    real = type(tiny_model.graph).__call__

    def boom(self, *args, **kwargs):  # fail inside the method, after it has prepared the graph
        calls["n"] += 1
        raise RuntimeError("injected failure")

    monkeypatch.setattr(type(tiny_model.graph), "__call__", boom)
    try:
        with pytest.raises(xplain.PluginError, match="injected failure"):
            run_method(tiny_model, method, x, torch.tensor([0, 1]), params, seed=0)
    except pytest.fail.Exception:
        if calls["n"] == 0:  # a method that never runs the model cannot fail inside it
            pass
        else:
            raise
    monkeypatch.setattr(type(tiny_model.graph), "__call__", real)
    assert _state(tiny_model) == before


def test_saliency_matches_finite_differences(tiny_model):
    x = tiny_model.example_input(1, seed=5).double().float()
    target = 2
    maps = xplain.explain(tiny_model, x, targets=[target], method="saliency").maps[0]
    grad = torch.zeros_like(x)
    h = 1e-2
    rng = torch.Generator().manual_seed(0)
    picks = [(int(torch.randint(3, (1,), generator=rng)), int(torch.randint(16, (1,), generator=rng)),
              int(torch.randint(16, (1,), generator=rng))) for _ in range(12)]
    with torch.no_grad():
        for c, i, j in picks:
            e = torch.zeros_like(x)
            e[0, c, i, j] = h
            grad[0, c, i, j] = (tiny_model(x + e)[0, target] - tiny_model(x - e)[0, target]) / (2 * h)
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(tiny_model(xr)[0, target], xr)
    for c, i, j in picks:
        assert abs(g[0, c, i, j] - grad[0, c, i, j]) <= 2e-3 * max(1.0, abs(float(grad[0, c, i, j])))
    torch.testing.assert_close(maps, g[0].abs().amax(dim=0))


def test_random_depends_on_seed_and_image_only(tiny_model):
    x = tiny_model.example_input(2, seed=9)
    a = xplain.explain(tiny_model, x, targets=[0, 0], method="random", seed=1).maps
    b = xplain.explain(tiny_model, x.flip(0), targets=[0, 0], method="random", seed=1).maps
    c = xplain.explain(tiny_model, x, targets=[0, 0], method="random", seed=2).maps
    torch.testing.assert_close(a, b.flip(0))
    assert not torch.allclose(a, c)
    assert 0 <= float(a.min()) and float(a.max()) < 1
