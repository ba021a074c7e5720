"""``xplain bench``'s engine comparison: one forward pass on eager torch and on the model's engine.

Forward-only work (occlusion, the perturbation metrics) runs on the engine ``--engine`` chose
(:mod:`xplain.onnx.engine`); this measures what that buys on the benchmarked batch, in the same
interleaved rounds as the rest of ``xplain bench``, and how far apart the two engines' logits are.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from ..onnx.engine import TorchEngine, describe


def compare_engines(
    model: Any, x: torch.Tensor, repeats: int = 5, warmup: int = 1, clock: str = "wall"
) -> dict:
    """``{requested, forward, torch_seconds_per_image, onnxruntime_seconds_per_image,
    ratio_onnxruntime_to_torch, logits_max_rel_diff, ...describe(model)}``; the onnxruntime
    entries are None when forward-only work runs on torch (``onnxruntime_unavailable`` says why)."""
    from .timing import _rounds

    eager = TorchEngine()
    fns = {"torch": lambda: eager.run(model, x)}
    info = describe(model)
    if info["forward"] == "onnxruntime":
        fns["onnxruntime"] = lambda: model.infer(x)
    times, _ = _rounds(fns, model.device, repeats, warmup, clock)
    batch = x.shape[0]
    per_image = {k: statistics.median(v) / batch for k, v in times.items()}
    row: dict = {
        "torch_seconds_per_image": per_image["torch"],
        "onnxruntime_seconds_per_image": per_image.get("onnxruntime"),
        "ratio_onnxruntime_to_torch": None,
        "logits_max_rel_diff": None,
    }
    if "onnxruntime" in per_image:
        row["ratio_onnxruntime_to_torch"] = per_image["onnxruntime"] / per_image["torch"]
        a, b = model.infer(x).double(), eager.run(model, x).double()
        row["logits_max_rel_diff"] = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    return {**describe(model), **row}
