"""``xplain inspect MODEL``: what xplain sees in a model — interface, ops, activations, bias and
feature layers with their layouts, attention, and the conversion check.

Why a module of its own: one verb per module (named ``inspect_model``, not ``inspect``, so it
never shadows the standard library's module for a reader).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..output.display import display_name
from .common import (
    open_model,
)
from .console import out


def _relative_note(report) -> str:
    """The difference relative to the logits' scale, shown when the logits exceed 1: the absolute
    difference alone then looks alarming (random-weight Inception v3 has logits near 1e12 and a
    float32-exact conversion differs from onnxruntime by ~5e5, i.e. 5e-7 of the scale)."""
    rel, diff = report.max_rel_diff, report.max_abs_diff
    if rel is None or diff is None or rel >= diff:
        return ""
    return f", {rel:.2g} of the logits' scale"


def _attention_summary(model) -> dict:
    found = model.attention()
    first = found[0] if found else None
    return {
        "layers": len(found),
        "tokens": first.tokens if first else None,
        "windowed": any(a.windowed for a in found),
        "prefix_tokens": first.layout.prefix if first and first.layout else None,
        "softmax": [a.node for a in found],
    }


def inspect(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="An ONNX classifier."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str = typer.Option("cpu", help="auto, cpu, cuda or cuda:N."),
):
    """Show what xplain sees in a model: interface, ops, activations, bias and feature layers."""
    model = open_model(model_path, device)
    report = model.report
    default = model.default_feature_layer()
    bottleneck = model.bottleneck_layer()
    data = {
        "model": str(model_path),
        "digest": model.digest,
        "producer": report.producer,
        "ir_version": report.ir_version,
        "opset": report.opset,
        "opset_used": report.opset_used,
        "input": {"name": report.input_name, "shape": report.input_shape},
        "output": {"name": report.output_name, "shape": report.output_shape, "all": report.outputs},
        "num_classes": model.num_classes,
        "fixed_batch": model.spec.fixed_batch,
        "op_counts": report.op_counts,
        "activations": [
            {"layer": a.name, "onnx_name": model.onnx_name(a.name), "kind": a.kind}
            for a in model.activations()
        ],
        "bias_layers": [
            {
                "layer": b.layer,
                "onnx_name": model.onnx_name(b.layer),
                "at": b.node,
                "kind": b.kind,
                "channels": int(b.bias.numel()),
            }
            for b in model.bias_layers()
        ],
        "feature_layers": [
            {
                "layer": f.name,
                "onnx_name": model.onnx_name(f.name),
                "shape": list(f.shape),
                "layout": f.layout.kind,
                "grid": list(f.layout.grid),
                "channels": f.layout.channels,
                "prefix_tokens": f.layout.prefix,
                "cut": f.cut,
            }
            for f in model.feature_layers()
        ],
        "default_feature_layer": default.name if default else None,
        "bottleneck_layer": bottleneck.name if bottleneck else None,
        "default_layout": default.layout.describe() if default else None,
        "nonlinearities": {k: len(v) for k, v in model.nonlinearities().items()},
        "attention": _attention_summary(model),
        "softmax_stripped": report.softmax_stripped,
        "verified": report.verified,
        "max_abs_diff": report.max_abs_diff,
        "max_rel_diff": report.max_rel_diff,
        "batch_checked": report.batch_checked,
        "notes": [n for n in report.notes if n],
        "labels": bool(model.labels),
    }
    if as_json:
        print(json.dumps(data, indent=2))
        return
    kinds: dict[str, int] = {}
    for a in model.activations():
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
    shape = lambda s: "×".join("?" if d is None else str(d) for d in s)  # noqa: E731
    out.print(f"[bold]{escape(str(model_path))}[/]  sha256 {model.digest[:16]}…", highlight=False)
    out.print(
        f"producer     {escape(report.producer or '?')}   IR {report.ir_version}   opset {report.opset}"
        + (f" (converted to {report.opset_used})" if report.opset_used != report.opset else ""),
        highlight=False,
    )
    out.print(
        f"input        {escape(repr(report.input_name))} {shape(report.input_shape)}"
        + ("  (fixed batch 1: run one sample at a time)" if model.spec.fixed_batch else ""),
        highlight=False,
    )
    out.print(
        f"output       {escape(repr(report.output_name))} {shape(report.output_shape)}   classes {model.num_classes}",
        highlight=False,
    )
    out.print(
        f"softmax      {'stripped (' + report.softmax_stripped + ')' if report.softmax_stripped else 'none'}"
    )
    verdict = (
        (
            f"[green]verified[/] against onnxruntime (max |diff| {report.max_abs_diff:.2g}"
            f"{_relative_note(report)}"
            f"{', batch 1 vs 2 checked' if report.batch_checked else ''})"
        )
        if report.verified
        else "[yellow]not verified[/]"
    )
    out.print(f"conversion   {verdict}")
    out.print(
        "ops          " + ", ".join(f"{k} {v}" for k, v in report.op_counts.items()),
        highlight=False,
    )
    out.print(
        "activations  " + (", ".join(f"{k} {v}" for k, v in kinds.items()) or "none"),
        highlight=False,
    )
    out.print(
        f"bias layers  {len(data['bias_layers'])}  ("
        + ", ".join(sorted({b["kind"] for b in data["bias_layers"]}))
        + ")",
        highlight=False,
    )
    census = ", ".join(f"{k} {v}" for k, v in data["nonlinearities"].items())
    out.print("non-linear   " + (census or "none"), highlight=False)
    att = data["attention"]
    if att["layers"]:
        out.print(
            f"attention    {att['layers']} softmax layers, {att['tokens']} tokens"
            + (" (windowed)" if att["windowed"] else f", {att['prefix_tokens']} prefix"),
            highlight=False,
        )
    if default is not None:
        out.print(
            f"default layer {escape(default.name)}  {escape(default.layout.describe())}",
            highlight=False,
        )
    table = Table(
        title="feature layers (default: CAM methods; iba: iba/input-iba bottleneck; `-p layer=` takes the id or the ONNX name)",
        box=None,
    )
    table.add_column("layer")
    table.add_column("ONNX name")
    table.add_column("shape")
    table.add_column("layout")
    table.add_column("")
    for f in model.feature_layers():
        marks = [
            "default" if f.name == data["default_feature_layer"] else "",
            "iba" if f.name == data["bottleneck_layer"] else "",
        ]
        # ONNX names are file content: escaped (control characters) and markup-escaped for rich
        onnx_name = model.onnx_name(f.name)
        table.add_row(
            escape(f.name),
            escape(display_name(onnx_name)) if onnx_name else "–",
            shape(f.shape),
            escape(f.layout.describe()),
            " ".join(m for m in marks if m),
        )
    out.print(table)
    for note in data["notes"]:
        out.print(f"[dim]note: {escape(note)}[/]", highlight=False)
