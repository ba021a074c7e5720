"""What a plugin sees: hook specifications, the declarations a method or metric makes, and the
typed objects they receive (plugin contract v1, ``docs/plugin-contract.md``).

This module imports no torch, so discovering plugins (``xplain methods``, ``xplain --help``)
stays fast. A plugin module exposes hook implementations::

    import xplain

    @xplain.hookimpl
    def register_methods(register):
        register(xplain.Method(name="my-method", summary="...", explain="my_pkg.impl:explain"))

and either imports torch only inside its functions or names its implementation lazily with a
``"package.module:function"`` string, imported on first use (that module may import torch at
the top and carry type hints).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:  # torch only for the type checker: importing this module stays torch-free
    import torch

    from ..graph.model import Model

#: The version of the plugin contract described in docs/plugin-contract.md. It changes only when
#: something a plugin may rely on changes incompatibly (after a deprecation period).
CONTRACT_VERSION = 1

PROJECT = "xplain"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class XplainHookSpecs:
    """The hooks xplain calls. Each receives a ``register`` callback owned by the core, which
    validates what it is given and records which plugin gave it."""

    @hookspec
    def register_methods(self, register: Callable[[Method], None]) -> None:
        """Register attribution methods by calling ``register(Method(...))``."""

    @hookspec
    def register_metrics(self, register: Callable[[Metric], None]) -> None:
        """Register evaluation metrics by calling ``register(Metric(...))``."""

    @hookspec(firstresult=True)
    def load_model(self, path: str, options: dict) -> Model | None:
        """Load a model file of another format; return an ``xplain.Model`` or None to pass
        (anything else is a plugin error).

        The built-in ONNX loader runs last, so a plugin can claim other formats (or override
        ONNX loading) by returning a model first."""


_PARAM_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
#: bounds of a numeric parameter that declares none: every int/float parameter of every plugin is
#: range-checked, so ``-p steps=10**9`` is refused instead of allocating or looping for hours
DEFAULT_INT_RANGE = (-100_000, 100_000)
DEFAULT_FLOAT_RANGE = (-1e9, 1e9)
#: the longest string parameter accepted
MAX_STR_PARAM = 4096
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

    def bounds(self) -> tuple[float, float] | None:
        """The inclusive range a numeric value must lie in: the declared ``min``/``max``, each
        side defaulting to :data:`DEFAULT_INT_RANGE` / :data:`DEFAULT_FLOAT_RANGE`."""
        if self.type not in ("int", "float"):
            return None
        lo, hi = DEFAULT_INT_RANGE if self.type == "int" else DEFAULT_FLOAT_RANGE
        return (lo if self.min is None else self.min, hi if self.max is None else self.max)

    def parse(self, text: Any) -> Any:
        """Convert a command-line string (or a Python value) to this parameter's type.

        Numbers are range-checked (:meth:`bounds`) and floats must be finite (NaN and ±inf
        are refused: ``noise=nan`` would silently give an all-zero map). Raises ValueError with
        a message fit for the user."""
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
            if isinstance(text, str) and len(text) > MAX_STR_PARAM:
                raise ValueError(f"{self.name}: value longer than {MAX_STR_PARAM} characters")
            if (
                self.type == "int"
                and isinstance(text, float)
                and not (math.isfinite(text) and text == int(text))
            ):
                raise ValueError(f"{self.name} expects int, got {text!r}")
            try:
                value = _PARAM_TYPES[self.type](text)
            except (TypeError, ValueError, OverflowError):  # incl. ints beyond 4300 digits
                shown = text if not isinstance(text, str) or len(text) <= 40 else text[:40] + "…"
                raise ValueError(f"{self.name} expects {self.type}, got {shown!r}") from None
        if self.type == "float" and not math.isfinite(value):
            raise ValueError(f"{self.name} must be a finite number; got {text!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(
                f"{self.name} must be one of {', '.join(map(str, self.choices))}; got {text!r}"
            )
        bounds = self.bounds()
        if bounds is not None and value < bounds[0]:
            raise ValueError(f"{self.name} must be >= {bounds[0]}; got {text!r}")
        if bounds is not None and value > bounds[1]:
            raise ValueError(f"{self.name} must be <= {bounds[1]}; got {text!r}")
        return value


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a method needs and does, declared by its plugin: gradients, a fit step, randomness,
    several targets per pass, the network properties it requires (checked before it runs) and
    whether it takes a caller's baseline tensor."""

    needs_gradients: bool = True
    needs_fitting: bool = False
    stochastic: bool = False
    multi_class: bool = False  #: explains several targets of one image in one pass
    #: what the model must have for the method to be meaningful (``xplain.model.REQUIREMENTS``:
    #: "rectifiers", "lrp-rules", "attention"); a model without it is refused with exit 2
    #: before the method runs, in one line that names what the model has or lacks
    requires: tuple[str, ...] = ()
    #: methods worth trying instead, named in that refusal
    alternatives: tuple[str, ...] = ()
    #: the method compares the input with a reference input and reads
    #: :attr:`ExplainRequest.baselines` (a tensor like ``x``) when one is given
    takes_baselines: bool = False


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


# ----------------------------------------------------------------------------- contract v1
@dataclasses.dataclass(frozen=True)
class ExplainRequest:
    """Everything a method's ``explain`` receives (contract v1), read-only.

    ``x`` is a float32 batch B×C×H×W on ``model.device``; ``targets`` a long tensor (B,) of
    class indices on the same device; ``params`` the validated parameters (defaults filled in);
    ``seed`` the run's seed. New fields may be added in later versions (with defaults), so a
    plugin reads the fields it needs by name and never unpacks the object."""

    model: Model
    x: torch.Tensor
    targets: torch.Tensor
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    #: a reference input (B×C×H×W like ``x``) given by the caller (``xplain.explain(...,
    #: baselines=)``); only methods with ``Capabilities(takes_baselines=True)`` receive one
    baselines: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        """The device of ``x`` (the model's): new tensors belong there."""
        return self.x.device

    @cached_property
    def generators(self) -> list[torch.Generator]:
        """One random generator per sample, seeded by ``seed`` and the sample's values
        (:func:`xplain.sample_generators`), so batching never changes a stochastic map."""
        from .seeds import sample_generators

        return sample_generators(self.x, self.seed)


@dataclasses.dataclass(frozen=True)
class MetricContext:
    """Everything a metric's ``score`` receives (contract v1), read-only.

    ``attribution`` holds the method's maps for ``x`` / ``targets``. The optional fields are
    None outside ``xplain eval`` (e.g. a metric called on its own): ``boxes`` per sample a K×4
    tensor ``x0, y0, x1, y1`` in model-input pixels (continuous coordinates) or None;
    ``box_labels`` per sample K class indices (-1 unknown) or None; ``method`` the
    :class:`Method` that made the maps, ``method_params`` its parameters and ``explain(x,
    targets)`` re-runs it (metrics that need more maps declare ``needs=("method",)``);
    ``batch_size`` images per batch, ``forward_batch`` perturbed images per forward pass, and
    ``cache`` a dict shared by all methods on the same batch (method-independent work);
    ``predictions`` the model's classes for ``x`` (filled in for a ``scope="dataset"`` metric,
    whose ``x`` eval does not keep: there ``x`` is empty and ``attribution`` holds every map)."""

    model: Model
    x: torch.Tensor
    targets: torch.Tensor
    attribution: Attribution
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    boxes: Sequence[torch.Tensor | None] | None = None
    box_labels: Sequence[torch.Tensor | None] | None = None
    method: Method | None = None
    method_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    explain: Callable[[torch.Tensor, torch.Tensor], Attribution] | None = None
    batch_size: int | None = None
    forward_batch: int | None = None
    cache: dict = dataclasses.field(default_factory=dict)
    predictions: torch.Tensor | None = None

    def reexplain(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        """Run the method under evaluation again (same parameters and seed)."""
        if self.explain is None:
            raise ValueError(
                "this metric re-runs the method, but no method was given "
                "(MetricContext.explain is None)"
            )
        return self.explain(x, targets)

    def as_dict(self) -> dict[str, Any]:
        """The pre-v1 ``context`` dict, for metrics still written in the positional form."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("model", "x", "targets", "attribution")
        }


class ExplainFn(Protocol):
    """``explain(request) -> Attribution | Tensor`` (maps B×H×W)."""

    def __call__(self, request: ExplainRequest, /) -> Any: ...


class ScoreFn(Protocol):
    """``score(context) -> {name: tensor (B,) or curve B×T}``."""

    def __call__(self, context: MetricContext, /) -> Mapping[str, Any]: ...


class FitFn(Protocol):
    """``fit(model, batches, params, console) -> (tensors, meta)`` for methods that learn."""

    def __call__(
        self, model: Model, batches: Callable[..., Any], params: Mapping[str, Any], console: Any, /
    ) -> tuple[dict[str, Any], dict[str, Any]]: ...


_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _import_reference(reference: str, owner: str) -> Callable[..., Any]:
    """Import ``"package.module:attr.path"``; an unusable reference is a plugin error."""
    from ..errors import PluginError

    module_name, _, attr = reference.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            value = getattr(value, part)
    except Exception as err:  # noqa: BLE001 - a broken plugin module is reported, not raised raw
        raise PluginError(
            f"{owner}: cannot load {reference!r}: {type(err).__name__}: {err}"
        ) from None
    if not callable(value):
        raise PluginError(f"{owner}: {reference!r} is not callable")
    return value


def _call_style(fn: Callable[..., Any], legacy_arity: int, owner: str) -> str:
    """``"v1"`` when ``fn`` takes one positional argument (the request/context), ``"legacy"``
    when it takes the pre-v1 positional arguments; anything else is a TypeError."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trust the v1 form
        return "v1"
    for style, arity in (("v1", 1), ("legacy", legacy_arity)):
        try:
            sig.bind(*range(arity))
        except TypeError:
            continue
        return style
    raise TypeError(
        f"{owner}: expected a callable taking one argument (contract v1), got {fn!r}{sig}"
    )


def _adapt(fn: Callable[..., Any], kind: str, owner: str, stacklevel: int) -> Callable[..., Any]:
    """``fn`` in the v1 form: legacy positional callables are wrapped, with a warning."""
    legacy_arity = 5
    if _call_style(fn, legacy_arity, owner) == "v1":
        return fn
    form = (
        "explain(model, x, targets, params, seed)"
        if kind == "explain"
        else "score(model, x, targets, attribution, context)"
    )
    new = (
        "explain(request: xplain.ExplainRequest)"
        if kind == "explain"
        else "score(context: xplain.MetricContext)"
    )
    warnings.warn(
        f"{owner}: the positional {form} is deprecated (plugin contract v1 passes one "
        f"object: {new}); it keeps working until contract v2",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    if kind == "explain":

        def explain(request: ExplainRequest) -> Any:
            return fn(request.model, request.x, request.targets, request.params, request.seed)

        return explain

    def score(context: MetricContext) -> Mapping[str, Any]:
        return fn(context.model, context.x, context.targets, context.attribution, context.as_dict())

    return score


class _Lazy:
    """Resolves a callable given directly or as a ``"module:function"`` reference, once."""

    def _resolve(
        self, value: Callable[..., Any] | str, kind: str, owner: str
    ) -> Callable[..., Any]:
        cache = self.__dict__.setdefault("_resolved", {})
        if kind not in cache:
            fn = _import_reference(value, owner) if isinstance(value, str) else value
            cache[kind] = (
                _adapt(fn, kind, owner, stacklevel=3) if kind in ("explain", "score") else fn
            )
        return cache[kind]

    @staticmethod
    def _check(value: object, field: str, owner: str) -> None:
        if isinstance(value, str):
            if not _REFERENCE.match(value):
                raise ValueError(
                    f"{owner}: {field} must be a callable or 'package.module:function', "
                    f"got {value!r}"
                )
        elif not callable(value):
            raise TypeError(f"{owner}: {field} must be a callable or 'package.module:function'")


@dataclasses.dataclass
class Method(_Lazy):
    """An attribution method.

    ``explain(request: ExplainRequest)`` returns an :class:`Attribution` or a B×H×W tensor;
    it is a callable or a lazy ``"package.module:function"`` reference, imported on first use.
    The pre-v1 positional ``explain(model, x, targets, params, seed)`` still works (detected by
    its signature when the method is declared) with a DeprecationWarning.
    ``fit(model, batches, params, console)``, for methods that learn from data, returns
    ``(tensors: dict[str, Tensor], meta: dict)`` which xplain saves with safetensors.
    ``reference`` names the reference implementation the method is tested and benchmarked
    against (e.g. ``"captum.attr.Saliency"``), empty when there is none."""

    name: str
    summary: str
    explain: ExplainFn | Callable[..., Any] | str
    params: list[Param] = dataclasses.field(default_factory=list)
    capabilities: Capabilities = dataclasses.field(default_factory=Capabilities)
    description: str = ""  #: the algorithm in a paragraph, defaults, deviations from the reference
    fit: FitFn | Callable[..., Any] | str | None = None
    plugin: str = ""  #: filled in by the registry: which plugin registered it
    reference: str = ""  #: e.g. "captum.attr.Saliency": the implementation it is compared with

    def __post_init__(self) -> None:
        owner = f"method {self.name!r}"
        self._check(self.explain, "explain", owner)
        if self.fit is not None:
            self._check(self.fit, "fit", owner)
        if not isinstance(self.explain, str):  # detect the call form once, now (warns if legacy)
            self.__dict__.setdefault("_resolved", {})["explain"] = _adapt(
                self.explain, "explain", owner, stacklevel=4
            )

    def param(self, name: str) -> Param:
        return {p.name: p for p in self.params}[name]

    def run(self, request: ExplainRequest) -> Any:
        """Call the implementation (imported on first use) with ``request``; ``os._exit`` inside
        it raises :class:`~xplain.plugins.boundary.PluginExit` (a ``SystemExit``)."""
        from .boundary import no_process_exit

        with no_process_exit():
            return self._resolve(self.explain, "explain", f"method {self.name!r}")(request)

    def fit_fn(self) -> FitFn | None:
        """The fit callable, imported on first use; None when the method learns nothing."""
        if self.fit is None:
            return None
        return self._resolve(self.fit, "fit", f"method {self.name!r}")


@dataclasses.dataclass
class Metric(_Lazy):
    """An evaluation metric. ``score(context: MetricContext)`` returns a dict ``name -> tensor
    (B,)`` of per-sample scores; ``higher_is_better`` gives the direction. ``score`` is a
    callable or a lazy ``"package.module:function"`` reference; the pre-v1 positional
    ``score(model, x, targets, attribution, context_dict)`` still works with a
    DeprecationWarning (the dict holds :meth:`MetricContext.as_dict`).

    A metric may also return curves: a tensor ``B×T`` under a key listed in ``curves`` (key ->
    x-axis label); the x values are ``linspace(0, 1, T)`` unless the dict also holds a ``T``
    tensor under ``key + "@x"``. ``directions`` overrides ``higher_is_better`` for single keys
    (a metric returning MoRF and LeRF needs both directions).

    ``scope="dataset"``: the score of an image depends on the other images (e.g. sufficiency);
    eval then calls ``score`` once per method after every batch, on the maps and predictions of
    all the images scored (see docs/plugin-contract.md)."""

    name: str
    summary: str
    score: ScoreFn | Callable[..., Any] | str
    params: list[Param] = dataclasses.field(default_factory=list)
    higher_is_better: bool = True
    description: str = ""
    needs: tuple[str, ...] = ()  #: e.g. ("boxes",) or ("method",)
    plugin: str = ""
    curves: dict = dataclasses.field(default_factory=dict)  #: curve key -> x-axis label
    directions: dict = dataclasses.field(default_factory=dict)  #: score key -> higher_is_better
    scope: str = "sample"  #: "sample" (per image) or "dataset" (scored across the images)

    def __post_init__(self) -> None:
        owner = f"metric {self.name!r}"
        if self.scope not in ("sample", "dataset"):
            raise ValueError(f"{owner}: scope must be 'sample' or 'dataset', not {self.scope!r}")
        self._check(self.score, "score", owner)
        if not isinstance(self.score, str):
            self.__dict__.setdefault("_resolved", {})["score"] = _adapt(
                self.score, "score", owner, stacklevel=4
            )

    def higher_is_better_for(self, key: str) -> bool:
        return bool(self.directions.get(key, self.higher_is_better))

    def run(self, context: MetricContext) -> Mapping[str, Any]:
        """Call the implementation (imported on first use) with ``context``; ``os._exit`` inside
        it raises :class:`~xplain.plugins.boundary.PluginExit` (a ``SystemExit``)."""
        from .boundary import no_process_exit

        with no_process_exit():
            return self._resolve(self.score, "score", f"metric {self.name!r}")(context)

    def compute(
        self,
        model: Model,
        x: torch.Tensor,
        targets: torch.Tensor,
        attribution: Attribution,
        **context: Any,
    ) -> Mapping[str, Any]:
        """Score outside ``xplain eval`` (notebooks, tests): ``context`` sets
        :class:`MetricContext` fields; ``params`` are validated and defaults filled in."""
        params = validate_params(
            self.params, context.pop("params", None) or {}, f"metric {self.name!r}"
        )
        return self.run(
            MetricContext(
                model=model, x=x, targets=targets, attribution=attribution, params=params, **context
            )
        )


def validate_params(declared, given: Mapping[str, object], owner: str) -> dict[str, object]:
    """Defaults overlaid with ``given`` (strings from ``--param`` or Python values), typed.

    An unknown key is a usage error that lists the valid ones. Lives beside :class:`Param` (whose
    ``parse`` it calls) so ``Metric.compute`` need not import the registry."""
    from ..errors import UsageError

    by_name = {p.name: p for p in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        valid = ", ".join(sorted(by_name)) or "none"
        raise UsageError(
            f"{owner} has no parameter {', '.join(map(repr, unknown))}", hint=f"valid: {valid}"
        )
    values = {p.name: p.default for p in declared}
    for key, raw in given.items():
        try:
            values[key] = by_name[key].parse(raw)
        except ValueError as err:
            raise UsageError(f"{owner}: {err}") from None
    return values
