"""ARCHITECTURE.md's contract, checked for every registered method (built-in or installed) by
the same functions a third-party plugin runs in its own tests (:mod:`xplain.testing`)."""

from __future__ import annotations

import itertools

import pytest
import torch

import xplain
import xplain.testing as xt
from xplain.plugins.registry import Registry
from xplain.run.api import run_method

from .conftest import fit_for_tests

METHODS = sorted(Registry().discover().methods)


def _method(name):
    return Registry().discover().method(name)


_FITTED: dict = {}


def _meets(model, method) -> bool:
    return all(
        model.requirement_problem(r) is None for r in getattr(method.capabilities, "requires", ())
    )


@pytest.fixture()
def prepared(tiny_model, tiny_transformer, tmp_path_factory):
    """``prepare(method)`` gives tiny_model, with fitted state for methods that need fitting
    (fitted once per session by :func:`conftest.fit_for_tests`, in a temporary state dir); a
    method whose declared requirements the CNN does not meet (attention) gets a tiny DeiT-like
    transformer instead (its refusal on the CNN is checked in test_contract_requirements)."""
    saved = tiny_model.state_dir

    def prepare(method):
        if not _meets(tiny_model, method):
            assert _meets(tiny_transformer, method), (
                f"{method.name}: no test model meets {method.capabilities}"
            )
            return tiny_transformer
        if method.capabilities.needs_fitting:
            if method.name not in _FITTED:
                _FITTED[method.name] = tmp_path_factory.mktemp("state")
                fit_for_tests(tiny_model, method, _FITTED[method.name])
            tiny_model.state_dir = _FITTED[method.name]
        return tiny_model

    yield prepare
    tiny_model.state_dir = saved


def _state(model):
    return xt.graph_state(model)


@pytest.mark.parametrize("name", METHODS)
def test_contract_shapes_finite_deterministic(name, prepared):
    method = _method(name)
    xt.check_output(method, prepared(method))


@pytest.mark.parametrize("name", METHODS)
def test_contract_batch_consistency(name, prepared):
    method = _method(name)
    xt.check_batch_consistency(method, prepared(method))


@pytest.mark.parametrize("name", METHODS)
def test_contract_model_restored_also_after_error(name, prepared):
    method = _method(name)
    xt.check_graph_restored(method, prepared(method))


def test_checks_catch_a_method_that_breaks_the_contract(tiny_model):
    """The checks are not vacuous: a method that leaves a hook behind, or depends on its batch,
    fails them with a message naming it."""

    handles = []

    def leaky(request):
        handles.append(request.model.graph.register_forward_hook(lambda *a: None))
        return request.x.sum(dim=1)

    def batch_dependent(request):
        return request.x.sum(dim=1) - request.x.sum(dim=1).mean(dim=0)

    try:
        with pytest.raises(AssertionError, match="'leaky'.*not restored"):
            xt.check_graph_restored(xplain.Method("leaky", "", explain=leaky), tiny_model)
    finally:
        for handle in handles:
            handle.remove()
    with pytest.raises(AssertionError, match="'batchy'.*batch of 2"):
        xt.check_batch_consistency(xplain.Method("batchy", "", explain=batch_dependent), tiny_model)
    noisy = xplain.Method("noisy", "", explain=lambda r: torch.rand(r.x.shape[0], *r.x.shape[2:]))
    xt.check_output(noisy, tiny_model)  # the global RNG is seeded per call: still deterministic
    calls = itertools.count()
    unseeded = xplain.Method(
        "unseeded",
        "",
        explain=lambda r: torch.full((r.x.shape[0], *r.x.shape[2:]), float(next(calls))),
    )
    with pytest.raises(AssertionError, match="'unseeded'.*not deterministic"):
        xt.check_output(unseeded, tiny_model)


@pytest.mark.parametrize("name", METHODS)
def test_contract_requirements(name, tiny_model, tiny_transformer):
    """A method either runs on a model or refuses it *before running*, with the documented
    error (UsageError, exit 2) in one line that names what the model lacks; the graph is untouched."""
    method = _method(name)
    params = xplain.validate_params(method.params, {}, name)
    for model in (tiny_model, tiny_transformer):
        if _meets(model, method):
            continue
        before = _state(model)
        with pytest.raises(xplain.UsageError) as info:
            run_method(model, method, model.example_input(1), torch.tensor([0]), params)
        assert info.value.exit_code == 2 and "\n" not in str(info.value) and name in str(info.value)
        assert _state(model) == before


def test_saliency_matches_finite_differences(tiny_model):
    x = tiny_model.example_input(1, seed=5).double().float()
    target = 2
    maps = xplain.explain(tiny_model, x, targets=[target], method="saliency").maps[0]
    grad = torch.zeros_like(x)
    h = 1e-2
    rng = torch.Generator().manual_seed(0)
    picks = [
        (
            int(torch.randint(3, (1,), generator=rng)),
            int(torch.randint(16, (1,), generator=rng)),
            int(torch.randint(16, (1,), generator=rng)),
        )
        for _ in range(12)
    ]
    with torch.no_grad():
        for c, i, j in picks:
            e = torch.zeros_like(x)
            e[0, c, i, j] = h
            grad[0, c, i, j] = (tiny_model(x + e)[0, target] - tiny_model(x - e)[0, target]) / (
                2 * h
            )
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(tiny_model(xr)[0, target], xr)
    for c, i, j in picks:
        assert abs(g[0, c, i, j] - grad[0, c, i, j]) <= 2e-3 * max(
            1.0, abs(float(grad[0, c, i, j]))
        )
    torch.testing.assert_close(maps, g[0].abs().amax(dim=0))


def test_random_depends_on_seed_and_image_only(tiny_model):
    x = tiny_model.example_input(2, seed=9)
    a = xplain.explain(tiny_model, x, targets=[0, 0], method="random", seed=1).maps
    b = xplain.explain(tiny_model, x.flip(0), targets=[0, 0], method="random", seed=1).maps
    c = xplain.explain(tiny_model, x, targets=[0, 0], method="random", seed=2).maps
    torch.testing.assert_close(a, b.flip(0))
    assert not torch.allclose(a, c)
    assert float(a.min()) >= 0 and float(a.max()) < 1
