"""Forward-only passes (xplain.images_per_forward_pass): sized by the activations alive at once in
one forward, not by all of them; the live memory of such a pass stays within the budget, and the
forward-only methods and metrics use it without any map or score changing."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import xplain
from xplain.plugins import passes

from .conftest import export_classic

ACT = 8 * 32 * 32 * 4  # one 8×32×32 float32 activation of the models below, at batch 1


class _Chain(nn.Module):
    """conv → ReLU repeated: at most an input and an output alive at once."""

    def __init__(self, depth=8, residual=False):
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(depth))
        self.residual = residual
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.first(x))
        for conv in self.convs:
            h = conv(h) + h if self.residual else torch.relu(conv(h))
        return self.head(h.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    torch.manual_seed(0)
    path = export_classic(_Chain().eval(), tmp_path_factory.mktemp("fw") / "c.onnx", (1, 3, 32, 32))
    return xplain.load_model(path, device="cpu", engine="torch")


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    torch.manual_seed(1)
    module = _Chain(residual=True).eval()
    path = export_classic(module, tmp_path_factory.mktemp("fw") / "r.onnx", (1, 3, 32, 32))
    return xplain.load_model(path, device="cpu", engine="torch")


class _LiveBytes(TorchDispatchMode):
    """The most bytes of tensor storage alive at once while the mode is on (each new storage
    counted from the op that made it until its tensor is garbage)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _drop(self, key):
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage().data_ptr()
                if key and key not in self.live:
                    self.live[key] = t.untyped_storage().nbytes()
                    self.now += self.live[key]
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(t, self._drop, key)
        return out


def _live_peak(fn) -> int:
    with _LiveBytes() as mode:
        fn()
    return mode.peak


def test_forward_peak_is_the_liveness_peak_hand_computed(chain, residual):
    """A chain holds a conv's input and output (2 activations); a residual block also keeps the
    skip while conv and add run (3); plus one largest activation of headroom. The backward sizing
    counts every activation (18 in the chain)."""
    assert passes.forward_peak_bytes(chain) == 2 * ACT + ACT
    assert passes.forward_peak_bytes(residual) == 3 * ACT + ACT
    assert passes.image_cost_bytes(chain) >= 18 * ACT


def test_forward_pass_live_memory_stays_in_the_budget(chain):
    budget_mb = 1.0
    n = xplain.images_per_forward_pass(chain, 0, budget_mb)
    backward = xplain.images_per_pass(chain, 0, budget_mb)
    assert n >= 5 * backward  # not the backward sizing (which keeps every activation)
    x = torch.randn(n, 3, 32, 32)
    measured = _live_peak(lambda: chain.infer(x))
    assert 0.5 * budget_mb * 2**20 < measured <= budget_mb * 2**20  # bounded, and not wasteful
    assert _live_peak(lambda: chain.infer(torch.randn(2 * n, 3, 32, 32))) > budget_mb * 2**20
    # the same images with autograd's saved tensors would not fit: why backward passes are smaller
    assert _live_peak(lambda: chain(x.requires_grad_()).sum().backward()) > budget_mb * 2**20
    assert xplain.images_per_forward_pass(chain, 7, 1e-6) == 7  # an explicit count wins
    assert xplain.images_per_forward_pass(chain, 0, 1e-6) == 1  # never fewer than one


def test_forward_default_keeps_the_cpu_tensor_ceiling(chain):
    fit = int(passes.default_budget_mb(chain.device) * 2**20 // passes.forward_peak_bytes(chain))
    cap = int(passes.DEFAULT_TENSOR_MB * 2**20 // passes.largest_activation_bytes(chain))
    assert xplain.images_per_forward_pass(chain) == max(1, min(fit, cap))


def test_forward_sizing_on_a_gpu_is_bounded_by_the_budget_alone(monkeypatch, chain):
    monkeypatch.setattr(passes, "free_memory_mb", lambda device: 1e6)

    class OnCuda:  # the chain's graph knowledge, on a (pretended) GPU
        device = torch.device("cuda")
        _shapes = chain._shapes
        _known = chain._known

    on_gpu = OnCuda()
    budget = passes.DEFAULT_BUDGET_MB_CUDA * 2**20
    assert xplain.images_per_forward_pass(on_gpu) == int(budget // (3 * ACT))
    assert xplain.images_per_forward_pass(on_gpu) > 5 * xplain.images_per_pass(on_gpu)


def _pass_sizes(model, fn):
    seen: list[int] = []
    handle = model.graph.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        return fn(), seen
    finally:
        handle.remove()


FORWARD_ONLY = [
    ("occlusion", {"patch": 8, "stride": 8}),
    ("score-cam", {}),
    ("lime", {"cell": 8, "n_samples": 12}),
    ("kernel-shap", {"cell": 8, "n_samples": 12}),
    ("rise", {"n_masks": 24, "s": 4}),
]


@pytest.mark.parametrize("method,params", FORWARD_ONLY, ids=[m for m, _ in FORWARD_ONLY])
def test_forward_only_methods_size_by_the_forward_peak_and_keep_the_map(chain, method, params):
    registry = xplain.get_registry()
    if method not in registry.methods:
        pytest.skip(f"{method} is not installed")
    x = chain.example_input(2, seed=5)
    t = torch.tensor([1, 3])
    four = 4 * passes.forward_peak_bytes(chain) / 2**20  # MB: four images' forward peak

    def run(budget):
        return xplain.explain(
            chain, x, t, method, {**params, "memory_budget_mb": budget}, seed=4, engine="torch"
        ).maps

    small, sizes = _pass_sizes(chain, lambda: run(four))
    large, large_sizes = _pass_sizes(chain, lambda: run(1e6))
    torch.testing.assert_close(small, large, rtol=1e-5, atol=1e-6 * float(large.abs().max()))
    assert max(sizes) == 4  # the backward sizing would give 1 image per pass at this budget
    assert max(large_sizes) > 4
    assert sum(sizes) == sum(large_sizes)  # the same work


def test_forward_metrics_size_by_the_forward_peak_and_keep_the_score(chain):
    x = chain.example_input(2, seed=6)
    t = torch.tensor([0, 2])
    attribution = xplain.explain(chain, x, t, "gradient", engine="torch")
    metric = xplain.get_registry().metric("deletion")
    four = 4 * passes.forward_peak_bytes(chain) / 2**20

    def score(budget):
        return metric.compute(chain, x, t, attribution, params={"memory_budget_mb": budget})

    small, sizes = _pass_sizes(chain, lambda: score(four))
    large, _ = _pass_sizes(chain, lambda: score(1e6))
    torch.testing.assert_close(
        torch.as_tensor(small["deletion"]), torch.as_tensor(large["deletion"]), rtol=1e-5, atol=1e-6
    )
    assert max(sizes) == 4
