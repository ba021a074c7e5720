"""Many-pass methods sized to a memory budget (xplain.plugins.passes): the budget decides how
many images go through each forward/backward pass, is validated, and never changes a map."""

from __future__ import annotations

import pytest
import torch

import xplain
from xplain.plugins import passes


def _close(ours, ref):
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def _pass_sizes(model, fn):
    seen = []
    handle = model.graph.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[0])
    )
    try:
        return fn(), seen
    finally:
        handle.remove()


def test_image_cost_is_the_sum_of_every_float_activation(tiny_model):
    expected = 0
    for shape, dtype in tiny_model._shapes.values():
        if dtype.is_floating_point:
            expected += 4 * int(torch.tensor(shape).prod())
    assert passes.image_cost_bytes(tiny_model) == expected > 0
    cost_mb = expected / 2**20
    assert xplain.images_per_pass(tiny_model, 0, 10 * cost_mb) == 10
    assert xplain.images_per_pass(tiny_model, 0, 10.5 * cost_mb) == 10
    assert xplain.images_per_pass(tiny_model, 0, 0.1 * cost_mb) == 1  # never fewer than one image
    assert xplain.images_per_pass(tiny_model, 7, 0.1 * cost_mb) == 7  # an explicit count wins
    largest = passes.largest_activation_bytes(tiny_model)
    assert 0 < largest < expected
    fit = int(passes.default_budget_mb(tiny_model.device) * 2**20 // expected)
    cap = int(passes.DEFAULT_TENSOR_MB * 2**20 // largest)
    assert xplain.images_per_pass(tiny_model) == max(1, min(fit, cap))


def test_default_budget_is_a_quarter_of_free_memory_capped(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(passes, "free_memory_mb", lambda device: 400.0)
    assert passes.default_budget_mb(cpu) == 100.0
    monkeypatch.setattr(passes, "free_memory_mb", lambda device: 1e6)
    assert passes.default_budget_mb(cpu) == passes.DEFAULT_BUDGET_MB
    monkeypatch.setattr(passes, "free_memory_mb", lambda device: None)
    assert passes.default_budget_mb(cpu) == passes.DEFAULT_BUDGET_MB


@pytest.mark.parametrize(
    "method,params",
    [
        ("integrated-gradients", {"steps": 6}),
        ("smoothgrad", {"samples": 5}),
        ("occlusion", {"patch": 4, "stride": 2}),
    ],
)
def test_budget_changes_the_passes_not_the_map(tiny_model, method, params):
    x = tiny_model.example_input(3, seed=21)
    t = torch.tensor([0, 2, 1])
    forward_only = method == "occlusion"  # sized by one forward's live activations
    cost = passes.forward_peak_bytes if forward_only else passes.image_cost_bytes
    one = cost(tiny_model) / 2**20  # MB of one image
    small, small_passes = _pass_sizes(
        tiny_model,
        lambda: (
            xplain.explain(
                tiny_model,
                x,
                t,
                method,
                {**params, "memory_budget_mb": one},
                seed=3,
                engine="torch",
            ).maps
        ),
    )
    large, large_passes = _pass_sizes(
        tiny_model,
        lambda: (
            xplain.explain(
                tiny_model,
                x,
                t,
                method,
                {**params, "memory_budget_mb": 1e6},
                seed=3,
                engine="torch",
            ).maps
        ),
    )
    _close(small, large)
    extra = 1 if method == "occlusion" else 0  # occlusion's reference forward of the whole batch
    assert set(small_passes[extra:]) == {1}  # a budget of one image: one image per pass
    assert len(large_passes) == extra + 1  # everything in one pass
    assert sum(small_passes[extra:]) == sum(large_passes[extra:])  # the same work


@pytest.mark.parametrize(
    "method,key",
    [
        ("integrated-gradients", "internal_batch"),
        ("smoothgrad", "internal_batch"),
        ("occlusion", "batch"),
    ],
)
@pytest.mark.parametrize(
    "bad",
    [("count", "-1"), ("count", "2.5"), ("count", "5000"), ("budget", "-1"), ("budget", "lots")],
)
def test_pass_parameters_are_validated(tiny_model, method, key, bad):
    which, value = bad
    name = key if which == "count" else "memory_budget_mb"
    with pytest.raises(xplain.UsageError, match=name):
        xplain.explain(tiny_model, tiny_model.example_input(1), [0], method, {name: value})


def test_integrated_gradients_splits_a_batch_larger_than_the_budget(tiny_model):
    """Fewer images per pass than the batch: groups of images, one interpolation point each."""
    x = tiny_model.example_input(5, seed=22)
    t = torch.tensor([0, 1, 2, 3, 0])
    split, sizes = _pass_sizes(
        tiny_model,
        lambda: (
            xplain.explain(
                tiny_model, x, t, "integrated-gradients", {"steps": 4, "internal_batch": 2}
            ).maps
        ),
    )
    whole = xplain.explain(
        tiny_model, x, t, "integrated-gradients", {"steps": 4, "internal_batch": 20}
    ).maps
    assert sizes == [2] * 4 + [2] * 4 + [1] * 4  # images 0-1, 2-3, 4: four points each
    _close(split, whole)


def test_input_iba_stage3_passes_do_not_change_the_map(tiny_model):
    """InputIBA's input bottleneck: B×copies noisy images per step, split by the memory budget."""
    x = tiny_model.example_input(2, seed=23)
    t = torch.tensor([1, 3])
    params = {"gan_epochs": 0, "input_steps": 3, "steps": 2, "batch_size": 3}
    one = passes.image_cost_bytes(tiny_model) / 2**20
    small, sizes = _pass_sizes(
        tiny_model,
        lambda: (
            xplain.explain(
                tiny_model, x, t, "input-iba", {**params, "memory_budget_mb": 2 * one}, seed=5
            ).maps
        ),
    )
    large = xplain.explain(
        tiny_model, x, t, "input-iba", {**params, "memory_budget_mb": 1e6}, seed=5
    ).maps
    assert sizes[-3:] == [2, 2, 2]  # the last step's 2×3 copies in passes of two
    _close(small, large)


def test_gpu_default_has_its_own_ceiling_and_no_tensor_cap(monkeypatch, tiny_model):
    """The CPU ceilings (256 MB, 16 MB per activation) are about glibc; on CUDA only a quarter
    of free device memory, at most DEFAULT_BUDGET_MB_CUDA, bounds a pass (3 Lite0 images per
    kernel would leave a GPU idle)."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(passes, "free_memory_mb", lambda device: 1e6)
    assert passes.default_budget_mb(cuda) == passes.DEFAULT_BUDGET_MB_CUDA
    monkeypatch.setattr(passes, "free_memory_mb", lambda device: 400.0)
    assert passes.default_budget_mb(cuda) == 100.0
    monkeypatch.setattr(passes, "free_memory_mb", lambda device: 1e6)

    class OnCuda:  # the model's shapes, on a (pretended) GPU
        device = cuda
        _shapes = tiny_model._shapes

    on_gpu = OnCuda()
    cost = passes.image_cost_bytes(tiny_model)
    assert passes.images_per_pass(on_gpu) == int(passes.DEFAULT_BUDGET_MB_CUDA * 2**20 // cost)
    assert passes.images_per_pass(on_gpu) > passes.images_per_pass(tiny_model)
