"""``xplain bench``: what an attribution method costs, measured against a forward pass and Captum.

For each method, on one batch ``x`` with its top-1 targets:

- **seconds per image**: the median over ``repeats`` timed calls of the time to explain the whole
  batch (through :func:`xplain.run.api.run_method`, i.e. what ``xplain explain`` pays), divided by the
  batch size; ``warmup`` untimed calls come first. On CUDA the device is synchronised before and
  after every timed call.
- **ratio to forward**: that median divided by the median time of one forward pass of the same
  batch under ``torch.no_grad()``, timed the same way — "method time / forward time", the pass
  count of ARCHITECTURE.md's performance principles (a gradient method is about 1 forward + 1
  backward, so 2–3×). The forward pass, the method and Captum's counterpart are timed in
  interleaved rounds (forward, ours, Captum; forward, ours, Captum; …) so that each ratio compares
  times taken under the same machine load.
- **peak memory** (MB) of one further call, above what was in use just before it. CUDA:
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors only, not the
  caching allocator's reserve). CPU: the *process's* resident set size (``getrusage`` ``ru_maxrss``),
  so it counts everything the process touched, allocator caches included; on Linux the high-water
  mark is reset first (``/proc/self/clear_refs``), elsewhere it is the growth of the process's
  all-time peak, which reads 0 when an earlier step already went higher. Treat CPU figures as a
  rough guide; CUDA figures are exact.
- **Captum**, where Captum has the same method and is installed: the same timing of Captum's
  implementation in the same process, on the same converted graph (``model.graph``), batch and
  targets, with parameters translated from ours (:data:`CAPTUM_ADAPTERS`, by the method's declared
  ``reference``), plus the ratio
  ours / Captum. A counterpart that fails on a model (Captum's LRP knows few module types) is
  reported, not fatal.

Timings on a shared or busy machine are noisy; speed goals live in benchmarks, never in tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from ..errors import PluginError, UsageError
from ..graph.model import Model
from ..onnx.engine import forward_images
from ..plugins.plugin_api import Method, MetricContext
from ..plugins.registry import Registry, get_registry, validate_params
from .api import run_method
from .captum_counterparts import CAPTUM_ADAPTERS, captum_counterpart, installed_captum_version

try:
    import resource
except ImportError:  # pragma: no cover - Windows: no getrusage, CPU peak memory is not measured
    resource = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------- timing and memory
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_MB = 1024 * 1024
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


def _current_rss() -> int | None:
    if resource is None:
        return None
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


def _reset_rss_peak() -> bool:
    """Reset the process's RSS high-water mark (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_kind(device: torch.device) -> str:
    """What :func:`peak_memory_mb` measures on ``device`` (kept in the JSON output)."""
    if device.type == "cuda":
        return "cuda max_memory_allocated above the allocation before the call"
    if resource is None:
        return "not measured on this platform (no getrusage)"
    if _current_rss() is not None and _reset_rss_peak():
        return "process peak RSS (ru_maxrss, high-water mark reset) above the RSS before the call"
    return (
        "growth of the process's all-time peak RSS (ru_maxrss); 0 when an earlier step went higher"
    )


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak memory of one call of ``fn`` above what was in use just before it, in MB (see module
    doc); None on a CPU without ``getrusage``."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del result
        return max(0, peak - base) / _MB
    if resource is None:
        fn()
        return None
    current = _current_rss()
    reset = current is not None and _reset_rss_peak()
    base = current if current is not None and reset else 0
    if not reset:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT
    result = fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT
    del result
    return max(0, peak - base) / _MB


# ---------------------------------------------------------------------------- the benchmark
def resolve_methods(methods, registry: Registry) -> list[Method]:
    """Method objects for names (or Method objects); an unknown name is a UsageError listing the valid ones."""
    resolved = [m for m, _ in registry.resolve("method", methods, duplicates="drop")]
    if not resolved:
        raise UsageError(
            "no methods to benchmark", hint=f"installed: {', '.join(sorted(registry.methods))}"
        )
    return resolved


def bench(
    model: Model,
    x: torch.Tensor,
    methods,
    registry: Registry | None = None,
    params: dict[str, dict] | None = None,
    repeats: int = 5,
    warmup: int = 1,
    *,
    seed: int = 0,
    captum: bool = True,
    progress: Callable[[str], None] | None = None,
    clock: str = "wall",
) -> dict:
    """Benchmark ``methods`` (names or :class:`Method`) on the batch ``x`` (B×C×H×W) for its top-1 targets.

    ``params`` maps a method name to its parameters (strings as from ``--param`` or Python values),
    validated against the method's declaration. Returns ``{model, device, batch_size, forward_seconds,
    forward_seconds_per_image, repeats, warmup, memory, torch_version, captum_version, methods: [{name,
    params, seconds_per_image, ratio_to_forward, peak_memory_mb, captum, captum_status,
    captum_seconds_per_image, ratio_to_captum}]}``.

    Each timed round runs the forward pass, our method and Captum's counterpart back to back, so
    a method's ratios compare times taken under the same machine load; ``forward_seconds`` (one
    forward pass of the whole batch) is the median over all rounds. ``captum_status`` is ``ok``,
    ``none`` (no counterpart), ``not installed``, ``skipped`` (``captum=False``) or ``failed: …``."""
    registry = registry or get_registry()
    chosen = resolve_methods(methods, registry)
    params = dict(params or {})
    stray = sorted(set(params) - {m.name for m in chosen})
    if stray:
        raise UsageError(f"parameters given for method(s) not benchmarked: {', '.join(stray)}")
    values = {
        m.name: validate_params(m.params, params.get(m.name) or {}, f"method {m.name!r}")
        for m in chosen
    }
    if repeats < 1 or warmup < 0:
        raise UsageError("repeats must be at least 1 and warmup at least 0")
    device = model.device
    _check_clock(clock, device)
    x = x.detach().to(device, torch.float32)
    if x.dim() != 4 or x.shape[0] < 1:
        raise UsageError(f"expected a batch B×C×H×W, got shape {tuple(x.shape)}")
    batch = x.shape[0]
    note = progress or (lambda _msg: None)
    captum_version = installed_captum_version() if captum else None

    with torch.no_grad():
        targets = model(x).argmax(dim=1)

    def forward():
        with torch.no_grad():
            return model(x)

    forward_all: list[float] = []
    rows = []
    for method in chosen:
        v = values[method.name]

        last: dict = {}

        def ours(method=method, v=v, last=last):
            last["attribution"] = run_method(model, method, x, targets, v, seed)
            return last["attribution"]

        row: dict[str, Any] = {
            "name": method.name,
            "params": v,
            "seconds_per_image": None,
            "ratio_to_forward": None,
            "peak_memory_mb": None,
            "captum": None,
            "captum_status": "none",
            "captum_seconds_per_image": None,
            "ratio_to_captum": None,
        }
        entry = CAPTUM_ADAPTERS.get(method.reference)
        if entry is not None:
            row["captum"] = entry.description
            row["captum_status"] = (
                "skipped" if not captum else "not installed" if captum_version is None else "ok"
            )
        note(method.name)
        with _oom_as_error(method.name, batch), contextlib.ExitStack() as stack:
            fns = {"forward": forward, "ours": ours}
            if row["captum_status"] == "ok":
                cap = _enter_captum(stack, method, model, v, x, targets)
                if isinstance(cap, str):
                    row["captum_status"] = cap
                    stack.close()  # leave the graph as found before timing ours
                else:
                    fns["captum"] = cap
            times, failure = _rounds(fns, device, repeats, warmup, clock)
        if failure is not None:
            row["captum_status"] = failure
        forward_all += times["forward"]
        ours_s, forward_s = statistics.median(times["ours"]), statistics.median(times["forward"])
        row["seconds_per_image"] = ours_s / batch
        row["ratio_to_forward"] = ours_s / forward_s if forward_s > 0 else None
        if times.get("captum"):
            captum_s = statistics.median(times["captum"])
            row["captum_seconds_per_image"] = captum_s / batch
            row["ratio_to_captum"] = ours_s / captum_s if captum_s > 0 else None
        with _oom_as_error(method.name, batch):
            row["peak_memory_mb"] = peak_memory_mb(ours, device)
        row["stages"] = _stages(last.get("attribution"), batch, forward_s)
        rows.append(row)

    forward_s = statistics.median(forward_all)
    return {
        "model": model.report.path,
        "device": str(device),
        "batch_size": batch,
        "forward_seconds": forward_s,
        "forward_seconds_per_image": forward_s / batch,
        "repeats": repeats,
        "warmup": warmup,
        "clock": clock,
        "memory": memory_kind(device),
        "torch_version": torch.__version__,
        "captum_version": captum_version,
        "methods": rows,
    }


def resolve_metrics(names, registry: Registry) -> list:
    """Metric objects for names; an unknown name is a UsageError listing the installed ones."""
    resolved = []
    for name in dict.fromkeys(n.strip() for n in names if n and n.strip()):
        if name not in registry.metrics:
            raise UsageError(
                f"unknown metric {name!r}",
                hint=f"installed: {', '.join(sorted(registry.metrics)) or 'none'}",
            )
        resolved.append(registry.metrics[name])
    return resolved


def _centre_boxes(x: torch.Tensor) -> list[torch.Tensor]:
    """One box per image, the central half of each side (``x0, y0, x1, y1``), for timing
    localisation metrics on inputs without annotations."""
    h, w = x.shape[2], x.shape[3]
    box = torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], device=x.device)
    return [box.clone() for _ in range(x.shape[0])]


def bench_metrics(
    model: Model,
    x: torch.Tensor,
    metrics,
    method: str,
    registry: Registry | None = None,
    params: dict[str, dict] | None = None,
    method_params: dict | None = None,
    repeats: int = 5,
    warmup: int = 1,
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    clock: str = "wall",
) -> dict:
    """Time ``metrics`` (names) scoring ``method``'s maps of the batch ``x`` for its top-1 targets.

    The maps are computed once, untimed. Each metric is called as ``xplain eval`` calls it (same
    context keys, no-grad unless it needs the method; localisation metrics get one central box
    per image), in rounds interleaved with a forward pass of the batch (``model.infer``: the run's
    engine, as the metrics' own passes). A forward hook (torch) and the engine's counts
    (onnxruntime) count the images the metric sends through the model, so the report says what the metric costs per
    image it evaluates: ``seconds_per_image`` (per explained image), ``forward_images`` (images
    forwarded per explained image), ``seconds_per_step`` (per forwarded image) and
    ``ratio_to_forward`` (that ÷ one forward per image: 1.0 is the physical limit of a metric that
    only runs the model). Returns ``{forward_seconds_per_image, method, method_params, metrics: [rows]}``."""
    registry = registry or get_registry()
    chosen = resolve_metrics(metrics, registry)
    if not chosen:
        raise UsageError(
            "no metrics to benchmark", hint=f"installed: {', '.join(sorted(registry.metrics))}"
        )
    params = dict(params or {})
    stray = sorted(set(params) - {m.name for m in chosen})
    if stray:
        raise UsageError(f"parameters given for metric(s) not benchmarked: {', '.join(stray)}")
    values = {
        m.name: validate_params(m.params, params.get(m.name) or {}, f"metric {m.name!r}")
        for m in chosen
    }
    the_method = resolve_methods([method], registry)[0]
    mparams = validate_params(the_method.params, method_params or {}, f"method {the_method.name!r}")
    device = model.device
    _check_clock(clock, device)
    x = x.detach().to(device, torch.float32)
    batch = x.shape[0]
    note = progress or (lambda _msg: None)
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    attribution = run_method(model, the_method, x, targets, mparams, seed)
    # as eval builds it: no forward_batch, so the perturbation metrics size their passes themselves
    context = MetricContext(
        model=model,
        x=x,
        targets=targets,
        attribution=attribution,
        boxes=_centre_boxes(x),
        box_labels=[torch.full((1,), int(t)) for t in targets],
        method=the_method,
        method_params=mparams,
        seed=seed,
        batch_size=batch,
        explain=lambda xx, tt: run_method(model, the_method, xx, tt, mparams, seed),
    )

    def forward():  # the engine forward-only work runs on (see xplain.onnx.engine)
        return model.infer(x)

    forward()  # builds the engine's session (its self-check runs torch) before anything is counted
    counted = [0]
    handle = model.graph.register_forward_pre_hook(
        lambda _m, args: counted.__setitem__(0, counted[0] + args[0].shape[0])
    )
    rows, forward_all = [], []
    try:
        for metric in chosen:
            note(metric.name)
            v = values[metric.name]

            def score(metric=metric, v=v):
                # a fresh cache: method-independent work is not carried over between calls
                call = dataclasses.replace(context, params=v, cache={})
                with torch.no_grad() if not metric.needs else contextlib.nullcontext():
                    return metric.run(call)

            counted[0], served = 0, forward_images(model)["onnxruntime"]
            score()  # the hook counts torch's forwards, the engine onnxruntime's
            images = counted[0] + forward_images(model)["onnxruntime"] - served
            times, _ = _rounds(
                {"forward": forward, "metric": score}, device, repeats, warmup, clock
            )
            forward_all += times["forward"]
            metric_s, forward_s = (
                statistics.median(times["metric"]),
                statistics.median(times["forward"]),
            )
            per_step = metric_s / images if images else None
            rows.append(
                {
                    "name": metric.name,
                    "params": v,
                    "seconds_per_image": metric_s / batch,
                    "forward_images": images / batch,
                    "seconds_per_step": per_step,
                    "ratio_to_forward": per_step / (forward_s / batch)
                    if per_step and forward_s > 0
                    else None,
                    "peak_memory_mb": peak_memory_mb(score, device),
                }
            )
    finally:
        handle.remove()
    forward_median = statistics.median(forward_all) if forward_all else None
    return {
        "forward_seconds_per_image": forward_median / batch if forward_median else None,
        "method": the_method.name,
        "method_params": mparams,
        "metrics": rows,
    }


def _check_clock(clock: str, device: torch.device) -> None:
    if clock not in CLOCKS:
        raise UsageError(f"unknown clock {clock!r}", hint=f"one of {', '.join(CLOCKS)}")
    if clock == "cpu" and device.type != "cpu":
        raise UsageError("--clock cpu measures host CPU time: use it with --device cpu")


def _stages(attribution, batch: int, forward_s: float) -> dict | None:
    """A multi-stage method's own split (``info["stage_seconds"]``: stage -> seconds for the
    batch, e.g. InputIBA's feature / GAN / input stages), per image and × one forward pass."""
    stages = (
        getattr(attribution, "info", {}).get("stage_seconds") if attribution is not None else None
    )
    if not isinstance(stages, dict):
        return None
    return {
        name: {
            "seconds_per_image": float(sec) / batch,
            "ratio_to_forward": float(sec) / forward_s if forward_s > 0 else None,
        }
        for name, sec in stages.items()
        if isinstance(sec, (int, float))
    }


def _enter_captum(stack: contextlib.ExitStack, name, model, params, x, targets):
    """Enter Captum's counterpart on ``stack`` and check that it runs (one untimed call):
    returns the timed callable, or a status string saying why there is none."""
    try:
        ctx = captum_counterpart(name, model, params, x)
        if ctx is None:
            return "none"
        fn = stack.enter_context(ctx)
        fn(x, targets)
    except ImportError:
        return "not installed"
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "failed: out of GPU memory"
    except Exception as exc:  # noqa: BLE001 - e.g. Captum's LRP refuses a module type
        return _failed(exc)
    return lambda: fn(x, targets)


#: what a timing measures: ``wall`` (elapsed time, perf_counter) or ``cpu`` (this process's CPU
#: time, process_time: user + system time of all its threads). On a CPU shared with other jobs the
#: CPU time of a single-threaded run is the work itself, unaffected by waiting for a core.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _rounds(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    warmup: int,
    clock: str = "wall",
) -> tuple[dict[str, list[float]], str | None]:
    """``warmup`` untimed then ``repeats`` timed rounds, each calling every function once in turn.

    Captum (key ``captum``) failing is recorded and it is dropped; anything else raises."""
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {k: [] for k in fns}
    failure = None
    for round_ in range(warmup + repeats):
        for key in list(fns):
            _sync(device)
            began = now()
            try:
                fns[key]()
                _sync(device)
            except Exception as exc:  # noqa: BLE001
                if key != "captum":
                    raise
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                failure = _failed(exc)
                del fns[key]
                times.pop(key)
                continue
            if round_ >= warmup:
                times[key].append(now() - began)
    return times, failure


def _failed(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return " ".join(f"failed: {type(exc).__name__}: {first}".split())[:200]


@contextlib.contextmanager
def _oom_as_error(name: str, batch: int):
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise PluginError(
            f"method {name!r} ran out of GPU memory at batch size {batch}",
            hint="lower --batch-size",
        ) from None
