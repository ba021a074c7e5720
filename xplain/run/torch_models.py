"""A torch module in, the same verified :class:`~xplain.Model` out.

Why through ONNX and not the module itself: every method, rule and check in xplain works on the
graph the hardened loader builds (sanitised names, one module per operation, softmax stripped,
verified against onnxruntime). Exporting the user's module and loading the export through the
same front door gives a module the same guarantees as a file — and a model that failed to
export fails here with one line, not deep inside a method.
"""

from __future__ import annotations

import copy
import inspect
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError, UsageError, XplainError
from ..graph.model import Model
from ..onnx.export import EXPORTERS, export_classifier

#: tried in this order when no exporter is named: torch's default, then the classic one
DEFAULT_EXPORTERS = ("dynamo", "classic")


def _shape(example_input: Any) -> tuple[int, int, int]:
    if not isinstance(example_input, torch.Tensor):
        raise UsageError(
            "a torch module needs an example input: xplain.load_model(module, example_input) "
            "with a tensor of shape (C, H, W) or (B, C, H, W)"
        )
    shape = tuple(example_input.shape[-3:]) if example_input.dim() in (3, 4) else ()
    if len(shape) != 3:
        raise UsageError(
            f"the example input has shape {tuple(example_input.shape)}; expected (C, H, W) "
            "or (B, C, H, W)"
        )
    return int(shape[0]), int(shape[1]), int(shape[2])


def _arg_name(module: torch.nn.Module) -> str:
    """The name of ``forward``'s first argument: torch.export keys dynamic shapes by it
    (``nn.Sequential`` calls it ``input``, most models ``x``)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return "x"
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return named[0].name if named else "x"


def export_module(
    module: torch.nn.Module,
    example_input: Any,
    *,
    exporter: str | None = None,
    load: Any,
) -> Model:
    """Export ``module`` (in eval mode) to ONNX with a dynamic batch axis and load the file with
    ``load(path)`` (the hardened loader). ``exporter``: "dynamo" or "classic"; None tries torch's
    default exporter first and the classic one when it fails (models that torch.export cannot
    trace, e.g. data-dependent Python control flow). A module on a GPU is exported from a CPU
    copy; the Model lands on the device ``load`` asks for. The file lives in a temporary folder that
    is removed when the returned Model is garbage-collected (the run records name it)."""
    shape = _shape(example_input)
    if exporter is not None and exporter not in EXPORTERS:
        raise UsageError(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    order = (exporter,) if exporter else DEFAULT_EXPORTERS
    on_cpu = all(t.device.type == "cpu" for t in [*module.parameters(), *module.buffers()])
    if not on_cpu:  # the exporters trace with a CPU example: export a CPU copy, leave the module
        module = copy.deepcopy(module).cpu()
    folder = tempfile.TemporaryDirectory(prefix="xplain-export-")
    problems = []
    was_training = module.training
    try:
        for name in order:
            path = Path(folder.name) / f"{type(module).__name__}.{name}.onnx"
            try:
                export_classifier(module, path, shape, exporter=name, input_name=_arg_name(module))
            except Exception as err:  # noqa: BLE001 - an exporter's failure is reported in one line
                problems.append(f"{name}: {type(err).__name__}: {' '.join(str(err).split())[:300]}")
                continue
            try:
                model = load(path)
            except XplainError as err:  # e.g. an op the converter lacks: the other exporter may do
                if name == order[-1]:
                    raise
                problems.append(f"{name}: {err.message}")
                continue
            model.report.producer = (
                f"{model.report.producer} (torch module {type(module).__name__}, {name} exporter)"
            )
            weakref.finalize(model, folder.cleanup)
            return model
    finally:
        module.train(was_training)
    folder.cleanup()
    raise ModelError(
        f"could not export the torch module {type(module).__name__} to ONNX: " + "; ".join(problems)
    )
