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
    path: str | Path,
    device: str | torch.device | None = "cpu",
    *,
    verify: bool = True,
    labels: list[str] | str | None = None,
    registry: Registry | None = None,
    max_input_pixels: int | None = None,
    engine: str = "auto",
) -> Model:
    """Load a classifier as a verified :class:`~xplain.Model`.

    Plugins implementing the ``load_model`` hook are asked first (other formats); the ONNX
    loader (:mod:`xplain.plugins.onnx_loader`, ``trylast``) answers when none did. ``labels``: a list, a
    file path, ``"imagenet"`` or None (the sidecar ``MODEL.json``'s labels, if any).
    ``max_input_pixels`` raises the bound on the model's declared input size (default 1024², or
    ``$XPLAIN_MAX_INPUT_PIXELS``). ``engine``: what :meth:`Model.infer` runs on — ``auto``
    (onnxruntime where it can, else torch), ``torch`` or ``onnxruntime`` (a usage error when it
    cannot serve this model); see :mod:`xplain.onnx.engine`."""
    from ..data.images import load_labels, read_sidecar
    from ..onnx.engine import ENGINES, configure
    from .memory import watch

    if engine not in ENGINES:  # before the work of loading
        raise UsageError(f"unknown engine {engine!r}", hint="use auto, torch or onnxruntime")

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
    if spec is not None:
        names = load_labels(spec, base_dir=path.parent)
        if len(names) != model.num_classes:
            where = spec if isinstance(spec, str) else "labels"
            raise ModelError(
                f"{len(names)} labels given for {model.num_classes} classes ({where})", path=path
            )
        model.labels = names
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
            result = method.run(ExplainRequest(model, x, targets, params, seed))
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
    engine: str | None = None,
) -> Attribution:
    """Explain a preprocessed batch ``x`` (B×C×H×W) for ``targets`` (ints; default top-1).

    Every argument is checked first (:mod:`xplain.run.api_inputs`: NumPy and float64 batches are
    converted to float32, everything else that is wrong is an :class:`XplainError` with the
    CLI's line), and the model is checked after the method (a method that changed it raises
    :class:`PluginError` after the model was restored). ``engine`` (auto, torch, onnxruntime;
    None: the model's) sets what forward-only work runs on."""
    from ..onnx.engine import configure
    from .api_inputs import check_batch, check_params, check_seed, check_targets
    from .guards import ModelGuard, check_unchanged

    seed = check_seed(seed)
    configure(model, engine)
    if isinstance(method, str):
        method = (registry or get_registry()).method(method)
    elif not isinstance(method, Method):
        raise UsageError(f"method must be a name or an xplain.Method, got {type(method).__name__}")
    values = validate_params(method.params, check_params(params), f"method {method.name!r}")
    x = check_batch(model, x)
    chosen = check_targets(model, targets, x.shape[0])
    if chosen is None:
        with torch.no_grad():
            chosen = model(x).argmax(dim=1)
    guard = ModelGuard(model)
    attribution = run_method(model, method, x, chosen, values, seed)
    check_unchanged(guard, f"method {method.name!r}")
    return attribution
