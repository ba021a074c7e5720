"""What a plugin sees: hook specifications and the declarations a method or metric makes.

This module imports no torch, so discovering plugins (``xplain methods``, ``xplain --help``)
stays fast. A plugin module exposes hook implementations::

    import xplain

    @xplain.hookimpl
    def register_methods(register):
        register(xplain.Method(name="my-method", summary="...", explain=_explain, params=[...]))

and imports torch only inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pluggy

PROJECT = "xplain"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class XplainHookSpecs:
    """The hooks xplain calls. Each receives a ``register`` callback owned by the core, which
    validates what it is given and records which plugin gave it."""

    @hookspec
    def register_methods(self, register: Callable[["Method"], None]) -> None:
        """Register attribution methods by calling ``register(Method(...))``."""

    @hookspec
    def register_metrics(self, register: Callable[["Metric"], None]) -> None:
        """Register evaluation metrics by calling ``register(Metric(...))``."""

    @hookspec(firstresult=True)
    def load_model(self, path: str, options: dict) -> Any:
        """Load a model file of another format; return an ``xplain.Model`` or None to pass.

        The built-in ONNX loader runs last, so a plugin can claim other formats (or override
        ONNX loading) by returning a model first."""


_PARAM_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class Param:
    """A typed, documented parameter of a method or metric (what ``--param k=v`` sets)."""

    name: str
    type: str  # "int" | "float" | "str" | "bool"
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None

    def __post_init__(self):
        if self.type not in _PARAM_TYPES:
            raise ValueError(f"parameter {self.name!r}: type must be one of {sorted(_PARAM_TYPES)}")

    def parse(self, text: Any) -> Any:
        """Convert a command-line string (or a Python value) to this parameter's type.

        Raises ValueError with a message fit for the user."""
        if self.type == "bool":
            if isinstance(text, bool):
                value = text
            elif str(text).lower() in _TRUE:
                value = True
            elif str(text).lower() in _FALSE:
                value = False
            else:
                raise ValueError(f"{self.name} expects true/false, got {text!r}")
        else:
            try:
                value = _PARAM_TYPES[self.type](text)
            except (TypeError, ValueError):
                raise ValueError(f"{self.name} expects {self.type}, got {text!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, self.choices))}; got {text!r}")
        if self.min is not None and value < self.min:
            raise ValueError(f"{self.name} must be >= {self.min}; got {text!r}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{self.name} must be <= {self.max}; got {text!r}")
        return value


@dataclasses.dataclass(frozen=True)
class Capabilities:
    needs_gradients: bool = True
    needs_fitting: bool = False
    stochastic: bool = False
    multi_class: bool = False  #: explains several targets of one image in one pass


@dataclasses.dataclass
class Attribution:
    """A method's output: signed float32 maps ``B×H×W`` at the model's input resolution.

    ``extras`` holds named per-sample tensors (``B×…``) a method wants saved beside the map
    (e.g. MIP-IN's source signal); ``info`` holds JSON-serialisable facts about the whole batch,
    and ``sample_info`` (one dict per sample, or empty) facts about each sample; each record gets
    ``info`` merged with its own sample's entry."""

    maps: Any
    extras: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)
    sample_info: list = dataclasses.field(default_factory=list)

    def record_info(self, index: int) -> dict:
        """What the JSON record of sample ``index`` carries: batch facts plus its own."""
        own = self.sample_info[index] if index < len(self.sample_info) else {}
        return {**self.info, **own}


@dataclasses.dataclass
class Method:
    """An attribution method.

    ``explain(model, x, targets, params, seed)`` receives a :class:`xplain.Model`, a float32
    batch ``x`` (B×C×H×W, on the model's device), integer ``targets`` (B,), the validated
    parameter dict and the run's seed, and returns an :class:`Attribution` or a B×H×W tensor.
    ``fit(model, batches, params, progress)``, for methods that learn from data, returns
    ``(tensors: dict[str, Tensor], meta: dict)`` which xplain saves with safetensors."""

    name: str
    summary: str
    explain: Callable[..., Any]
    params: list[Param] = dataclasses.field(default_factory=list)
    capabilities: Capabilities = dataclasses.field(default_factory=Capabilities)
    description: str = ""  #: the algorithm in a paragraph, defaults, deviations from the reference
    fit: Callable[..., Any] | None = None
    plugin: str = ""  #: filled in by the registry: which plugin registered it

    def param(self, name: str) -> Param:
        return {p.name: p for p in self.params}[name]


@dataclasses.dataclass
class Metric:
    """An evaluation metric. ``score(model, x, targets, attribution, context)`` returns a dict
    ``name -> tensor (B,)`` of per-sample scores. ``higher_is_better`` gives the direction.

    ``context`` is a dict: ``params`` (the metric's validated parameters), ``boxes`` (per sample
    a K×4 tensor ``x0, y0, x1, y1`` in model-input pixels, continuous coordinates, or None),
    ``box_labels`` (per sample K class indices, -1 when unknown, or None), ``method``,
    ``method_params``, ``seed`` and ``explain(x, targets) -> Attribution`` (re-runs the method, for
    metrics that need more maps), ``batch_size`` (images per batch), ``forward_batch`` (perturbed
    images per forward pass) and ``cache`` (a dict shared by all methods on the same batch, for
    method-independent work). Keys may be missing when a metric is called outside ``eval``.

    A metric may also return curves: a tensor ``B×T`` under a key listed in ``curves`` (key ->
    x-axis label); the x values are ``linspace(0, 1, T)`` unless the dict also holds a ``T``
    tensor under ``key + "@x"``. ``directions`` overrides ``higher_is_better`` for single keys
    (a metric returning MoRF and LeRF needs both directions)."""

    name: str
    summary: str
    score: Callable[..., Any]
    params: list[Param] = dataclasses.field(default_factory=list)
    higher_is_better: bool = True
    description: str = ""
    needs: tuple[str, ...] = ()  #: e.g. ("boxes",) or ("method",)
    plugin: str = ""
    curves: dict = dataclasses.field(default_factory=dict)  #: curve key -> x-axis label
    directions: dict = dataclasses.field(default_factory=dict)  #: score key -> higher_is_better

    def higher_is_better_for(self, key: str) -> bool:
        return bool(self.directions.get(key, self.higher_is_better))
