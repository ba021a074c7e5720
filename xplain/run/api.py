"""The Python API behind the CLI verbs: ``load_model`` and ``explain``."""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from ..errors import ModelError, PluginError, UsageError, XplainError
from ..graph.model import Model
from ..plugins.plugin_api import Attribution, ExplainRequest, Method
from ..plugins.registry import Registry, get_registry, validate_params
from ..plugins.seeds import sample_generators as sample_generators


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """``auto`` = CUDA when available; ``cuda`` without a GPU is a usage error."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"invalid device {spec!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {spec!r}", hint="use auto, cpu, cuda or cuda:N")
    return device


def load_model(
    path: str | Path | torch.nn.Module,
    example_input: torch.Tensor | None = None,
    device: str | torch.device | None = "cpu",
    *,
    verify: bool | None = True,
    labels: list[str] | str | None = None,
    registry: Registry | None = None,
    max_input_pixels: int | None = None,
    exporter: str | None = None,
    engine: str = "auto",
) -> Model:
    """Load a classifier as a verified :class:`~xplain.Model`.

    ``path`` is a model file or a ``torch.nn.Module``. A module is exported to ONNX with
    ``example_input``'s shape (C×H×W or B×C×H×W; ``exporter`` "dynamo" or "classic", default:
    torch's default exporter, the classic one when it fails) and loaded through the same
    hardened loader as a file (:mod:`xplain.run.torch_models`). For a file, plugins
    implementing the ``load_model`` hook are asked first (other formats); the ONNX loader
    (:mod:`xplain.plugins.onnx_loader`, ``trylast``) answers when none did. ``labels``: a list, a file
    path, ``"imagenet"``, ``"none"`` (no names) or None: the sidecar ``MODEL.json``'s labels,
    else the ImageNet names for a model of 1,000 outputs (1,001: "background" first), as
    ``model.labels_source`` says. ``max_input_pixels`` raises the bound on the model's declared
    input size (default 1024², or ``$XPLAIN_MAX_INPUT_PIXELS``). ``engine``: what
    :meth:`Model.infer` runs on — ``auto`` (onnxruntime where it can, else torch), ``torch`` or
    ``onnxruntime`` (a usage error when it cannot serve this model); see :mod:`xplain.onnx.engine`."""
    from ..data.images import load_labels, read_sidecar
    from ..data.preprocessing import NO_LABELS, default_labels
    from ..onnx.engine import ENGINES, configure
    from .memory import watch

    if engine not in ENGINES:  # before the work of loading
        raise UsageError(f"unknown engine {engine!r}", hint="use auto, torch or onnxruntime")

    if isinstance(example_input, (str, torch.device)) and not isinstance(path, torch.nn.Module):
        device, example_input = example_input, None  # the pre-module signature: (path, device)
    if isinstance(path, torch.nn.Module):
        from .torch_models import export_module

        module = path
        return export_module(
            module,
            example_input,
            exporter=exporter,
            load=lambda file: load_model(
                file,
                device=device,
                verify=verify,
                labels=labels,
                registry=registry,
                max_input_pixels=max_input_pixels,
                engine=engine,
            ),
        )
    if example_input is not None:
        raise UsageError("example_input is for torch modules; a model file has its own input")
    path = Path(path)
    watch(path)  # the process-wide memory bound names this file from now on
    device = resolve_device(device)
    registry = registry or get_registry()
    options = {"device": device, "verify": verify, "max_input_pixels": max_input_pixels}
    try:
        model = registry.pm.hook.load_model(path=str(path), options=options)
    except XplainError:
        raise
    except SystemExit as err:  # a plugin must not end the process
        raise PluginError(
            f"a model-loader plugin called sys.exit({err.code!r})", path=path
        ) from None
    except Exception as err:  # noqa: BLE001 - a loader plugin's bug
        raise PluginError(
            f"a model-loader plugin failed: {type(err).__name__}: {err}", path=path
        ) from None
    if model is None:  # every registry holds the ONNX loader (trylast), which never passes
        raise PluginError("no model loader answered", path=path)
    if not isinstance(model, Model):
        raise PluginError(
            f"a model-loader plugin returned {type(model).__name__}, not an xplain.Model", path=path
        )
    sidecar = read_sidecar(path)
    model.sidecar = sidecar
    spec = labels if labels is not None else sidecar.get("labels")
    if isinstance(spec, str) and spec.lower() == NO_LABELS:
        model.labels, model.labels_source = None, None
    elif spec is not None:
        names = load_labels(spec, base_dir=path.parent)
        if len(names) != model.num_classes:
            where = spec if isinstance(spec, str) else "labels"
            raise ModelError(
                f"{len(names)} labels given for {model.num_classes} classes ({where})", path=path
            )
        model.labels = names
        model.labels_source = "given" if labels is not None else "sidecar"
    elif (found := default_labels(model.num_classes)) is not None:
        model.labels, model.labels_source = found
    configure(model, engine)
    return model


def check_requirements(model: Model, method: Method) -> None:
    """Refuse, before anything runs, a method whose declared requirements the model does not
    meet: a UsageError (exit 2) of one line, e.g. "guided-backprop needs rectifier activations;
    this model uses GELU (12), LayerNormalization (25) (try gradient, …)"."""
    for requirement in getattr(method.capabilities, "requires", ()):
        problem = model.requirement_problem(requirement)
        if problem is None:
            continue
        alternatives = list(getattr(method.capabilities, "alternatives", ()))
        if (
            requirement != "attention"
            and model.attention()
            and model.requirement_problem("attention") is None
        ):
            alternatives.append("attention-rollout")
        hint = "try " + ", ".join(dict.fromkeys(alternatives)) if alternatives else None
        raise UsageError(f"{method.name} {problem}", hint=hint)


class _MethodTimeout(BaseException):
    """Raised inside a method by the timer of :func:`time_limit` (a BaseException, so a
    method's ``except Exception`` cannot swallow it)."""


#: after the first stop, how often the stop is raised again (a plugin that swallowed it) and how
#: long it may keep swallowing before the process is ended with exit 4
TIMEOUT_REPEAT_S = 0.2
TIMEOUT_GRACE_S = 5.0


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str):
    """Interrupt the block after ``seconds`` with a :class:`PluginError` (exit 4).

    POSIX main thread only: a ``SIGALRM`` timer raises inside the running Python code, the way
    Ctrl-C does, so a method that loops forever stops at its next Python bytecode; a single
    long-running native call (one huge convolution) finishes first. Elsewhere (Windows, other
    threads) the limit is not enforced. ``None`` or 0 = no limit.

    A plugin that swallows the stop (``except BaseException`` around a sleep) gets it again
    every :data:`TIMEOUT_REPEAT_S`; one still running :data:`TIMEOUT_GRACE_S` after the limit
    ends the process with one line and exit 4 (files already written are complete). A block that
    swallowed the stop and then returned normally is still a timeout: its result is not used."""
    usable = (
        seconds
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return
    fired: list[float] = []
    message = f"{what} did not finish within --timeout {seconds:g} s; stopped"

    def expire(signum, frame):
        now = time.monotonic()
        fired.append(now)
        if now - fired[0] > TIMEOUT_GRACE_S:
            from ..plugins.boundary import hard_exit
            from ..untrusted import printable

            with contextlib.suppress(Exception):
                sys.stderr.write(
                    f"xplain: error: {printable(message)} (it ignored the stop; process ended)\n"
                )
                sys.stderr.flush()
            hard_exit(int(PluginError.exit_code))
        signal.setitimer(signal.ITIMER_REAL, TIMEOUT_REPEAT_S)
        raise _MethodTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds or 0))
    try:
        yield
    except _MethodTimeout:
        raise PluginError(message) from None
    except Exception:
        if fired:  # the plugin turned the stop into an error of its own
            raise PluginError(message) from None
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if fired:  # the stop was swallowed and the block returned anyway
        raise PluginError(message)


_EXTRA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_RESERVED_EXTRAS = {"heatmap", "overlay", "npy", "json"}


def _check_attribution(method: Method, attribution: Attribution, batch: int) -> None:
    """Extras, info and sample_info from a plugin are untrusted: names become file names, tensors
    are indexed per sample, info goes into JSON records."""
    if (
        not isinstance(attribution.extras, dict)
        or not isinstance(attribution.info, dict)
        or not isinstance(attribution.sample_info, list)
    ):
        raise PluginError(
            f"method {method.name!r} returned an Attribution whose extras/info are not dicts "
            "or whose sample_info is not a list"
        )
    for name, value in attribution.extras.items():
        if not isinstance(name, str) or not _EXTRA_NAME.match(name) or name in _RESERVED_EXTRAS:
            raise PluginError(
                f"method {method.name!r} returned an extra named {name!r}; names must be letters, "
                "digits, '-' and '_' (at most 64) and not heatmap/overlay/npy/json"
            )
        if not isinstance(value, torch.Tensor) or value.dim() < 1 or value.shape[0] != batch:
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise PluginError(
                f"method {method.name!r} returned extra {name!r} of shape {got}; expected a tensor "
                f"with the batch size {batch} first"
            )
    if attribution.sample_info and len(attribution.sample_info) != batch:
        raise PluginError(
            f"method {method.name!r} returned {len(attribution.sample_info)} sample_info entries "
            f"for a batch of {batch}"
        )
    try:
        json.dumps([attribution.info, attribution.sample_info], allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
        raise PluginError(
            f"method {method.name!r} returned info that is not finite JSON: "
            f"{type(err).__name__}: {err}"
        ) from None


def _check_plain_tensor(method: Method, maps, x: torch.Tensor) -> None:
    """Maps must be an ordinary dense tensor on the model's device: a tensor subclass can run
    code on every later operation (``__torch_function__``), a meta tensor has no values, a
    sparse one breaks every reader — each is the plugin's error, not exit 1 somewhere later."""
    if not isinstance(maps, torch.Tensor):
        return  # the shape check names the type
    problem = None
    if type(maps) is not torch.Tensor and not isinstance(maps, torch.nn.Parameter):
        problem = f"a tensor subclass ({type(maps).__name__})"
    elif maps.layout != torch.strided:
        problem = f"a {str(maps.layout).replace('torch.', '')} tensor"
    elif maps.device.type == "meta" or maps.device != x.device:
        problem = f"a tensor on device {maps.device} (the input is on {x.device})"
    elif maps.is_complex():
        problem = f"a tensor of dtype {str(maps.dtype).replace('torch.', '')}"
    if problem is not None:
        raise PluginError(
            f"method {method.name!r} returned maps as {problem}; expected a dense float tensor"
        )


def run_method(
    model: Model,
    method: Method,
    x: torch.Tensor,
    targets: torch.Tensor,
    params: dict,
    seed: int = 0,
    timeout: float | None = None,
    baselines: torch.Tensor | None = None,
) -> Attribution:
    """Call a method under the output contract: float32 maps B×H×W, finite, same device.

    The plugin boundary: ``sys.exit()`` inside a method is a :class:`PluginError` (exit 4),
    Ctrl-C stays a KeyboardInterrupt (exit 130), ``timeout`` seconds stop it (see
    :func:`time_limit`). A model that does not meet the method's requirements is refused
    first (exit 2)."""
    check_requirements(model, method)
    if timeout is not None and (not math.isfinite(timeout) or timeout < 0):
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout!r}")
    torch.manual_seed(seed)
    try:
        with time_limit(timeout, f"method {method.name!r}"):
            result = method.run(ExplainRequest(model, x, targets, params, seed, baselines))
    except XplainError:
        raise
    except torch.cuda.OutOfMemoryError:
        raise
    except SystemExit as err:
        called = str(err) if type(err).__name__ == "PluginExit" else f"sys.exit({err.code!r})"
        raise PluginError(f"method {method.name!r} called {called}") from None
    except Exception as err:  # noqa: BLE001 - a method's bug is reported, not a traceback
        raise PluginError(f"method {method.name!r} failed: {type(err).__name__}: {err}") from err
    attribution = result if isinstance(result, Attribution) else Attribution(maps=result)
    _check_attribution(method, attribution, x.shape[0])
    maps = attribution.maps
    _check_plain_tensor(method, maps, x)
    expected = (x.shape[0], model.spec.height, model.spec.width)
    if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != expected:
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise PluginError(
            f"method {method.name!r} returned maps of shape {got}, expected {expected}"
        )
    attribution.maps = maps.detach().to(torch.float32)
    if not torch.isfinite(attribution.maps).all():
        raise PluginError(f"method {method.name!r} returned non-finite values")
    return attribution


def explain(
    model: Model,
    x: torch.Tensor,
    targets=None,
    method: str | Method = "saliency",
    params: dict | None = None,
    seed: int = 0,
    registry: Registry | None = None,
    baselines: torch.Tensor | None = None,
    engine: str | None = None,
) -> Attribution:
    """Explain a preprocessed batch ``x`` (B×C×H×W) for ``targets``: None (the top-1 class),
    one int for every image (Captum's ``target=3``) or one per image. ``baselines``: a
    reference input (B×C×H×W or C×H×W, broadcast) for methods that compare with one
    (``Capabilities.takes_baselines``, e.g. integrated-gradients).

    Every argument is checked first (:mod:`xplain.run.api_inputs`: NumPy and float64 batches are
    converted to float32, everything else that is wrong is an :class:`XplainError` with the
    CLI's line), and the model is checked after the method (a method that changed it raises
    :class:`PluginError` after the model was restored). ``engine`` (auto, torch, onnxruntime;
    None: the model's) sets what forward-only work runs on."""
    from ..onnx.engine import configure
    from .api_inputs import check_batch, check_params, check_seed
    from .guards import ModelGuard, check_unchanged

    seed = check_seed(seed)
    configure(model, engine)
    if isinstance(method, str):
        method = (registry or get_registry()).method(method)
    elif not isinstance(method, Method):
        raise UsageError(f"method must be a name or an xplain.Method, got {type(method).__name__}")
    values = validate_params(method.params, check_params(params), f"method {method.name!r}")
    x = check_batch(model, x)
    chosen = resolve_targets(model, x, targets)
    if baselines is not None:
        baselines = _baselines(method, baselines, x)
    guard = ModelGuard(model)
    attribution = run_method(model, method, x, chosen, values, seed, baselines=baselines)
    check_unchanged(guard, f"method {method.name!r}")
    return attribution


def resolve_targets(model: Model, x: torch.Tensor, targets) -> torch.Tensor:
    """``targets`` as a long tensor (B,) on the model's device: None = each image's top-1 class,
    one integer (an int or a 0-d integer tensor/array) = that class for every image (Captum's
    ``target=3``), else one per image (checked by :func:`~xplain.run.api_inputs.check_targets`)."""
    import numbers

    import numpy as np

    from .api_inputs import check_targets

    batch = x.shape[0]
    if targets is not None and batch > 1:
        if isinstance(targets, numbers.Integral) and not isinstance(targets, bool):
            targets = [targets] * batch
        elif isinstance(targets, torch.Tensor) and targets.dim() == 0:
            targets = targets.reshape(1).repeat(batch)
        elif isinstance(targets, np.ndarray) and targets.ndim == 0:
            targets = np.repeat(targets.reshape(1), batch)
    chosen = check_targets(model, targets, batch)
    if chosen is None:
        with torch.no_grad():
            chosen = model(x).argmax(dim=1)
    return chosen


def _baselines(method: Method, baselines, x: torch.Tensor) -> torch.Tensor:
    if not getattr(method.capabilities, "takes_baselines", False):
        raise UsageError(f"method {method.name!r} takes no baseline tensor")
    b = torch.as_tensor(baselines).to(x.device, x.dtype)
    try:
        return b.expand_as(x).contiguous()
    except RuntimeError:
        raise UsageError(
            f"baselines of shape {tuple(b.shape)} do not fit the input {tuple(x.shape)}"
        ) from None


def score(
    metric: str,
    model: Model,
    x: torch.Tensor,
    targets,
    maps: torch.Tensor,
    *,
    params: dict | None = None,
    method: str | Method | None = None,
    method_params: dict | None = None,
    seed: int = 0,
    registry: Registry | None = None,
    **context,
) -> dict[str, torch.Tensor]:
    """Score attribution ``maps`` (B×H×W, or B×1×H×W / B×C×H×W summed over channels) computed
    anywhere — Captum, Quantus' ``a_batch``, a custom method — with ``metric`` on the
    preprocessed batch ``x`` for ``targets`` (as in :func:`explain`). Returns the metric's
    per-image scores (and curves) as CPU tensors. Metrics that re-run a method (sanity,
    robustness) need ``method``; ``context`` sets other :class:`~xplain.MetricContext` fields
    (``boxes``, ``box_labels``, ``batch_size``)."""
    registry = registry or get_registry()
    chosen = registry.metric(metric)
    from .api_inputs import check_batch

    x = check_batch(model, x)
    targets = resolve_targets(model, x, targets)
    m = torch.as_tensor(maps).detach().to(model.device, torch.float32)
    if m.dim() == 4:
        m = m.sum(dim=1)
    expected = (x.shape[0], x.shape[2], x.shape[3])
    if tuple(m.shape) != expected:
        raise UsageError(
            f"maps of shape {tuple(m.shape)} for inputs {tuple(x.shape)}; expected {expected}"
        )
    if "method" in chosen.needs and method is not None:
        run = registry.method(method) if isinstance(method, str) else method
        values = validate_params(run.params, method_params or {}, f"method {run.name!r}")
        context.update(
            method=run,
            method_params=values,
            explain=lambda xx, tt: run_method(model, run, xx, tt, values, seed),
        )
    with torch.no_grad() if not chosen.needs else contextlib.nullcontext():
        result = chosen.compute(
            model, x, targets, Attribution(maps=m), params=params or {}, seed=seed, **context
        )
    return {k: torch.as_tensor(v).detach().float().cpu() for k, v in dict(result).items()}
