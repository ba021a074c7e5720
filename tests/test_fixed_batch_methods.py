"""Every method gives the same maps on a graph fixed at batch 1 as on the same network with a
dynamic batch: the model then runs one sample per graph call, which breaks any method that
assumes one call sees the whole batch (taps, hooks, inserted modules)."""

from __future__ import annotations

import pytest
import torch

import xplain
from xplain.plugins.registry import Registry
from xplain.run.api import run_method

from .conftest import export_classic, fit_for_tests, tiny_cnn

METHODS = sorted(Registry().discover().methods)


@pytest.fixture(scope="module")
def twin_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixed")
    dynamic = export_classic(tiny_cnn(), folder / "dynamic.onnx", (2, 3, 16, 16))
    fixed = export_classic(tiny_cnn(), folder / "fixed.onnx", (1, 3, 16, 16), dynamic=False)
    return xplain.load_model(dynamic, device="cpu"), xplain.load_model(fixed, device="cpu")


@pytest.fixture(scope="module")
def twin_transformers(tmp_path_factory):
    """The same for a DeiT-like transformer (methods that need attention)."""
    from .tiny_transformers import TinyDeiT

    folder = tmp_path_factory.mktemp("fixed_vit")
    dynamic = export_classic(TinyDeiT(), folder / "dynamic.onnx", (2, 3, 32, 32))
    fixed = export_classic(TinyDeiT(), folder / "fixed.onnx", (1, 3, 32, 32), dynamic=False)
    return xplain.load_model(dynamic, device="cpu"), xplain.load_model(fixed, device="cpu")


@pytest.mark.parametrize("name", METHODS)
def test_fixed_batch_graph_gives_the_dynamic_graphs_maps(name, twin_models, request, tmp_path):
    method = Registry().discover().method(name)
    dynamic, fixed = twin_models
    if any(dynamic.requirement_problem(r) for r in method.capabilities.requires):
        dynamic, fixed = request.getfixturevalue("twin_transformers")
    assert fixed.spec.fixed_batch and not dynamic.spec.fixed_batch
    if method.capabilities.needs_fitting:  # fitted on each graph from the same data
        fit_for_tests(dynamic, method, tmp_path / "dynamic")
        fit_for_tests(fixed, method, tmp_path / "fixed")
    x = dynamic.example_input(3, seed=5)
    targets = torch.tensor([1, 0, 3])
    params = xplain.validate_params(method.params, {}, name)
    want = run_method(dynamic, method, x, targets, params, seed=2).maps
    got = run_method(fixed, method, x, targets, params, seed=2).maps
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
