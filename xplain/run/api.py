"""The Python API behind the CLI verbs: ``load_model`` and ``explain``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import ModelError, PluginError, UsageError, XplainError
from ..graph.model import Model
from ..plugins.plugin_api import Attribution, Method
from ..plugins.registry import Registry, get_registry, validate_params


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


def load_model(path: str | Path, device: str | torch.device | None = "cpu", *, verify: bool = True,
               labels: list[str] | str | None = None, registry: Registry | None = None) -> Model:
    """Load a classifier as a verified :class:`~xplain.Model`.

    Plugins implementing the ``load_model`` hook are asked first (other formats); the ONNX
    loader (:mod:`xplain.onnx.hooks`, ``trylast``) answers when none did. ``labels``: a list, a
    file path, ``"imagenet"`` or None (the sidecar ``MODEL.json``'s labels, if any)."""
    from ..data.images import load_labels, read_sidecar

    path = Path(path)
    device = resolve_device(device)
    registry = registry or get_registry()
    options = {"device": device, "verify": verify}
    try:
        model = registry.pm.hook.load_model(path=str(path), options=options)
    except XplainError:
        raise
    except Exception as err:  # noqa: BLE001 - a loader plugin's bug
        raise PluginError(f"a model-loader plugin failed: {type(err).__name__}: {err}", path=path) from None
    if model is None:  # every registry holds the ONNX loader (trylast), which never passes
        raise PluginError("no model loader answered", path=path)
    sidecar = read_sidecar(path)
    model.sidecar = sidecar
    spec = labels if labels is not None else sidecar.get("labels")
    if spec is not None:
        names = load_labels(spec, base_dir=path.parent)
        if len(names) != model.num_classes:
            where = spec if isinstance(spec, str) else "labels"
            raise ModelError(f"{len(names)} labels given for {model.num_classes} classes ({where})", path=path)
        model.labels = names
    return model


def sample_generators(x: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One generator per sample, seeded from the run seed and the sample's bytes.

    The noise a stochastic method draws for an image then depends only on the seed and the
    image — not on its position in the batch — so batching never changes a map."""
    gens = []
    for sample in x.detach():
        h = hashlib.blake2b(sample.float().cpu().numpy().tobytes(), digest_size=8, key=str(int(seed)).encode())
        gens.append(torch.Generator(device=x.device).manual_seed(int.from_bytes(h.digest(), "little") >> 1))
    return gens


def run_method(model: Model, method: Method, x: torch.Tensor, targets: torch.Tensor,
               params: dict, seed: int = 0) -> Attribution:
    """Call a method under the output contract: float32 maps B×H×W, finite, same device."""
    torch.manual_seed(seed)
    try:
        result = method.explain(model, x, targets, params, seed)
    except XplainError:
        raise
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - a method's bug is reported, not a traceback
        raise PluginError(f"method {method.name!r} failed: {type(err).__name__}: {err}") from err
    attribution = result if isinstance(result, Attribution) else Attribution(maps=result)
    maps = attribution.maps
    expected = (x.shape[0], model.spec.height, model.spec.width)
    if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != expected:
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise PluginError(f"method {method.name!r} returned maps of shape {got}, expected {expected}")
    attribution.maps = maps.detach().to(torch.float32)
    if not torch.isfinite(attribution.maps).all():
        raise PluginError(f"method {method.name!r} returned non-finite values")
    return attribution


def explain(model: Model, x: torch.Tensor, targets=None, method: str | Method = "saliency",
            params: dict | None = None, seed: int = 0, registry: Registry | None = None) -> Attribution:
    """Explain a preprocessed batch ``x`` (B×C×H×W) for ``targets`` (ints; default top-1)."""
    if isinstance(method, str):
        method = (registry or get_registry()).method(method)
    values = validate_params(method.params, params or {}, f"method {method.name!r}")
    x = x.to(model.device, torch.float32)
    if targets is None:
        with torch.no_grad():
            targets = model(x).argmax(dim=1)
    targets = torch.as_tensor(targets, device=model.device).long().reshape(-1)
    if targets.numel() != x.shape[0]:
        raise UsageError(f"{targets.numel()} targets for a batch of {x.shape[0]}")
    if ((targets < 0) | (targets >= model.num_classes)).any():
        raise UsageError(f"target out of range 0..{model.num_classes - 1}")
    return run_method(model, method, x, targets, values, seed)
