"""xplain's ONNX op converters (``xplain/onnx/op_converters.py``), op by op, against onnxruntime.

Each case is a one-node (or few-node) graph written with ``onnx.helper`` at the opset today's
exporters use, converted with :func:`xplain.converters.convert` and run on random inputs next
to onnxruntime; the edge attributes (approximate='tanh', negative axes, noop_with_empty_axes,
keepdims=0, uneven Split, Pad modes/axes/negative pads, AveragePool count_include_pad and
ceil_mode, ScatterND reductions and negative indices) each have their own case, so a converter
that gets any of them wrong fails here. A few modules are also checked with
``torch.autograd.gradcheck``: attribution needs their gradients, not only their values.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from xplain.onnx import op_converters as ops
from xplain.onnx.converters import convert, unsupported_ops
from xplain.onnx.passes import drop_unused_optional_outputs, infer_shapes

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inputs, outputs, inits=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def run_both(model, feeds: dict[str, np.ndarray], tol: float = 1e-5) -> list[np.ndarray]:
    """Outputs of onnxruntime and of the converted module on ``feeds``; assert they agree."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    assert not unsupported_ops(model), unsupported_ops(model)
    module = convert(infer_shapes(model)).eval()
    with torch.no_grad():
        got = module(
            *[
                torch.from_numpy(feeds[i.name])
                for i in model.graph.input
                if i.name not in {t.name for t in model.graph.initializer}
            ]
        )
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        g = g.numpy()
        assert g.shape == e.shape, (g.shape, e.shape)
        assert g.dtype == e.dtype or (g.dtype.kind == e.dtype.kind == "f"), (g.dtype, e.dtype)
        np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64), rtol=tol, atol=tol)
    return expected


def unary(
    op, shape, opset=18, extra_inputs=(), inits=(), out_shape=None, out_type=F32, n_out=1, **attrs
):
    """``op(x, *extra_inputs)`` with ``x`` a float graph input; outputs y0..y{n_out-1}."""
    node = helper.make_node(op, ["x", *extra_inputs], [f"y{i}" for i in range(n_out)], **attrs)
    outputs = [helper.make_tensor_value_info(f"y{i}", out_type, None) for i in range(n_out)]
    return _model(
        [node], [helper.make_tensor_value_info("x", F32, list(shape))], outputs, inits, opset
    )


def const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


RNG = np.random.default_rng(0)


def x_of(*shape):
    return {"x": RNG.standard_normal(shape).astype(np.float32)}


# ----------------------------------------------------------------------------- Gelu, Mish, Erf, Einsum
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu20_both_modes(approximate):
    model = unary("Gelu", [2, 3, 5], opset=20, approximate=approximate)
    feeds = {"x": (RNG.standard_normal((2, 3, 5)) * 3).astype(np.float32)}
    run_both(model, feeds)
    module = convert(infer_shapes(model))
    gelu = [m for m in module.modules() if isinstance(m, torch.nn.GELU)]
    assert len(gelu) == 1 and gelu[0].approximate == approximate  # graph knowledge sees a GELU
    # the two modes differ by ~1e-3 somewhere in [-3, 3]: a converter ignoring the attribute fails
    other = "tanh" if approximate == "none" else "none"
    x = torch.linspace(-3, 3, 101)
    assert (
        torch.nn.functional.gelu(x, approximate=approximate)
        - torch.nn.functional.gelu(x, approximate=other)
    ).abs().max() > 1e-4


def test_mish18_and_erf():
    run_both(unary("Mish", [4, 6], opset=18), x_of(4, 6))
    run_both(unary("Erf", [4, 6], opset=18), x_of(4, 6))


def test_einsum_attention_scores():
    nodes = [helper.make_node("Einsum", ["x", "k"], ["y0"], equation="bhqd,bhkd->bhqk")]
    model = _model(
        nodes,
        [
            helper.make_tensor_value_info("x", F32, [2, 2, 3, 4]),
            helper.make_tensor_value_info("k", F32, [2, 2, 5, 4]),
        ],
        [helper.make_tensor_value_info("y0", F32, None)],
    )
    run_both(model, {**x_of(2, 2, 3, 4), "k": RNG.standard_normal((2, 2, 5, 4)).astype(np.float32)})


# ----------------------------------------------------------------------------- Reduce*-18
@pytest.mark.parametrize(
    "op,axes,keepdims",
    [
        ("ReduceMean", [-1], 1),
        ("ReduceMean", [1, -1], 0),
        ("ReduceMax", [-2], 0),
        ("ReduceMin", [0, 2], 1),
        ("ReduceSum", [1], 0),
        ("ReduceL2", [-1], 1),
        ("ReduceL1", [2], 0),
        ("ReduceProd", [1, 2], 0),
        ("ReduceSumSquare", [0], 1),
        ("ReduceLogSumExp", [-1], 0),
    ],
)
def test_reduce18_axes_input(op, axes, keepdims):
    model = unary(
        op, [2, 3, 4], extra_inputs=["axes"], inits=[const("axes", axes)], keepdims=keepdims
    )
    run_both(model, x_of(2, 3, 4))


@pytest.mark.parametrize("noop", [0, 1])
def test_reduce18_empty_axes(noop):
    """No axes: every axis (noop_with_empty_axes=0) or the identity (=1)."""
    model = unary("ReduceMean", [2, 3, 4], keepdims=0, noop_with_empty_axes=noop)
    out = run_both(model, x_of(2, 3, 4))
    assert out[0].shape == ((2, 3, 4) if noop else ())


def test_reduce18_runtime_axes_and_max20():
    node = helper.make_node("ReduceMax", ["x", "axes"], ["y0"], keepdims=1)
    model = _model(
        [node],
        [
            helper.make_tensor_value_info("x", F32, [2, 3, 4]),
            helper.make_tensor_value_info("axes", I64, [1]),
        ],
        [helper.make_tensor_value_info("y0", F32, None)],
        opset=20,
    )
    run_both(model, {**x_of(2, 3, 4), "axes": np.array([-2], dtype=np.int64)})


# ----------------------------------------------------------------------------- Split-18
@pytest.mark.parametrize("length,parts,axis", [(7, 3, -1), (6, 3, 1), (5, 2, 1)])
def test_split18_num_outputs_uneven(length, parts, axis):
    shape = [2, length] if axis == 1 else [2, 3, length]
    model = unary("Split", shape, n_out=parts, axis=axis, num_outputs=parts)
    out = run_both(model, x_of(*shape))
    step = -(-length // parts)
    assert [o.shape[axis] for o in out] == [min(step, length - i * step) for i in range(parts)]


def test_split18_sizes_input():
    model = unary(
        "Split", [2, 7], extra_inputs=["split"], inits=[const("split", [2, 5])], n_out=2, axis=1
    )
    run_both(model, x_of(2, 7))


# ----------------------------------------------------------------------------- Pad-18/19
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad19_modes_all_axes(mode):
    pads = [0, 1, 2, 1, 0, 2, 1, 0]  # begins then ends, 4-D
    inputs, inits = ["pads"], [const("pads", pads)]
    if mode == "constant":
        inputs.append("value")
        inits.append(const("value", 1.5, np.float32))
    run_both(
        unary("Pad", [2, 3, 4, 5], opset=19, extra_inputs=inputs, inits=inits, mode=mode),
        x_of(2, 3, 4, 5),
    )


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad19_axes_input(mode):
    """Pads only for the listed (negative) axes; the others untouched."""
    model = unary(
        "Pad",
        [2, 3, 4, 5],
        opset=19,
        extra_inputs=["pads", "", "axes"],
        inits=[const("pads", [1, 2, 3, 1]), const("axes", [-1, 2])],
        mode=mode,
    )
    out = run_both(model, x_of(2, 3, 4, 5))
    assert out[0].shape == (2, 3, 4 + 2 + 1, 5 + 1 + 3)


def test_pad18_negative_pads_crop():
    model = unary(
        "Pad", [2, 3, 6], extra_inputs=["pads"], inits=[const("pads", [0, 0, -1, 0, 1, -2])]
    )
    out = run_both(model, x_of(2, 3, 6))
    assert out[0].shape == (2, 4, 3)


def test_pad19_runtime_pads():
    node = helper.make_node("Pad", ["x", "pads"], ["y0"], mode="reflect")
    model = _model(
        [node],
        [
            helper.make_tensor_value_info("x", F32, [1, 2, 5]),
            helper.make_tensor_value_info("pads", I64, [6]),
        ],
        [helper.make_tensor_value_info("y0", F32, None)],
        opset=19,
    )
    run_both(model, {**x_of(1, 2, 5), "pads": np.array([0, 0, 2, 0, 1, 3], dtype=np.int64)})


# ----------------------------------------------------------------------------- AveragePool-19
@pytest.mark.parametrize(
    "attrs,shape",
    [
        ({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0}, [1, 2, 7, 7]),
        ({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}, [1, 2, 7, 7]),
        ({"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, [1, 2, 8, 8]),
        (
            {
                "kernel_shape": [3, 3],
                "strides": [2, 2],
                "ceil_mode": 1,
                "pads": [1, 1, 1, 1],
                "count_include_pad": 1,
            },
            [1, 2, 8, 9],
        ),
        (
            {
                "kernel_shape": [3, 3],
                "strides": [2, 2],
                "ceil_mode": 1,
                "pads": [1, 1, 1, 1],
                "count_include_pad": 0,
            },
            [1, 2, 8, 9],
        ),
        (
            {"kernel_shape": [2, 3], "pads": [0, 1, 1, 0], "count_include_pad": 0},
            [2, 3, 6, 5],
        ),  # asymmetric
        ({"kernel_shape": [2, 3], "pads": [0, 1, 1, 0], "count_include_pad": 1}, [2, 3, 6, 5]),
        ({"kernel_shape": [3], "strides": [2], "pads": [1, 0], "ceil_mode": 1}, [2, 3, 10]),  # 1-D
    ],
)
def test_average_pool19(attrs, shape):
    run_both(unary("AveragePool", shape, opset=19, **attrs), x_of(*shape))


def test_average_pool19_refuses_dilations():
    model = unary("AveragePool", [1, 1, 6, 6], opset=19, kernel_shape=[2, 2], dilations=[2, 2])
    with pytest.raises(NotImplementedError, match="dilations"):
        convert(infer_shapes(model))


# ----------------------------------------------------------------------------- ScatterND-18
@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd18(reduction):
    """Rows of a 3-D tensor replaced/combined at (negative) 2-D indices."""
    indices = [[0, 1], [-1, 0], [1, -2]]  # distinct targets: 'none' is then well defined
    node = helper.make_node("ScatterND", ["x", "idx", "upd"], ["y0"], reduction=reduction)
    model = _model(
        [node],
        [
            helper.make_tensor_value_info("x", F32, [2, 3, 4]),
            helper.make_tensor_value_info("upd", F32, [3, 4]),
        ],
        [helper.make_tensor_value_info("y0", F32, None)],
        [const("idx", indices)],
    )
    run_both(model, {**x_of(2, 3, 4), "upd": RNG.standard_normal((3, 4)).astype(np.float32)})


# ----------------------------------------------------------------------------- ConstantOfShape-20, Equal-19
def test_constant_of_shape20_equal19():
    """``Cast(Equal(Round(x), ConstantOfShape(Shape(x), 0)))``: the zero mask of rounded x."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node(
            "ConstantOfShape",
            ["s"],
            ["zeros"],
            value=numpy_helper.from_array(np.zeros(1, np.float32)),
        ),
        helper.make_node("Round", ["x"], ["r"]),
        helper.make_node("Equal", ["r", "zeros"], ["eq"]),
        helper.make_node("Cast", ["eq"], ["y0"], to=F32),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", F32, [2, 3])],
        [helper.make_tensor_value_info("y0", F32, None)],
        opset=20,
    )
    feeds = {"x": np.array([[0.2, 1.4, -0.3], [2.6, -0.1, 0.7]], dtype=np.float32)}
    out = run_both(model, feeds)
    np.testing.assert_array_equal(out[0], [[1, 0, 1], [0, 1, 0]])


# ----------------------------------------------------------------------------- LayerNormalization
@pytest.mark.parametrize("axis,shape", [(-1, ["b", "h", "w", 4]), (1, [2, 3, 4]), (-2, [2, 3, 4])])
def test_layer_norm_axes_and_unknown_dims(axis, shape):
    """Unknown (symbolic) leading dims — Swin's windows under the classic exporter — and any axis."""
    concrete = [2 if isinstance(d, str) else d for d in shape]
    norm = concrete[axis:]
    inits = [
        numpy_helper.from_array(RNG.standard_normal(norm).astype(np.float32), "scale"),
        numpy_helper.from_array(RNG.standard_normal(norm).astype(np.float32), "bias"),
    ]
    model = unary(
        "LayerNormalization",
        shape,
        opset=17,
        extra_inputs=["scale", "bias"],
        inits=inits,
        axis=axis,
        epsilon=1e-3,
    )
    run_both(model, x_of(*concrete), tol=2e-5)
    module = convert(infer_shapes(model))
    assert any(isinstance(m, torch.nn.LayerNorm) for m in module.modules())


def test_layer_norm_runtime_scale_and_unused_stat_outputs():
    """A scale fed at run time uses the general module; Mean/InvStdDev outputs nobody reads are dropped."""
    node = helper.make_node("LayerNormalization", ["x", "scale"], ["y0", "mean", "inv"], axis=-1)
    model = _model(
        [node],
        [
            helper.make_tensor_value_info("x", F32, [2, 3, 4]),
            helper.make_tensor_value_info("scale", F32, [4]),
        ],
        [helper.make_tensor_value_info("y0", F32, None)],
        opset=17,
    )
    assert "dropped 2" in drop_unused_optional_outputs(model)
    run_both(model, {**x_of(2, 3, 4), "scale": RNG.standard_normal(4).astype(np.float32)})


# ----------------------------------------------------------------------------- Clip with omitted/runtime bounds
def test_clip_omitted_min_and_runtime_bounds():
    model = unary(
        "Clip", [3, 4], opset=13, extra_inputs=["", "hi"], inits=[const("hi", 0.5, np.float32)]
    )
    run_both(model, x_of(3, 4))
    node = helper.make_node("Clip", ["x", "lo"], ["y0"])
    model = _model(
        [node],
        [
            helper.make_tensor_value_info("x", F32, [3, 4]),
            helper.make_tensor_value_info("lo", F32, []),
        ],
        [helper.make_tensor_value_info("y0", F32, None)],
        opset=13,
    )
    run_both(model, {**x_of(3, 4), "lo": np.array(-0.2, dtype=np.float32)})
    relu = unary(
        "Clip", [3, 4], opset=13, extra_inputs=["lo"], inits=[const("lo", 0.0, np.float32)]
    )
    assert any(isinstance(m, torch.nn.ReLU) for m in convert(infer_shapes(relu)).modules())


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "module,shape",
    [
        (ops.OnnxPad18("reflect", [0, 0, 1, 2, 0, 0, 2, 1], None, None), (1, 2, 4, 5)),
        (ops.OnnxPad18("wrap", [1, 2], None, [-1]), (2, 5)),
        (ops.OnnxAveragePool([3, 3], [2, 2], [1, 0, 0, 1], True, False), (1, 2, 6, 7)),
        (ops.OnnxReduce18("ReduceL2", [-1], False, False), (2, 3, 4)),
        (ops.OnnxLayerNormalization(-2, 1e-5), (2, 3, 4)),
    ],
)
def test_gradients_match_finite_differences(module, shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    if isinstance(module, ops.OnnxLayerNormalization):
        scale = torch.randn(shape[-2:], dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda t: module(t, scale), (x,))
    else:
        assert torch.autograd.gradcheck(module, (x,))


def test_scatter_nd_gradient():
    data = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    updates = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0], [-1]])
    assert torch.autograd.gradcheck(
        lambda d, u: ops.OnnxScatterND18("none")(d, idx, u), (data, updates)
    )


# ----------------------------------------------------------------------------- Resize-18/19
@pytest.mark.parametrize("mode,opset", [("nearest", 18), ("linear", 19)])
def test_resize18_default_attributes(mode, opset):
    """Resize-18/19 with the attributes they added at their defaults is Resize-13."""
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    model = unary(
        "Resize", [1, 2, 3, 4], opset=opset, extra_inputs=["", "scales"], inits=[scales], mode=mode
    )
    out = run_both(model, x_of(1, 2, 3, 4))
    assert out[0].shape == (1, 2, 6, 8)


def test_resize18_refuses_antialias():
    scales = numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], dtype=np.float32), "scales")
    model = unary(
        "Resize",
        [1, 2, 4, 4],
        opset=18,
        extra_inputs=["", "scales"],
        inits=[scales],
        mode="linear",
        antialias=1,
    )
    with pytest.raises(NotImplementedError, match="antialias"):
        convert(infer_shapes(model))


# ----------------------------------------------------------------------------- Conv with a computed weight
@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 1, 2, 1]])
def test_conv_with_computed_weight(pads):
    """Weight standardisation exports the kernel as a subgraph (here ``w * s``); asymmetric pads, groups."""
    nodes = [
        helper.make_node("Mul", ["w", "s"], ["wk"]),
        helper.make_node("Conv", ["x", "wk", "b"], ["y0"], pads=pads, strides=[1, 2], group=2),
    ]
    inits = [
        numpy_helper.from_array(RNG.standard_normal((4, 2, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.float32(0.5) + RNG.random((4, 1, 1, 1)).astype(np.float32), "s"),
        numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "b"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", F32, [2, 4, 6, 7])],
        [helper.make_tensor_value_info("y0", F32, None)],
        inits,
    )
    run_both(model, x_of(2, 4, 6, 7))
    assert any(
        isinstance(m, ops.OnnxConvRuntimeWeight) for m in convert(infer_shapes(model)).modules()
    )


def test_max_pool_whose_input_shape_inference_left_untyped():
    """timm's BiT (weight standardisation, classic exporter): shape inference stops at the
    computed conv weight, so MaxPool's input has no shape and onnx2torch failed with "spatial
    rank == -2". The rank comes from ``kernel_shape``; pads and ceil_mode still apply."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "MaxPool",
            ["c"],
            ["y0"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            ceil_mode=1,
        ),
    ]
    inits = [numpy_helper.from_array(RNG.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", F32, [2, 2, 7, 9])],
        [helper.make_tensor_value_info("y0", F32, None)],
        inits,
    )
    typed = infer_shapes(model)
    del typed.graph.value_info[:]  # what a failed inference leaves: no shape for "c"
    module = convert(typed).eval()
    feeds = x_of(2, 2, 7, 9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, feeds)
    with torch.no_grad():
        got = module(torch.from_numpy(feeds["x"])).numpy()
    assert got.shape == expected.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_global_average_pool_whose_input_shape_inference_left_untyped():
    """onnx2torch took an untyped input for rank 0 and averaged over every axis (1×1×1×1 out)."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("GlobalAveragePool", ["c"], ["y0"]),
    ]
    inits = [numpy_helper.from_array(RNG.standard_normal((3, 2, 1, 1)).astype(np.float32), "w")]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", F32, [2, 2, 5, 6])],
        [helper.make_tensor_value_info("y0", F32, None)],
        inits,
    )
    typed = infer_shapes(model)
    for info in typed.graph.value_info:  # typed, without a shape: what a failed inference leaves
        info.type.tensor_type.ClearField("shape")
    module = convert(typed).eval()
    feeds = x_of(2, 2, 5, 6)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, feeds)
    with torch.no_grad():
        got = module(torch.from_numpy(feeds["x"])).numpy()
    assert got.shape == expected.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


class _BiTLike(torch.nn.Module):
    """timm's ResNetV2-BiT in miniature: a weight-standardised conv (``F.batch_norm`` in training
    mode on the kernel, as timm's StdConv2d), GroupNorm, ReLU, global average pool, a 1×1-conv
    head and a flatten."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(8, 3, 3, 3))
        self.norm = torch.nn.GroupNorm(4, 8)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)  # exported as GlobalAveragePool
        self.head = torch.nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.nn.functional.batch_norm(
            self.weight.reshape(1, 8, -1), None, None, training=True, momentum=0.0, eps=1e-8
        ).reshape_as(self.weight)
        y = torch.relu(self.norm(torch.nn.functional.conv2d(x, w, padding=1)))
        return self.head(self.pool(y)).flatten(1)


def test_bit_like_classic_export_loads_and_verifies(tmp_path):
    """The classic exporter's graph of :class:`_BiTLike` (GroupNorm as Reshape → Instance-
    Normalization → Reshape(Shape) → Mul → Add, all untyped after the standardised kernel) used to
    fail in the head: "expected input[1, 1, 1, 1] to have 8 channels"."""
    import xplain
    from xplain.onnx.export import export_classifier

    path = export_classifier(_BiTLike(), tmp_path / "bit.onnx", (3, 16, 16))
    model = xplain.load_model(path, device="cpu")
    assert model.report.verified and model.report.batch_checked
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(
            model(x).numpy(), _BiTLike().eval()(x).numpy(), rtol=1e-4, atol=1e-4
        )
