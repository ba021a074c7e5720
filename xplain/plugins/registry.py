"""The plugin host: discovers plugins through the ``xplain`` entry-point group with pluggy.

Built-in methods live in the ``xplain_builtins`` distribution folder (``plugins/``) and are
found exactly like a third party's. pluggy calls the hooks: only functions marked with
``@xplain.hookimpl`` run, and a marked function whose name is not a hook (a misspelled
``register_method``) is a plugin error. A plugin that fails to import, to validate or to
register is recorded and skipped (fatal only with ``strict=True``); ``blocked`` names are never
loaded.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from ..errors import PluginError, UsageError
from . import onnx_loader  # torch-free: the loader itself is imported on first use
from .plugin_api import PROJECT, Method, Metric, XplainHookSpecs
from .plugin_api import validate_params as validate_params

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
CORE_LOADER = "xplain-onnx"  #: pluggy name of the built-in ONNX loader (never an entry-point name)


@dataclasses.dataclass
class PluginInfo:
    name: str  #: entry-point name
    module: str
    distribution: str
    version: str
    methods: list[str] = dataclasses.field(default_factory=list)
    metrics: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    blocked: bool = False


class _Rejected(Exception):
    """A plugin's registration failed; carries the one-line reason."""


class Registry:
    """Everything the installed plugins provide. Build one with :func:`get_registry`."""

    def __init__(self, strict: bool = False, blocked: tuple[str, ...] = ()):
        self.strict = strict
        self.blocked = set(blocked)
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(XplainHookSpecs)
        self.pm.register(onnx_loader, name=CORE_LOADER)
        self.plugins: dict[str, PluginInfo] = {}
        self.methods: dict[str, Method] = {}
        self.metrics: dict[str, Metric] = {}

    # ------------------------------------------------------------------ discovery
    def discover(self) -> Registry:
        def builtin_first(ep):  # a third party can add names, never shadow a built-in
            dist = getattr(ep, "dist", None)
            return (getattr(dist, "name", "") != PROJECT, ep.name)

        for ep in sorted(importlib.metadata.entry_points(group=PROJECT), key=builtin_first):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?"
            )
            if ep.name in self.plugins:  # the same entry point seen twice (e.g. editable + wheel)
                continue
            self.plugins[ep.name] = info
            if ep.name in self.blocked:
                info.blocked = True
                continue
            try:
                plugin = ep.load()
            except (
                SystemExit
            ) as err:  # sys.exit() at import time must not end xplain (exit 0, no output)
                self._fail(info, f"import called sys.exit({err.code!r})")
                continue
            except Exception as err:  # noqa: BLE001 - a broken plugin must not take xplain down
                self._fail(info, f"import failed: {type(err).__name__}: {err}")
                continue
            if self._register(plugin, ep.name, info):
                self._collect(ep.name, plugin, info)
        return self

    def register_plugin(self, plugin: object, name: str) -> None:
        """Register an in-process plugin object (tests, notebooks)."""
        info = self.plugins.setdefault(name, PluginInfo(name, repr(plugin), "<in-process>", ""))
        if self._register(plugin, name, info):
            self._collect(name, plugin, info)

    def _register(self, plugin: object, name: str, info: PluginInfo) -> bool:
        """Hand ``plugin`` to pluggy and validate its hook implementations; False if it is broken.

        Plugins are registered one at a time and a broken one is unregistered again, so
        ``check_pending`` can only find this plugin's unknown hooks."""
        try:
            self.pm.register(plugin, name=name)
        except Exception as err:  # noqa: BLE001 - bad hook signature, name registered twice
            self._fail(info, f"invalid plugin: {type(err).__name__}: {err}")
            return False
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as err:
            self.pm.unregister(plugin)
            self._fail(info, f"invalid plugin: {err}")
            return False
        return True

    def _collect(self, name: str, plugin: object, info: PluginInfo) -> None:
        """Let pluggy call this plugin's registration hooks with a register callback that knows
        the plugin (provenance), one plugin at a time so a failure is attributed to it.

        All or nothing: registrations are staged, and if any of them (or a hook) fails, nothing the
        plugin registered is kept and the plugin is unregistered (its load_model hook too)."""
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        staged: list[tuple[Any, Any, dict]] = []
        try:
            for hook, kind, store in (
                ("register_methods", Method, self.methods),
                ("register_metrics", Metric, self.metrics),
            ):
                impls = getattr(self.pm.hook, hook).get_hookimpls()
                if not any(impl.plugin is plugin for impl in impls):
                    continue

                def register(obj, _kind=kind, _store=store):
                    self._check(obj, _kind, _store, staged)
                    staged.append((obj, _kind, _store))

                try:
                    self.pm.subset_hook_caller(hook, remove_plugins=others)(register=register)
                except SystemExit as err:
                    raise _Rejected(f"{hook} called sys.exit({err.code!r})") from None
                except Exception as err:  # noqa: BLE001
                    raise _Rejected(f"{hook} failed: {type(err).__name__}: {err}") from None
        except _Rejected as rejected:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._fail(info, f"{rejected} (nothing of this plugin was registered)")
            return
        for obj, kind, store in staged:
            obj.plugin = info.name
            store[obj.name] = obj
            (info.methods if kind is Method else info.metrics).append(obj.name)

    def _check(self, obj, kind, store: dict, staged: list) -> None:
        label = kind.__name__.lower()
        if not isinstance(obj, kind):
            raise TypeError(
                f"register() expects an xplain.{kind.__name__}, got {type(obj).__name__}"
            )
        if not isinstance(obj.name, str) or not _NAME.match(obj.name) or len(obj.name) > 64:
            raise ValueError(
                f"{label} name {obj.name!r} must be lower-case letters, digits and '-' (at most 64)"
            )
        if obj.name in store:
            raise ValueError(
                f"{label} {obj.name!r} is already registered by plugin {store[obj.name].plugin!r}"
            )
        if any(o.name == obj.name and s is store for o, _, s in staged):
            raise ValueError(f"{label} {obj.name!r} is registered twice by this plugin")
        names = [p.name for p in obj.params]
        if len(set(names)) != len(names):
            raise ValueError(f"{label} {obj.name!r} declares a parameter twice")

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.error = " ".join(message.split())
        if self.strict:
            raise PluginError(f"plugin {info.name!r} ({info.module}): {info.error}")

    # ------------------------------------------------------------------ lookup
    def method(self, name: str) -> Method:
        return _lookup(self.methods, name, "method", "xplain methods")

    def metric(self, name: str) -> Metric:
        return _lookup(self.metrics, name, "metric", "xplain metrics")

    def resolve(
        self,
        kind: str,
        items: Iterable[str | Method | Metric],
        params: Mapping[str, Mapping[str, object]] | None = None,
        *,
        duplicates: str = "error",
    ) -> list[tuple[Any, dict[str, object]]]:
        """The one name resolver (CLI, eval, bench): method or metric names (or objects) ->
        ``(object, validated parameters)`` in the given order.

        An unknown name is a usage error with close matches; ``params`` maps a name to its
        given parameters (a name that is not listed is an error); a name listed twice is an
        error, or dropped with ``duplicates="drop"``. Blank names are skipped."""
        if kind not in ("method", "metric"):
            raise ValueError(f"kind must be 'method' or 'metric', not {kind!r}")
        params = params or {}
        lookup = self.method if kind == "method" else self.metric
        objs: list[Any] = []
        for item in items:
            if isinstance(item, str):
                if not item.strip():
                    continue
                item = lookup(item.strip())
            if any(o.name == item.name for o in objs):
                if duplicates == "drop":
                    continue
                raise UsageError(f"a {kind} is listed twice", hint=f"{item.name!r}")
            objs.append(item)
        unknown = set(params) - {o.name for o in objs}
        if unknown:
            raise UsageError(
                f"parameters given for {kind} {', '.join(sorted(unknown))} which is not chosen"
            )
        return [
            (o, validate_params(o.params, params.get(o.name, {}), f"{kind} {o.name!r}"))
            for o in objs
        ]

    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]


def _lookup(store: dict, name: str, label: str, command: str):
    if name in store:
        return store[name]
    import difflib

    close = difflib.get_close_matches(name, list(store), n=3)
    hint = (
        f"did you mean {', '.join(close)}? " if close else ""
    ) + f"installed: {', '.join(sorted(store)) or 'none'} (see `{command}`)"
    raise UsageError(f"unknown {label} {name!r}", hint=hint)


_cache: dict[tuple, Registry] = {}


def get_registry(strict: bool = False, blocked: tuple[str, ...] = ()) -> Registry:
    """The process-wide registry for these options (discovery runs once)."""
    key = (strict, tuple(sorted(blocked)))
    if key not in _cache:
        _cache[key] = Registry(strict, blocked).discover()
    return _cache[key]


def clear_cache() -> None:
    _cache.clear()
