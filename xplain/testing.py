"""The plugin contract as checks a plugin author runs in their own test suite.

xplain's own contract tests (``tests/test_method_contract.py``, ``tests/test_fixed_batch_methods.py``,
``tests/test_metrics.py``) call these same functions for every registered method and metric, so
a third-party plugin is held to exactly the built-ins' standard::

    import xplain.testing

    def test_my_method_keeps_the_contract():
        xplain.testing.check_method("my-method")

    def test_my_metric_keeps_the_contract():
        xplain.testing.check_metric("my-metric")

A failed check raises ``AssertionError`` with a message naming the method (or metric) and the
rule it broke. Without a ``model`` the checks build a small convolutional classifier (conv,
BatchNorm, ReLU, max-pool, residual add, ReLU6, global pooling, linear head; 4 classes, 3×16×16
inputs), export it to ONNX in a temporary folder and load it through xplain's normal loader,
once per process; exporting needs only torch and onnx. Methods that learn from data are fitted
on 16 example inputs first.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import PluginError
from .graph.model import Model
from .onnx.export import export_classifier
from .plugins.plugin_api import Attribution, Method, Metric
from .plugins.registry import Registry, get_registry, validate_params
from .run.api import load_model, run_method

__all__ = [
    "METHOD_CHECKS",
    "check_batch_consistency",
    "check_fixed_batch",
    "check_graph_restored",
    "check_method",
    "check_metric",
    "check_output",
    "example_models",
    "fit_example_state",
    "graph_state",
    "tiny_cnn",
]


# ----------------------------------------------------------------------------- example models
def tiny_cnn(seed: int = 0) -> nn.Module:
    """Conv+BN+ReLU, max-pool, a residual block, a ReLU6, global pooling, linear head: 4 classes.

    Small enough for a test, yet it has every structure a method must handle: a bias folded
    with BatchNorm (non-trivial statistics), a residual add, a rectifier other than ReLU."""
    torch.manual_seed(seed)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
            )
            self.branch = nn.Sequential(
                nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
            )
            self.act = nn.ReLU6()
            self.head = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            h = self.act(h + self.branch(h))
            return self.head(h.mean(dim=(2, 3)))

    model = Tiny()
    with torch.no_grad():  # non-trivial BatchNorm statistics so folding matters
        bn = model.stem[1]
        assert (
            isinstance(bn, nn.BatchNorm2d)
            and bn.running_mean is not None
            and bn.running_var is not None
        )
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def export_classic(
    module: nn.Module, path: Path, shape: Sequence[int], dynamic: bool = True, opset: int = 17
) -> Path:
    """Export with the TorchScript exporter (classic opset ≤ 17 graphs), input ``input``,
    output ``logits``; ``dynamic`` makes the batch dimension dynamic (``shape`` includes it)."""
    return export_classifier(
        module,
        path,
        tuple(shape[1:]),
        "classic",
        dynamic,
        opset,
        input_name="input",
        batch=shape[0],
    )


_FOLDER: list[tempfile.TemporaryDirectory] = []  # lives as long as the process


@functools.lru_cache(maxsize=1)
def example_models() -> tuple[Model, Model]:
    """The example classifier twice, loaded by xplain: with a dynamic batch and fixed at batch 1
    (same weights). Built once per process in a temporary folder."""
    _FOLDER.append(tempfile.TemporaryDirectory(prefix="xplain-testing-"))
    folder = Path(_FOLDER[-1].name)
    dynamic = export_classic(tiny_cnn(), folder / "dynamic.onnx", (2, 3, 16, 16))
    fixed = export_classic(tiny_cnn(), folder / "fixed.onnx", (1, 3, 16, 16), dynamic=False)
    return load_model(dynamic, device="cpu"), load_model(fixed, device="cpu")


def fit_example_state(model: Model, method: Method, root: str | Path) -> None:
    """Fit ``method`` on 16 example inputs whose labels cycle over the classes (two batches,
    through the same ``fit(model, batches, params, console)`` contract as ``xplain fit``), save
    the state under ``root`` and point the model at it."""
    from .run.fitting import FitConsole
    from .run.state import save_state

    fit = method.fit_fn()
    if fit is None:
        raise ValueError(f"method {method.name!r} has no fit step")
    x = model.example_input(16, seed=11)
    ys = torch.arange(16) % model.num_classes

    def batches(labels: bool = False) -> Iterator[Any]:
        for i in range(0, 16, 8):
            yield (x[i : i + 8], ys[i : i + 8]) if labels else x[i : i + 8]

    params = validate_params(method.params, {}, method.name)
    tensors, meta = fit(model, batches, params, FitConsole())
    save_state(model.digest, method.name, tensors, meta, root=root)
    model.state_dir = Path(root)


@contextlib.contextmanager
def _prepared(model: Model, method: Method) -> Iterator[Model]:
    """``model`` with fitted state for a method that needs it (in a temporary folder, fitted
    once per model and method), the model's own state folder restored afterwards."""
    if not method.capabilities.needs_fitting:
        yield model
        return
    saved = model.state_dir
    key = (method.name, model.digest)  # state is keyed by the model's digest anyway
    if key not in _FITTED:
        _FOLDER.append(tempfile.TemporaryDirectory(prefix="xplain-testing-state-"))
        fit_example_state(model, method, _FOLDER[-1].name)
        _FITTED[key] = Path(_FOLDER[-1].name)
    model.state_dir = _FITTED[key]
    try:
        yield model
    finally:
        model.state_dir = saved


_FITTED: dict[tuple[str, str], Path] = {}  #: (method, model digest) -> state folder


# ----------------------------------------------------------------------------- method checks
def _method(name: str | Method, registry: Registry | None) -> Method:
    return name if isinstance(name, Method) else (registry or get_registry()).method(name)


def _targets(model: Model, picks: Sequence[int]) -> torch.Tensor:
    return torch.tensor([p % model.num_classes for p in picks], device=model.device)


def graph_state(model: Model) -> tuple[str, int, dict[str, int]]:
    """What a method must leave as it found it: the graph's code, the number of hooks, and
    which module object sits at every name."""
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.graph.modules()
    )
    modules = {name: id(m) for name, m in model.graph.named_modules()}
    return model.graph.code, hooks, modules


def check_output(
    method: str | Method,
    model: Model | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    seed: int = 7,
) -> Attribution:
    """Maps are float32 B×H×W at the model's input size, finite, and identical when the method
    runs again with the same seed. Returns the first attribution."""
    m = _method(method, registry)
    model = model if model is not None else example_models()[0]
    values = validate_params(m.params, params or {}, m.name)
    with _prepared(model, m):
        x = model.example_input(3, seed=1)
        targets = _targets(model, (0, 3, 1))
        first = run_method(model, m, x, targets, values, seed=seed)
        expected = (3, model.spec.height, model.spec.width)
        assert tuple(first.maps.shape) == expected and first.maps.dtype == torch.float32, (
            f"method {m.name!r}: maps {tuple(first.maps.shape)} {first.maps.dtype}, expected {expected} float32"
        )
        assert torch.isfinite(first.maps).all(), f"method {m.name!r}: non-finite values in the maps"
        again = run_method(model, m, x, targets, values, seed=seed)
        assert torch.equal(first.maps, again.maps), (
            f"method {m.name!r}: not deterministic under a fixed seed (max difference "
            f"{float((first.maps - again.maps).abs().max()):.3g}); draw noise from request.generators"
        )
    return first


def check_batch_consistency(
    method: str | Method,
    model: Model | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    seed: int = 3,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> None:
    """A batch of two gives the maps of two batches of one: a sample's map never depends on
    what else is in its batch (per-sample generators, no batch statistics)."""
    m = _method(method, registry)
    model = model if model is not None else example_models()[0]
    values = validate_params(m.params, params or {}, m.name)
    with _prepared(model, m):
        x = model.example_input(2, seed=2)
        targets = _targets(model, (2, 1))
        both = run_method(model, m, x, targets, values, seed=seed).maps
        one = torch.cat(
            [
                run_method(model, m, x[i : i + 1], targets[i : i + 1], values, seed=seed).maps
                for i in range(2)
            ]
        )
        _close(
            both, one, rtol, atol, f"method {m.name!r}: a batch of 2 differs from 2 batches of 1"
        )


def check_graph_restored(
    method: str | Method,
    model: Model | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
) -> None:
    """The graph (code, hooks, modules) is as before after the method ran, and also after the
    model raised an error in the middle of the method."""
    m = _method(method, registry)
    model = model if model is not None else example_models()[0]
    values = validate_params(m.params, params or {}, m.name)
    with _prepared(model, m):
        before = graph_state(model)
        x = model.example_input(2)
        targets = _targets(model, (0, 1))
        run_method(model, m, x, targets, values, seed=0)
        assert graph_state(model) == before, (
            f"method {m.name!r}: the graph was not restored after a run"
        )
        cls = type(model.graph)
        calls = {"n": 0}

        def boom(
            self: Any, *args: Any, **kwargs: Any
        ) -> Any:  # fail after the method prepared the graph
            calls["n"] += 1
            raise RuntimeError("injected failure")

        had_own = "__call__" in cls.__dict__
        real = cls.__dict__.get("__call__")
        cls.__call__ = boom  # type: ignore[method-assign]
        try:
            try:
                run_method(model, m, x, targets, values, seed=0)
            except PluginError as err:
                assert "injected failure" in str(err), f"method {m.name!r}: unexpected error {err}"
            else:
                assert calls["n"] == 0, f"method {m.name!r} swallowed an error raised by the model"
        finally:
            if had_own:
                cls.__call__ = real  # type: ignore[method-assign,assignment]
            else:
                del cls.__call__
        assert graph_state(model) == before, (
            f"method {m.name!r}: the graph was not restored after an error inside the method "
            "(change it only through Model.swap_modules / insert_after / tap)"
        )


def check_fixed_batch(
    method: str | Method,
    dynamic: Model | None = None,
    fixed: Model | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> None:
    """The same network with a graph fixed at batch 1 (run one sample per graph call) gives the
    maps of the dynamic-batch graph: a method must not assume one graph call sees the batch."""
    m = _method(method, registry)
    if dynamic is None or fixed is None:
        dynamic, fixed = example_models()
    assert fixed.spec.fixed_batch and not dynamic.spec.fixed_batch, (
        "check_fixed_batch needs a fixed and a dynamic graph"
    )
    values = validate_params(m.params, params or {}, m.name)
    x = dynamic.example_input(3, seed=5)
    targets = _targets(dynamic, (1, 0, 3))
    with _prepared(dynamic, m):
        want = run_method(dynamic, m, x, targets, values, seed=2).maps
    with _prepared(fixed, m):
        got = run_method(fixed, m, x, targets, values, seed=2).maps
    _close(got, want, rtol, atol, f"method {m.name!r}: a graph fixed at batch 1 gives other maps")


#: every method check, by name (``check_method(..., checks=("output", "batch"))`` runs a subset)
METHOD_CHECKS: dict[str, Callable[..., Any]] = {
    "output": check_output,
    "batch": check_batch_consistency,
    "restored": check_graph_restored,
    "fixed-batch": check_fixed_batch,
}


def check_method(
    name: str | Method,
    model: Model | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    checks: Sequence[str] = tuple(METHOD_CHECKS),
) -> None:
    """Run the method contract checks on ``name`` (a registered name or a :class:`Method`).

    ``model``: the model to check on (default: the example classifier); the fixed-batch check
    runs only on the example pair. ``params``: parameters (defaults filled in)."""
    unknown = sorted(set(checks) - set(METHOD_CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; valid: {sorted(METHOD_CHECKS)}")
    method = _method(name, registry)
    if model is None:  # the example CNN: a method that needs more (attention) must bring a model
        problems = [
            p
            for r in method.capabilities.requires
            if (p := example_models()[0].requirement_problem(r))
        ]
        if problems:
            raise ValueError(
                f"method {method.name!r} needs {', '.join(method.capabilities.requires)}; "
                f"the example CNN does not meet that ({problems[0]}): pass model="
            )
    for check in checks:
        if check == "fixed-batch":
            if model is None:
                check_fixed_batch(method, params=params)
        else:
            METHOD_CHECKS[check](method, model, params=params)


# ----------------------------------------------------------------------------- metric checks
def check_metric(
    name: str | Metric,
    model: Model | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    method: str = "saliency",
    registry: Registry | None = None,
) -> None:
    """The metric contract: a non-empty dict whose headline key is the metric's name; per-sample
    ``(B,)`` scores (``B×T`` only for declared curves), finite or NaN (never ±inf); a batch of 3
    scores as three batches of 1 (a ``scope="dataset"`` metric: the scores of the batch permuted
    are the scores permuted); the model's graph and weights untouched.

    The maps come from ``method`` (default ``saliency``); every sample has one box."""
    reg = registry or get_registry()
    metric = name if isinstance(name, Metric) else reg.metric(name)
    explainer = reg.method(method)
    model = model if model is not None else example_models()[0]
    values = validate_params(metric.params, params or {}, metric.name)
    x = model.example_input(3, seed=4)
    targets = _targets(model, (0, 3, 1))
    attribution = run_method(model, explainer, x, targets, {}, 0)
    h, w = model.spec.height, model.spec.width
    boxes = [torch.tensor([[0.125 * w, 0.1875 * h, 0.5625 * w, 0.75 * h]], device=model.device)] * 3
    code = model.graph.code
    state = {k: v.clone() for k, v in model.graph.state_dict().items()}

    def run(sl: slice) -> Mapping[str, Any]:
        return metric.compute(
            model,
            x[sl],
            targets[sl],
            Attribution(attribution.maps[sl], {}),
            params=values,
            seed=0,
            cache={},
            forward_batch=16,
            boxes=boxes[sl],
            box_labels=[None] * len(boxes[sl]),
            method=explainer,
            method_params={},
            explain=lambda xx, tt: run_method(model, explainer, xx, tt, {}, 0),
        )

    full = {k: torch.as_tensor(v) for k, v in run(slice(0, 3)).items()}
    who = f"metric {metric.name!r}"
    assert full, f"{who} returned no scores"
    assert metric.name in full, f"{who}: the headline score must carry the metric's name"
    for key, value in full.items():
        if key.endswith("@x"):
            continue
        assert value.shape[0] == 3 and (value.ndim == 1 or key in metric.curves), (
            f"{who}: {key!r} has shape {tuple(value.shape)}; expected (B,) or a declared curve (B, T)"
        )
        assert not torch.isinf(value).any(), f"{who}: {key!r} holds infinite values"
    if metric.scope == "dataset":  # scored across the images: equivariant, not separable
        order = [2, 0, 1]
        x, targets = x[order], targets[order]
        attribution = Attribution(attribution.maps[order], {})
        boxes = [boxes[i] for i in order]
        parts = [{k: torch.as_tensor(v)[[1, 2, 0]] for k, v in run(slice(0, 3)).items()}]
        what = "of the batch permuted differs from the permuted scores"
    else:
        parts = [dict(run(slice(i, i + 1))) for i in range(3)]
        what = "of a batch of 3 differs from 3 batches of 1"
    for key, value in full.items():
        if not key.endswith("@x"):
            joined = torch.cat([torch.as_tensor(p[key]) for p in parts])
            _close(
                value,
                joined,
                1e-4,
                1e-5,
                f"{who}: {key!r} {what}",
            )
    assert model.graph.code == code, f"{who} left the graph changed"
    assert all(torch.equal(state[k], v) for k, v in model.graph.state_dict().items()), (
        f"{who} changed weights"
    )


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float, message: str) -> None:
    try:
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError as err:
        raise AssertionError(f"{message}: {err}") from None
