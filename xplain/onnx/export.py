"""Writing a torch classifier to ONNX as users do: torch's default exporter (``dynamo=True``,
opset 18+, weights in an external ``PATH.data``) or the classic TorchScript one (``dynamo=False``,
opset ≤ 17). The other side of the front door, used by the benchmark networks, the coverage
script and the tests, so every place exports the same way."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

#: the exporters a user may have used
EXPORTERS = ("dynamo", "classic")


def export_classifier(
    module: nn.Module,
    path: Path | str,
    shape: Sequence[int],
    exporter: str = "classic",
    dynamic: bool = True,
    opset: int = 17,
    input_name: str = "x",
    batch: int | None = None,
) -> Path:
    """Export ``module`` (put in eval mode) for inputs of ``shape`` = (C, H, W), input
    ``input_name``, output ``logits``; ``dynamic`` makes the batch dimension dynamic, else it is
    fixed at ``batch`` (default 1). ``opset`` applies to the classic exporter. The exporters' own warnings are
    silenced; their errors propagate."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    module.eval()
    # torch.export specialises a batch of 1 to a constant: 2 keeps the axis free
    x = torch.randn(batch or (2 if dynamic else 1), *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            axis = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=True,
                input_names=[input_name],
                output_names=["logits"],
                dynamic_shapes={input_name: {0: axis}} if dynamic else None,
                verbose=False,
            )
        else:
            axes = {input_name: {0: "batch"}, "logits": {0: "batch"}}
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=["logits"],
                dynamic_axes=axes if dynamic else None,
            )
    return Path(path)
