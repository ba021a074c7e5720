"""The ONNX front door: file -> converted, verified graph, handed to the next stage as a model.

A pipeline of small passes (see ARCHITECTURE.md, "Loading arbitrary ONNX classifiers"):
read safely -> check -> classify the interface -> sanitise names -> fold constants ->
normalise the opset -> rewrite what onnx2torch refuses -> pre-flight every op -> convert ->
strip a trailing softmax -> verify against onnxruntime (and batch 1 vs 2).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, UnsupportedOpsError, UsageError
from ..untrusted import printable
from . import passes
from .converters import convert, unsupported_ops, xplain_converted_ops
from .io import check_model, read_model
from .logits_graph import logits_graph

#: passes the converted graph must satisfy: max |torch - onnxruntime| <= TOL * max(1, max |ort|)
VERIFY_TOL = 1e-4
#: the largest input (H × W pixels) a model may declare unless raised with ``--max-input-pixels``
#: or ``$XPLAIN_MAX_INPUT_PIXELS``: verification and every method allocate batches of this size,
#: so a 710-byte file declaring 5000×5000 would otherwise cost gigabytes
DEFAULT_MAX_INPUT_PIXELS = 1024 * 1024
#: during verification no intermediate tensor (found by ONNX shape inference, batch 2) may need
#: more than this many bytes, or more than VERIFY_TENSOR_FACTOR × the verification input's bytes
MIN_VERIFY_TENSOR_BYTES = 256 * 2**20
VERIFY_TENSOR_FACTOR = 16
#: a forward of the verification batch may cost at most max(MIN_VERIFY_FLOPS, VERIFY_FLOPS_PER_INPUT ×
#: the input's elements) multiply-adds ×2 (MatMul, Gemm, Conv from inferred shapes): ViT-H/14 costs
#: ~0.4e12 at 224², a graph of hundreds of chained 2000² MatMuls on a constant ~1e13
MIN_VERIFY_FLOPS = 10**12
VERIFY_FLOPS_PER_INPUT = 4 * 10**6


def max_input_pixels(override: int | None = None) -> int:
    """The input-size bound in force: the argument, else ``$XPLAIN_MAX_INPUT_PIXELS``, else the default."""
    value: int | str
    if override is not None:
        value, source = override, "--max-input-pixels"
    elif os.environ.get("XPLAIN_MAX_INPUT_PIXELS"):
        value, source = os.environ["XPLAIN_MAX_INPUT_PIXELS"], "XPLAIN_MAX_INPUT_PIXELS"
    else:
        return DEFAULT_MAX_INPUT_PIXELS
    try:
        number = int(str(value).strip()) if len(str(value)) <= 20 else -1
    except ValueError:
        number = -1
    if number < 1:
        raise UsageError(f"{source} must be a positive integer, got {printable(str(value)[:40])!r}")
    return number


_SOFTMAX_PASS_THROUGH = (
    "Flatten",
    "OnnxFlatten",
    "OnnxCopyIdentity",
    "Identity",
    "OnnxReshape",
    "OnnxSqueezeStaticAxes",
    "OnnxSqueezeDynamicAxes",
)


def _dims(value_info) -> list:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return []
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
    ]


def _interface(model, path, pixel_limit: int = DEFAULT_MAX_INPUT_PIXELS):
    """The single image input and the class-score output; reject what is not a classifier."""
    import onnx

    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs) or "none"
        raise ModelError(
            f"model has {len(inputs)} inputs ({names}); xplain explains single-input image classifiers",
            path=path,
        )
    inp = inputs[0]
    shape = _dims(inp)
    if inp.type.tensor_type.elem_type not in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
    ):
        raise ModelError(
            f"input {inp.name!r} is not a float tensor; not an image classifier", path=path
        )
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise ModelError(
            f"input {inp.name!r} has shape {_fmt(shape)}; not an image classifier "
            "(expected B×C×H×W with fixed C, H, W)",
            path=path,
        )
    if shape[1] not in (1, 3):
        layout = (
            " (it looks channels-last, B×H×W×C; export the model with NCHW input)"
            if shape[3] in (1, 3)
            else ""
        )
        raise ModelError(
            f"input {inp.name!r} has shape {_fmt(shape)}: {shape[1]} channels; xplain explains "
            f"1- or 3-channel images{layout}",
            path=path,
        )
    if shape[2] * shape[3] > pixel_limit:
        raise ModelError(
            f"input {inp.name!r} is declared {_fmt(shape)}: {shape[2] * shape[3]} pixels, more than "
            f"the limit of {pixel_limit}",
            path=path,
            hint="raise it with --max-input-pixels N or XPLAIN_MAX_INPUT_PIXELS for real giant inputs",
        )
    if isinstance(shape[0], int) and shape[0] > 1:
        raise ModelError(
            f"input {inp.name!r} has a batch fixed at {shape[0]}; only dynamic or 1 is supported",
            path=path,
        )
    outputs = list(model.graph.output)
    candidates = [o for o in outputs if len(_dims(o)) in (0, 2)]
    if len(outputs) == 1:
        out = outputs[0]
    elif len(candidates) == 1:
        out = candidates[0]
    else:
        raise ModelError(
            f"model has {len(outputs)} outputs and no single B×K class-score output", path=path
        )
    oshape = _dims(out)
    if oshape and len(oshape) != 2:
        raise ModelError(
            f"output {out.name!r} has shape {_fmt(oshape)}; not a classifier (expected B×K)",
            path=path,
        )
    return inp, out, shape, oshape


def _check_tensor_sizes(work, path, input_bytes: int, node_names: dict | None = None) -> None:
    """Refuse a graph whose intermediate tensors, at the verification batch of 2, would need more
    memory than :data:`MIN_VERIFY_TENSOR_BYTES` / ``VERIFY_TENSOR_FACTOR`` × the input.

    ONNX shape inference with data propagation runs on the weight-free graph (small constants such
    as a ConstantOfShape's shape stay), so a 1 KB file that builds a 15000² tensor is refused before
    onnxruntime or torch allocates anything. Unknown dimensions count as 1, a symbolic one
    (the batch) as 2: shapes computed from the input's values cannot be bounded statically."""
    import onnx

    limit = max(MIN_VERIFY_TENSOR_BYTES, VERIFY_TENSOR_FACTOR * input_bytes)
    try:
        inferred = onnx.shape_inference.infer_shapes(work, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference failing proves nothing either way
        return
    producer = {out: node for node in inferred.graph.node for out in node.output}
    _check_compute(inferred, path, input_bytes // 4, node_names)
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = info.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        count = 1
        for d in tensor.shape.dim:
            count *= d.dim_value if d.HasField("dim_value") else (2 if d.dim_param else 1)
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
        except Exception:  # noqa: BLE001 - undefined or exotic types
            itemsize = 4
        if count * itemsize > limit:
            dims = [d.dim_value if d.HasField("dim_value") else "?" for d in tensor.shape.dim]
            node = producer.get(info.name)
            original = (node_names or {}).get(node.name, node.name) if node is not None else ""
            where = (
                f"value {info.name!r}"
                if node is None
                else f"the output of {node.op_type} node {original!r}"
                if original
                else f"the output of an unnamed {node.op_type} node"
            )
            raise ModelError(
                f"{printable(where)} would hold {count} elements {dims} "
                f"({count * itemsize / 2**20:.0f} MiB) during verification, more than "
                f"{limit / 2**20:.0f} MiB; refused",
                path=path,
            )


def _shapes(inferred) -> dict[str, list[int]]:
    """Known shapes of every value (unknown dims 1, the symbolic batch 2), initializers too."""
    out: dict[str, list[int]] = {}
    for info in (
        list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    ):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            out[info.name] = [
                d.dim_value if d.HasField("dim_value") else (2 if d.dim_param else 1)
                for d in tensor.shape.dim
            ]
    for init in inferred.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _node_flops(node, shapes: dict[str, list[int]]) -> int:
    """2 × multiply-adds of a MatMul / Gemm / Conv / ConvTranspose node (0 when shapes unknown)."""
    out = shapes.get(node.output[0]) if node.output else None
    ins = [shapes.get(name) for name in node.input]
    if out is None or not ins or ins[0] is None:
        return 0
    numel = int(np.prod(out, dtype=object)) if out else 1
    if node.op_type == "MatMul" and ins[0]:
        return 2 * numel * int(ins[0][-1])
    if node.op_type == "Gemm" and len(ins[0]) == 2:
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        return 2 * numel * int(ins[0][0] if trans_a else ins[0][1])
    if node.op_type in ("Conv", "ConvTranspose") and len(ins) > 1 and ins[1]:
        per = int(np.prod(ins[1][1:], dtype=object))
        if node.op_type == "ConvTranspose":
            return 2 * int(np.prod(ins[0], dtype=object)) * per
        return 2 * numel * per
    return 0


def _check_compute(inferred, path, input_elements: int, node_names: dict | None) -> None:
    """Refuse a graph whose verification forward would cost more than the compute bound: a time
    bomb (hundreds of chained 2000² MatMuls on a constant) would otherwise run for minutes in
    onnxruntime and torch before --timeout could apply to anything."""
    limit = max(MIN_VERIFY_FLOPS, VERIFY_FLOPS_PER_INPUT * input_elements)
    shapes = _shapes(inferred)
    total, heaviest, heaviest_node = 0, 0, None
    for node in inferred.graph.node:
        flops = _node_flops(node, shapes)
        total += flops
        if flops > heaviest:
            heaviest, heaviest_node = flops, node
    if total > limit:
        name = (node_names or {}).get(heaviest_node.name) if heaviest_node else None
        node = (
            f"{heaviest_node.op_type} node {printable(repr(name))}"
            if heaviest_node and name
            else f"an unnamed {heaviest_node.op_type} node"
            if heaviest_node
            else "?"
        )
        raise ModelError(
            f"one forward of the verification batch would cost {total / 1e12:.1f} TFLOP (largest: "
            f"{node}), more than the bound of {limit / 1e12:.1f} TFLOP; refused",
            path=path,
        )


#: the largest |score| a random verification input may give: float32 logits of a real classifier
#: are below 10^4; 10^15 is an integer (±2^62) cast into the output, not a score
MAX_ABS_SCORE = 1e15
_RANDOM_OPS = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


def _check_scores(proto, out, path) -> None:
    """Refuse outputs that are not class scores: an integer or bool output (an ArgMax/Cast head,
    a thresholded decision) and graphs whose output is random (Dropout with ``training_mode``
    on, random-number ops) — every method would explain noise, every metric score it."""
    import onnx

    elem = out.type.tensor_type.elem_type
    if elem not in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    ):
        kind = onnx.TensorProto.DataType.Name(elem).lower() if elem else "untyped"
        raise ModelError(
            f"output {printable(repr(out.name))} is {kind}, not float class scores (an ArgMax, "
            "Cast or comparison at the end?); export the logits",
            path=path,
        )
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        random = node.op_type in _RANDOM_OPS
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            flag = inits.get(node.input[2])
            if flag is None:
                random = True  # computed at run time: cannot be shown to be off
            else:
                from onnx import numpy_helper

                random = bool(np.asarray(numpy_helper.to_array(flag)).any())
        if random:
            what = "Dropout with training_mode on" if node.op_type == "Dropout" else node.op_type
            raise ModelError(
                f"the output is not deterministic: the graph has {what}, so the same image "
                "gives different scores on every run; export the model in eval mode",
                path=path,
            )


def _check_weights_finite(proto, path) -> None:
    """Name the first initializer with NaN/Inf values (verification would only report 'nan')."""
    from onnx import numpy_helper

    for tensor in proto.graph.initializer:
        if tensor.data_type not in (1, 10, 11, 16):  # float, float16, double, bfloat16
            continue
        try:
            values = numpy_helper.to_array(tensor)
        except Exception:  # noqa: BLE001 - the checker/conversion reports malformed tensors
            continue
        if values.size and not np.isfinite(values).all():
            bad = int(values.size - np.isfinite(values).sum())
            raise ModelError(
                f"weights are not finite: initializer {printable(repr(tensor.name))} has {bad} "
                "NaN/Inf value(s)",
                path=path,
            )


def _fmt(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _strip_softmax(gm) -> str | None:
    """Cut a trailing Softmax/LogSoftmax over the class axis so methods see logits."""
    from onnx2torch.node_converters.activations import OnnxSoftmaxV1V11
    from torch import nn

    output = next(n for n in gm.graph.nodes if n.op == "output")
    node = output.args[0]
    while node is not None and getattr(node, "op", None) == "call_module":
        module = gm.get_submodule(node.target)
        kind = None
        if isinstance(module, nn.Softmax) and module.dim in (1, -1):
            kind = "Softmax"
        elif isinstance(module, nn.LogSoftmax) and module.dim in (1, -1):
            kind = "LogSoftmax"
        elif isinstance(module, OnnxSoftmaxV1V11) and module.axis in (1, -1):
            kind = "LogSoftmax" if module.is_log else "Softmax"
        if kind is not None:
            node.replace_all_uses_with(node.args[0])
            gm.graph.eliminate_dead_code()
            gm.delete_all_unused_submodules()
            gm.recompile()
            return kind
        if type(module).__name__ not in _SOFTMAX_PASS_THROUGH or len(node.users) != 1:
            return None
        node = node.args[0] if node.args else None
    return None


def _matmul_to_linear(gm) -> int:
    """``MatMul(x, constant 2-D W)`` becomes ``nn.Linear(bias=False)`` with weight Wᵀ.

    Bias-free dense layers (and tf2onnx's MatMul+Add heads) then look like every other
    linear layer to methods that need weights (LRP z⁺, MIP-IN, bias discovery)."""
    import torch
    from onnx2torch.node_converters.matmul import OnnxMatMul
    from torch import nn

    count = 0
    for node in list(gm.graph.nodes):
        if (
            node.op != "call_module"
            or len(node.args) != 2
            or not isinstance(gm.get_submodule(node.target), OnnxMatMul)
        ):
            continue
        const = node.args[1]
        if getattr(const, "op", None) != "get_attr":
            continue
        weight = gm
        for part in const.target.split("."):
            weight = getattr(weight, part)
        if (
            not isinstance(weight, torch.Tensor)
            or weight.dim() != 2
            or not weight.is_floating_point()
        ):
            continue
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
        linear.weight = nn.Parameter(weight.detach().T.clone(), requires_grad=False)
        setattr(gm, node.target, linear)
        node.args = (node.args[0],)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return count


def _select_output(gm, index: int, count: int) -> None:
    """Keep only the class-score output of a multi-output graph."""
    if count == 1:
        return
    output = next(n for n in gm.graph.nodes if n.op == "output")
    output.args = (output.args[0][index],)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def _verify(model, original, path, input_name: str, output_name: str) -> None:
    """Compare the converted model with onnxruntime on the original graph; raise on mismatch."""
    import onnxruntime as ort
    import torch

    report = model.report
    ort.set_default_logger_severity(
        4
    )  # onnxruntime's own coloured log (errors too) must not reach the terminal
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.log_verbosity_level = 0
    try:
        session = ort.InferenceSession(original, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises many types
        raise ModelError(
            f"onnxruntime cannot run the model: {str(err).splitlines()[0][:200]}", path=path
        ) from None
    batch = 1 if model.spec.fixed_batch else 2
    gen = np.random.default_rng(0)
    xs = [
        gen.standard_normal(
            (batch, model.spec.channels, model.spec.height, model.spec.width), dtype=np.float32
        )
        for _ in range(2)
    ]
    in_type = {"tensor(float16)": 10, "tensor(double)": 11}.get(
        next(i.type for i in session.get_inputs() if i.name == input_name), 1
    )
    worst = worst_rel = 0.0
    for x in xs:
        feed = (
            x.astype(np.float16)
            if in_type == 10
            else (x.astype(np.float64) if in_type == 11 else x)
        )
        try:
            ref = session.run([output_name], {input_name: feed})[0].astype(np.float64)
        except Exception as err:  # noqa: BLE001
            raise ModelError(
                f"onnxruntime failed on a random input: {str(err).splitlines()[0][:200]}", path=path
            ) from None
        try:
            with torch.no_grad():
                logits = model(torch.from_numpy(x).to(model.device))
        except Exception as err:  # noqa: BLE001 - a converted graph can fail anywhere
            raise ModelError(
                f"converted model fails to run: {type(err).__name__}: {str(err).splitlines()[0][:160]}",
                path=path,
            ) from None
        with torch.no_grad():
            if report.softmax_stripped == "Softmax":
                logits = torch.softmax(logits, dim=1)
            elif report.softmax_stripped == "LogSoftmax":
                logits = torch.log_softmax(logits, dim=1)
            got = logits.double().cpu().numpy()
        if (
            got.ndim == 2
            and ref.size == got.size
            and ref.ndim >= 1
            and ref.shape[0] == got.shape[0]
        ):
            ref = ref.reshape(got.shape)  # e.g. onnxruntime's N×K×1×1 for the converted N×K
        if got.ndim != 2 or ref.shape != got.shape:
            raise ModelError(
                f"the output is not B×K: the converted model gives shape {list(got.shape)} "
                f"({got.ndim}-D) and onnxruntime {list(ref.shape)} ({ref.ndim}-D) for a batch of "
                f"{batch}; a classifier's output must be 2-D, batch × classes",
                path=path,
            )
        if not np.isfinite(ref).all() or not np.isfinite(got).all():
            which = "onnxruntime's" if not np.isfinite(ref).all() else "the converted model's"
            raise ModelError(
                f"{which} output on a random input is not finite (NaN/Inf); "
                "non-finite weights or an overflowing graph",
                path=path,
            )
        if float(np.abs(ref).max()) > MAX_ABS_SCORE:
            raise ModelError(
                f"the output reaches {float(np.abs(ref).max()):.2g} on a random input (more than "
                f"{MAX_ABS_SCORE:.0e}); not class scores (an integer cast into the logits?)",
                path=path,
            )
        diff = float(np.abs(got - ref).max())
        scale = max(1.0, float(np.abs(ref).max()))
        worst, worst_rel = max(worst, diff), max(worst_rel, diff / scale)
        if diff > VERIFY_TOL * scale:
            raise ModelError(
                f"conversion does not match onnxruntime (max |diff| = {diff:.3g})", path=path
            )
        if batch == 2:
            with torch.no_grad():
                single = model(torch.from_numpy(x[:1]).to(model.device)).double().cpu().numpy()
                full = model(torch.from_numpy(x).to(model.device)).double().cpu().numpy()
            scale = max(1.0, float(np.abs(full).max()))
            if np.abs(single - full[:1]).max() > VERIFY_TOL * scale:
                raise ModelError(
                    "batch of 1 and batch of 2 give different outputs "
                    "(a batch size folded into the graph?)",
                    path=path,
                )
            report.batch_checked = True
    report.verified = True
    report.max_abs_diff = worst
    report.max_rel_diff = worst_rel


def load_onnx(
    path,
    device="cpu",
    verify: bool | None = True,
    labels=None,
    sidecar: dict | None = None,
    max_pixels: int | None = None,
    *,
    build: Callable[..., Any],
) -> Any:
    """Load an ONNX classifier file as a model on ``device``: ``build(graph, spec, report,
    labels=, sidecar=)`` makes it from the converted graph (the loader hook passes
    :class:`~xplain.graph.model.Model`), and the loader verifies what it built.

    ``build`` is a parameter so the ONNX stage never imports the graph stage after it.
    ``max_pixels`` bounds the declared input (H × W; see :func:`max_input_pixels`). Every failure
    is a :class:`~xplain.errors.ModelError` with one line naming the file.  ``verify=None``
    verifies unless this file's digest was verified before (:mod:`xplain.onnx.verified`);
    ``XPLAIN_VERIFY`` decides when ``verify`` is None."""
    import torch

    from . import verified
    from .report import InputSpec, LoadReport

    path = Path(path)
    proto, digest, file_bytes = read_model(path)
    verify = verified.verify_mode(verify)
    remembered = verified.recall(digest) if verify is None else None
    if remembered is None:  # a remembered file passed it: the same bytes, the same versions
        check_model(proto, path)
    verify = verify if verify is not None else remembered is None
    inp, out, in_shape, out_shape = _interface(proto, path, max_input_pixels(max_pixels))
    if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] < 1:
        raise ModelError(
            f"output {printable(repr(out.name))} has {out_shape[1]} classes; not a classifier",
            path=path,
        )
    _check_scores(proto, out, path)
    _check_weights_finite(proto, path)
    # what onnxruntime runs: the untouched file, or a copy with external data materialised
    original = (
        (file_bytes if file_bytes is not None else proto.SerializeToString()) if verify else None
    )
    report = LoadReport(
        path=str(path),
        digest=digest,
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
        ir_version=proto.ir_version,
        opset=passes.default_opset(proto),
        op_counts=dict(sorted(passes.op_counts(proto).items())),
        input_name=inp.name,
        input_shape=[d if isinstance(d, int) else None for d in in_shape],
        output_name=out.name,
        output_shape=[d if isinstance(d, int) else None for d in out_shape],
        outputs=[o.name for o in proto.graph.output],
    )
    input_name, output_name = inp.name, out.name  # the passes below rename values in place
    output_index = [o.name for o in proto.graph.output].index(out.name)
    output_count = len(proto.graph.output)

    work = proto
    report.original_names, note = passes.sanitize_names(work)
    report.notes.append(note)
    passes.drop_initializer_inputs(work)
    if note := passes.drop_unused_optional_outputs(work):
        report.notes.append(note)
    if note := passes.fold_constants(work):
        report.notes.append(note)
    # the graph onnxruntime will run: before the passes written for onnx2torch
    engine_graph = _engine_graph(work, output_index, inp)
    stash = passes.detach_weights(work)
    work, note = passes.normalize_opset(work)
    if note:
        report.notes.append(note)
    for step in (passes.fold_constants, passes.rewrite_reshape_allowzero, passes.explicit_auto_pad):
        if note := step(work):
            report.notes.append(note)
    work = passes.infer_shapes(work)
    _check_tensor_sizes(
        work, path, 2 * in_shape[1] * in_shape[2] * in_shape[3] * 4, report.original_names
    )
    passes.attach_weights(work, stash)
    report.opset_used = passes.default_opset(work)

    missing = unsupported_ops(work)
    if missing:
        raise UnsupportedOpsError(missing, path=path)
    if used := xplain_converted_ops(work):
        report.notes.append(
            "converted with xplain's converters: "
            + ", ".join(f"{op} ×{n}" for op, n in sorted(used.items()))
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = convert(work)  # shapes were inferred above, on the weight-free graph
    except Exception as err:  # noqa: BLE001 - converters raise anything
        raise ModelError(
            f"conversion failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
            path=path,
        ) from None
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    if len(set(targets)) != len(targets):
        raise ModelError("conversion produced shared modules (duplicate node names)", path=path)
    gm.eval()
    gm.requires_grad_(False)
    from .shape_checks import install_shape_checks

    # shapes computed from the input's values are bounded when they are about to be allocated
    install_shape_checks(
        gm, path, in_shape[1] * in_shape[2] * in_shape[3] * 4, report.original_names
    )
    _select_output(gm, output_index, output_count)
    report.softmax_stripped = _strip_softmax(gm)
    if converted := _matmul_to_linear(gm):
        report.notes.append(
            f"turned {converted} MatMul nodes with constant weights into Linear layers"
        )

    num_classes = out_shape[1] if len(out_shape) == 2 and isinstance(out_shape[1], int) else None
    spec = InputSpec(
        input_name,
        in_shape[1],
        in_shape[2],
        in_shape[3],
        fixed_batch=in_shape[0] == 1,
        num_classes=num_classes or 0,
    )
    model = build(gm, spec, report, labels=labels, sidecar=sidecar).to(torch.device(device))
    if not num_classes:  # output size not declared: find it with one forward pass
        try:
            with torch.no_grad():
                logits = model(model.example_input(1))
        except Exception as err:  # noqa: BLE001 - a converted graph can fail anywhere
            raise ModelError(
                f"converted model fails to run: {type(err).__name__}", path=path
            ) from None
        if logits.dim() != 2:
            raise ModelError(
                f"output has shape {list(logits.shape)}; not a classifier (expected B×K)", path=path
            )
        if logits.shape[1] < 1:
            raise ModelError("the model has 0 output classes; not a classifier", path=path)
        model.spec = InputSpec(
            input_name, in_shape[1], in_shape[2], in_shape[3], in_shape[0] == 1, logits.shape[1]
        )
    if verify:
        _verify(model, original, path, input_name, output_name)
        verified.remember(digest, report.max_abs_diff, report.max_rel_diff, report.batch_checked)
    elif remembered is not None:  # verified before: same file (digest), same versions
        report.verified = True
        report.max_abs_diff = remembered["max_abs_diff"]
        report.max_rel_diff = remembered["max_rel_diff"]
        report.batch_checked = remembered["batch_checked"]
        report.notes.append(
            "verification remembered from an earlier load of this file "
            "(same digest and versions; --verify checks again)"
        )
    model.engine = _forward_engine(engine_graph, report.softmax_stripped)
    return model


def _engine_graph(work, output_index: int, inp) -> tuple[bytes, str | None] | str:
    """The logits graph onnxruntime will run (see :mod:`.logits_graph`), or why there is none."""
    import onnx

    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return "the model's input is not float32"
    try:
        return logits_graph(work, output_index)
    except Exception as err:  # noqa: BLE001 - e.g. a graph over protobuf's 2 GiB
        return f"the graph cannot be serialised for onnxruntime ({type(err).__name__})"


def _forward_engine(graph: tuple[bytes, str | None] | str, stripped: str | None):
    """The engine state for :meth:`Model.infer`: the onnxruntime graph when its softmax edit is
    the one made to the torch graph, else the reason forward-only work stays on torch."""
    from .engine import ForwardEngine

    if isinstance(graph, str):
        return ForwardEngine(unavailable=graph)
    data, kind = graph
    if kind != stripped:
        return ForwardEngine(
            unavailable=f"the torch graph's stripped softmax ({stripped}) and the ONNX graph's "
            f"({kind}) differ"
        )
    return ForwardEngine(graph=data, unavailable="")
