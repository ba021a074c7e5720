"""What ``xplain.explain`` accepts from Python callers, checked before any method runs.

The CLI builds ``x`` and the targets itself; a Python caller hands them over as they are. Every
mistake is an :class:`~xplain.errors.XplainError` with the one line the CLI would print (exit
code included), never a torch or NumPy error from deep inside a method:

* ``x``: a ``torch.Tensor`` or a NumPy array of shape B×C×H×W (the model's C, H, W; B ≥ 1) of a
  floating dtype. NumPy arrays and float16/bfloat16/float64 are **converted** to float32 on the
  model's device; integer, bool and complex batches are refused (they are not preprocessed
  input). Non-finite values are an input error (exit 5).
* targets: None (each image's top-1 class), an int, or a sequence / array / tensor of ints, one
  per image, each in 0..K-1. Floats and bools are refused, even when integral.
* ``seed``: an int in 0..2³²-1, as ``--seed``.
* ``method``: a name or a :class:`~xplain.Method`; ``params``: a dict (validated by the
  method's schema, bounds as in ``--param``).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from ..errors import InputDataError, UsageError
from ..untrusted import printable

MAX_SEED = 2**32 - 1


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise UsageError(f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) <= MAX_SEED:
        shown = str(int(seed)) if abs(int(seed)) < 10**30 else f"{str(int(seed))[:12]}…"
        raise UsageError(f"seed must be in 0..{MAX_SEED} (as --seed), got {shown}")
    return int(seed)


def _shape_text(shape) -> str:
    return "×".join(str(int(d)) for d in shape) or "a scalar"


def check_batch(model, x: Any) -> torch.Tensor:
    """``x`` as a float32 B×C×H×W tensor on the model's device (see the module's rules)."""
    spec = model.spec
    expected = f"B×{spec.channels}×{spec.height}×{spec.width}"
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise UsageError(
                f"x is a NumPy array of dtype {printable(x.dtype)}; give the preprocessed "
                f"float batch ({expected})"
            )
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise UsageError(
            f"x must be a torch.Tensor or a NumPy array ({expected}), got {type(x).__name__}"
        )
    if type(x) is not torch.Tensor and not isinstance(x, torch.nn.Parameter):
        x = x.as_subclass(torch.Tensor)
    if x.layout != torch.strided or x.device.type == "meta":
        raise UsageError(f"x must be a dense tensor with values, got a {x.layout} on {x.device}")
    if not x.is_floating_point():
        raise UsageError(
            f"x has dtype {str(x.dtype).replace('torch.', '')}; give the preprocessed float "
            f"batch ({expected})"
        )
    if x.dim() != 4:
        hint = "add the batch dimension: x[None]" if x.dim() == 3 else None
        raise UsageError(
            f"x has shape {_shape_text(x.shape)} ({x.dim()}-D); expected {expected}", hint=hint
        )
    if tuple(x.shape[1:]) != (spec.channels, spec.height, spec.width):
        what = "channels" if x.shape[1] != spec.channels else "size"
        raise UsageError(
            f"x has shape {_shape_text(x.shape)}: wrong {what} for this model, expected {expected}",
            hint="preprocess with xplain.Preprocess.for_model(model)",
        )
    if x.shape[0] == 0:
        raise UsageError(f"x is an empty batch (0×{spec.channels}×{spec.height}×{spec.width})")
    x = x.detach().to(model.device, torch.float32)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InputDataError(f"x holds {bad} non-finite value(s) (NaN/Inf); refused")
    return x


def _target_values(targets: Any) -> list:
    if isinstance(targets, torch.Tensor):
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise UsageError(
                f"targets must be integers, got a tensor of {str(targets.dtype).replace('torch.', '')}"
            )
        return targets.detach().reshape(-1).cpu().tolist()
    if isinstance(targets, np.ndarray):
        if targets.dtype.kind not in "iu":
            raise UsageError(f"targets must be integers, got an array of {targets.dtype}")
        return targets.reshape(-1).tolist()
    if isinstance(targets, (str, bytes)):
        raise UsageError(f"targets must be integers, got {type(targets).__name__}")
    values = list(targets) if isinstance(targets, (list, tuple, range)) else [targets]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            shown = printable(repr(v))[:40]
            raise UsageError(f"targets must be integers, got {shown} ({type(v).__name__})")
    return [int(v) for v in values]


def check_targets(model, targets: Any, batch: int) -> torch.Tensor | None:
    """One class index per image as a long tensor on the model's device (None: top-1)."""
    if targets is None:
        return None
    values = _target_values(targets)
    if len(values) != batch:
        raise UsageError(f"{len(values)} targets for a batch of {batch}")
    bad = [v for v in values if not 0 <= v < model.num_classes]
    if bad:
        raise UsageError(f"target {bad[0]} out of range 0..{model.num_classes - 1}")
    return torch.tensor(values, dtype=torch.long, device=model.device)


def check_params(params: Any) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise UsageError(f"params must be a dict of name -> value, got {type(params).__name__}")
    return params
