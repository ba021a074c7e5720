"""The ONNX loader on the small architectures real users bring.

Every model is built here, exported to ONNX (the classic TorchScript exporter at several
opsets, torch's default dynamo exporter, or written directly with ``onnx.helper`` for what
torch never emits), loaded with :func:`xplain.load_model` and checked three ways:

* the load verified against onnxruntime and the logits equal the source model's;
* the graph knowledge (activation kinds, bias layers, feature layers, input spec) is what
  the architecture implies — facts that break when a pass or the converter goes wrong;
* FullGrad completeness, ``f(x) = ∇ₓf·x + Σ_b ∇_b f·b`` on piecewise-linear nets, proves that
  :meth:`Model.bias_layers` found every bias source (dropping any one breaks the identity).

Exports are cached per module (one export + load per model); the file runs in about 1.5 minutes
on 2 CPU cores, most of it in the dynamo exporter.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
from torch import nn

import xplain

TOL = 1e-4  # the loader's own verification tolerance, relative to max(1, max |reference|)
DYNAMO = "dynamo"  # the exporter key for torch's default (torch.export-based) exporter


# ----------------------------------------------------------------------------- helpers
def assert_close(got: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    got, ref = got.detach().double(), torch.as_tensor(ref).detach().double()
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = max(1.0, float(ref.abs().max()))
    diff = float((got - ref).abs().max())
    assert diff <= tol * scale, f"max |diff| {diff:.3g} > {tol} * {scale:.3g}"


def export_torch(
    module: nn.Module, path, shape, exporter=17, dynamic: bool = True, **kwargs
) -> str:
    """Export ``module`` for input ``shape`` (C, H, W) with the classic exporter at opset
    ``exporter`` (an int) or with the default dynamo exporter (``DYNAMO``)."""
    module = module.eval()
    x = torch.randn(1, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == DYNAMO:
            dynamic_shapes = (
                {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
            )
            # as users run it: opset 18+, the weights in an external PATH.data file
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=True,
                input_names=["x"],
                output_names=["logits"],
                dynamic_shapes=dynamic_shapes,
                verbose=False,
                **kwargs,
            )
            assert Path(f"{path}.data").exists()
        else:
            axes = {"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=False,
                opset_version=exporter,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes=axes,
                **kwargs,
            )
    return str(path)


def onnx_file(path, nodes, initializers, in_shape, out_classes, opset=13, batch="batch") -> str:
    """Write a single-input classifier graph built with onnx.helper; input ``x``, output ``logits``."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *in_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, out_classes])],
        initializer=[
            numpy_helper.from_array(np.asarray(v, dtype=np.float32), k)
            for k, v in initializers.items()
        ],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="test"
    )
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return str(path)


def ort_logits(path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def rand(*shape, seed=0, scale=1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (fresh BN is identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=gen) * 0.5)
    return module


def bn_effective_bias(bn: nn.BatchNorm2d, conv_bias: torch.Tensor | None) -> torch.Tensor:
    base = conv_bias if conv_bias is not None else torch.zeros(bn.num_features)
    return (base - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def input_node(model, name: str):
    """The fx node feeding node ``name`` (its first argument)."""
    return model.node(name).args[0]


def is_add(model, node) -> bool:
    if node.op != "call_module":
        return False
    module = model.graph.get_submodule(node.target)
    return isinstance(module, OnnxBinaryMathOperation) and module.math_op_function is torch.add


# ----------------------------------------------------------------------------- architectures
class SmallCNN(nn.Module):
    """conv+ReLU+maxpool twice, flatten, linear; 16×16 input."""

    def __init__(self, channels: int = 3, classes: int = 10, head: str = "flatten"):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = head
        self.fc = nn.Linear(16 * 4 * 4, classes)

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1) if self.head == "flatten" else x.view(x.size(0), -1)
        return self.fc(x)


class MLP(nn.Module):
    """MNIST-style: 1×28×28, Flatten, Linear, ReLU, Linear."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


class BNNet(nn.Module):
    """conv(+bias)→BN→ReLU, conv(no bias)→BN→ReLU, maxpool, a lone BN, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        randomize_bn(self)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.pool(x))
        return self.fc(torch.flatten(x, 1))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNetLike(nn.Module):
    """stem, an identity block, a downsampling block (projection shortcut), GAP, fc."""

    def __init__(self, classes: int = 6):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.block1, self.block2 = Block(8, 8), Block(8, 16, stride=2)
        self.fc = nn.Linear(16, classes)
        randomize_bn(self, seed=1)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Clamp(nn.Module):
    def __init__(self, lo, hi):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return torch.clamp(x, self.lo, self.hi)


class ActNet(nn.Module):
    """conv, activation, conv, activation, GAP, linear (8×8 input)."""

    def __init__(self, make_act):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 8, 3, padding=1), make_act()
        self.conv2, self.act2 = nn.Conv2d(8, 8, 3, padding=1), make_act()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DepthwiseNet(nn.Module):
    """MobileNet-style: conv, ReLU6, depthwise 3×3 (groups = channels), ReLU6, pointwise, GAP, fc."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.pw(F.relu6(self.dw(F.relu6(self.conv(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TFPadNet(nn.Module):
    """TF "same" padding done by hand: F.pad (asymmetric) before a stride-2 conv and a maxpool."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):  # 16×16 -> pad (0,1,0,1) -> conv s2 -> 8×8 -> pad -> pool -> 4×4
        x = torch.relu(self.conv(F.pad(x, (0, 1, 0, 1))))
        x = self.pool(F.pad(x, (0, 1, 0, 1), value=0.0))
        return self.fc(torch.flatten(x, 1))


class PoolNet(nn.Module):
    def __init__(self, pool: nn.Module, flat: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = pool
        self.fc = nn.Linear(flat, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class SoftmaxNet(nn.Module):
    def __init__(self, log: bool):
        super().__init__()
        self.inner = SmallCNN()
        self.log = log

    def forward(self, x):
        logits = self.inner(x)
        return F.log_softmax(logits, dim=1) if self.log else F.softmax(logits, dim=1)


class TwinConv(nn.Module):
    """Two convs with identical weights: the exporter deduplicates them behind Identity nodes."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.c2.weight.copy_(self.c1.weight)
            self.c2.bias.copy_(self.c1.bias)
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.c2(torch.relu(self.c1(x)))), 1))


# ----------------------------------------------------------------------------- ONNX-built models
def matmul_add_model(path) -> tuple[str, dict]:
    """A tf2onnx/Keras-style dense net: mean subtraction and scaling inside the graph, then
    Flatten → MatMul → Add → Relu → MatMul → Add (no Gemm, so no nn.Linear)."""
    w = {
        "mean": rand(1, 3, 1, 1, seed=1),
        "inv_std": np.abs(rand(1, 3, 1, 1, seed=2)) + 0.5,
        "w1": rand(48, 16, seed=3, scale=0.3),
        "b1": rand(16, seed=4),
        "w2": rand(16, 5, seed=5, scale=0.3),
        "b2": rand(5, seed=6),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_std"], ["scaled"]),
        helper.make_node("Flatten", ["scaled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Relu", ["h1b"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"]),
        helper.make_node("Add", ["b2", "h2"], ["logits"]),  # constant first: still a bias
    ]
    return onnx_file(path, nodes, w, (3, 4, 4), 5), w


def same_pad_model(path, mode: str = "SAME_UPPER") -> str:
    """TF-style ``auto_pad`` (never written by torch): stride-2 convs on an even size, where
    SAME pads asymmetrically, and a SAME maxpool; the second conv has no kernel_shape."""
    w = {
        "w1": rand(8, 3, 3, 3, seed=1, scale=0.3),
        "b1": rand(8, seed=2),
        "w2": rand(8, 8, 3, 3, seed=3, scale=0.2),
        "b2": rand(8, seed=4),
        "wf": rand(4, 8, seed=5),
        "bf": rand(4, seed=6),
    }
    nodes = [
        helper.make_node(
            "Conv", ["x", "w1", "b1"], ["c1"], auto_pad=mode, kernel_shape=[3, 3], strides=[2, 2]
        ),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], auto_pad=mode, kernel_shape=[2, 2], strides=[1, 1]
        ),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], auto_pad=mode, strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
    ]
    return onnx_file(path, nodes, w, (3, 16, 16), 4)


def constant_weight_model(path) -> tuple[str, dict]:
    """Conv and Gemm weights in Constant nodes (PaddlePaddle and other exporters)."""
    w = {
        "w": rand(4, 3, 3, 3, seed=1, scale=0.3),
        "b": rand(4, seed=2),
        "wf": rand(4 * 6 * 6, 3, seed=3, scale=0.2),
        "bf": rand(3, seed=4),
    }
    nodes = [
        helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k))
        for k, v in w.items()
    ]
    nodes += [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"]),
    ]
    return onnx_file(path, nodes, {}, (3, 8, 8), 3), w


def global_max_pool_model(path) -> str:
    """Keras' GlobalMaxPooling2D as the ONNX op GlobalMaxPool."""
    w = {
        "w": rand(6, 3, 3, 3, seed=1, scale=0.3),
        "b": rand(6, seed=2),
        "wf": rand(6, 3, seed=3),
        "bf": rand(3, seed=4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalMaxPool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"]),
    ]
    return onnx_file(path, nodes, w, (3, 8, 8), 3)


# ----------------------------------------------------------------------------- the zoo fixture
class Zoo:
    """Builds, exports and loads each model once per module; ``zoo(key)`` → (model, reference)."""

    def __init__(self, root):
        self.root = root
        self.cache: dict = {}

    def __call__(self, key: str, build, shape, exporter=17, dynamic: bool = True, **kwargs):
        if key not in self.cache:
            torch.manual_seed(0)
            module = build().eval()
            path = export_torch(
                module, self.root / f"{key}.onnx", shape, exporter, dynamic, **kwargs
            )
            self.cache[key] = (xplain.load_model(path), module, path)
        return self.cache[key]

    def onnx(self, key: str, write):
        if key not in self.cache:
            out = write(self.root / f"{key}.onnx")
            path, extra = out if isinstance(out, tuple) else (out, None)
            self.cache[key] = (xplain.load_model(path), extra, path)
        return self.cache[key]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return Zoo(tmp_path_factory.mktemp("zoo"))


def check_logits(model, module: nn.Module, batch: int = 3, seed: int = 1):
    """Loaded model and source model agree on a random batch; returns (x, logits)."""
    assert model.report.verified
    x = torch.randn(
        batch,
        model.spec.channels,
        model.spec.height,
        model.spec.width,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        got, ref = model(x), module(x)
    assert_close(got, ref)
    return x, got


def kinds(model) -> list[str]:
    return [a.kind for a in model.activations()]


# ============================================================================= exporters
EXPORTERS = [9, 11, 13, 17, DYNAMO]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_exporters_small_cnn(zoo, exporter):
    model, module, path = zoo(f"cnn_{exporter}", SmallCNN, (3, 16, 16), exporter)
    check_logits(model, module)
    report = model.report
    assert report.batch_checked  # dynamic batch: 1 vs 2 compared
    assert kinds(model) == ["relu", "relu"]
    assert [b.kind for b in model.bias_layers()] == ["conv", "conv", "linear"]
    assert model.default_feature_layer().shape == (16, 4, 4)
    if exporter == DYNAMO:
        assert report.opset >= 18
        assert report.opset_used == 17
        assert any(f"converted opset {report.opset} -> 17" in n for n in report.notes), report.notes
    else:
        assert report.opset == report.opset_used == exporter
        assert not any("converted opset" in n for n in report.notes)


@pytest.mark.parametrize("exporter", [9, 13, 17, DYNAMO])
def test_exporters_resnet_like(zoo, exporter):
    kwargs = {} if exporter == DYNAMO else {"training": torch.onnx.TrainingMode.PRESERVE}
    model, module, _ = zoo(f"resnet_{exporter}", ResNetLike, (3, 8, 8), exporter, **kwargs)
    check_logits(model, module)
    assert set(kinds(model)) == {"relu"}
    if exporter == DYNAMO:
        assert model.report.opset >= 18 and model.report.opset_used == 17
    else:
        assert model.report.op_counts.get("BatchNormalization") == 6  # kept unfolded
    assert model.default_feature_layer().shape == (16, 4, 4)


# ============================================================================= architectures
def test_plain_cnn_graph_knowledge(zoo):
    model, module, _ = zoo("cnn_17", SmallCNN, (3, 16, 16), 17)
    check_logits(model, module)
    biases = model.bias_layers()
    sources = [module.features[0].bias, module.features[3].bias, module.fc.bias]
    for layer, bias in zip(biases, sources):
        assert torch.equal(layer.bias.flatten(), bias.detach())
    assert biases[0].bias.shape == (1, 8, 1, 1) and biases[0].shape == (1, 8, 16, 16)
    assert isinstance(biases[2].module, nn.Linear)
    # cut vertices input → output; the default (Grad-CAM) layer is the last maxpool's output
    assert [f.shape for f in model.feature_layers()] == [(8, 16, 16)] * 2 + [(8, 8, 8)] + [
        (16, 8, 8)
    ] * 2 + [(16, 4, 4)]
    default = model.default_feature_layer()
    assert isinstance(model.module(default.name), nn.MaxPool2d)
    maps = xplain.explain(model, model.example_input(2), method="saliency").maps
    assert maps.shape == (2, 16, 16)


def test_mlp(zoo):
    model, module, _ = zoo("mlp", MLP, (1, 28, 28), 17)
    check_logits(model, module)
    assert (model.spec.channels, model.spec.height, model.spec.width, model.num_classes) == (
        1,
        28,
        28,
        10,
    )
    assert kinds(model) == ["relu"]
    assert [b.kind for b in model.bias_layers()] == ["linear", "linear"]
    assert model.feature_layers() == [] and model.default_feature_layer() is None  # nothing spatial
    assert xplain.explain(model, model.example_input(2)).maps.shape == (2, 28, 28)


@pytest.mark.parametrize("how", ["preserve", "no_folding"])
def test_batchnorm_unfolded(zoo, how):
    kwargs = (
        {"training": torch.onnx.TrainingMode.PRESERVE}
        if how == "preserve"
        else {"do_constant_folding": False}
    )
    model, module, _ = zoo(f"bn_{how}", BNNet, (3, 8, 8), 17, **kwargs)
    check_logits(model, module)
    assert model.report.op_counts["BatchNormalization"] == 3
    biases = model.bias_layers()
    assert [b.kind for b in biases] == ["conv", "conv", "batchnorm", "linear"]
    first, second, lone, _ = biases
    # the conv's bias layer sits after its BatchNorm, with the BN folded into the bias
    assert isinstance(model.module(first.node), nn.BatchNorm2d)
    assert isinstance(model.module(first.layer), nn.Conv2d)
    assert_close(
        first.bias.flatten(), bn_effective_bias(module.bn1, module.conv1.bias).detach(), 1e-5
    )
    assert_close(second.bias.flatten(), bn_effective_bias(module.bn2, None).detach(), 1e-5)
    assert_close(lone.bias.flatten(), bn_effective_bias(module.bn3, None).detach(), 1e-5)
    assert lone.module is None and isinstance(model.module(lone.node), nn.BatchNorm2d)
    assert not any(m.training for m in model.graph.modules())  # BN runs on running stats


ACTIVATIONS = {
    # name: (factory, expected kind, expected bounds)
    "relu6": (nn.ReLU6, "relu6", (0.0, 6.0)),
    "clip": (lambda: Clamp(-1.0, 2.0), "clip", (-1.0, 2.0)),
    "clamp_min0": (lambda: Clamp(0.0, None), "relu", (0.0, None)),
    "hardtanh": (lambda: nn.Hardtanh(-2.0, 2.0), "clip", (-2.0, 2.0)),  # exported as Clip(-2, 2)
    "leaky_relu": (lambda: nn.LeakyReLU(0.1), "leaky_relu", None),
    "prelu": (lambda: nn.PReLU(8, init=0.2), "prelu", None),
    "hardswish": (nn.Hardswish, "hardswish", None),
    "sigmoid": (nn.Sigmoid, "sigmoid", None),
}


@pytest.mark.parametrize(
    ("name", "exporter"),
    [
        (name, exporter)
        for name in sorted(ACTIVATIONS)
        for exporter in (11, 17, DYNAMO)
        if not (name == "hardswish" and exporter == 11)  # HardSwish is an ONNX op from opset 14
    ],
)
def test_activation_kinds(zoo, name, exporter):
    factory, kind, bounds = ACTIVATIONS[name]

    def build():
        net = ActNet(factory)
        if name == "prelu":
            with torch.no_grad():
                for m in (net.act1, net.act2):
                    m.weight.uniform_(0.05, 0.5)  # distinct per-channel slopes
        return net

    model, module, _ = zoo(f"act_{name}_{exporter}", build, (3, 8, 8), exporter)
    check_logits(model, module)
    acts = model.activations()
    assert [a.kind for a in acts] == [kind, kind]
    if bounds is not None:
        assert all(a.bounds == bounds for a in acts)
    assert all(a.rectifier == (kind not in ("hardswish", "sigmoid")) for a in acts)
    if name == "clamp_min0" and exporter != DYNAMO:  # written as Clip(x, min, "")
        assert any("dropped 2 omitted trailing inputs" in n for n in model.report.notes), (
            model.report.notes
        )
    if name == "leaky_relu":
        assert all(math.isclose(a.module.negative_slope, 0.1, rel_tol=1e-6) for a in acts)


def test_depthwise_conv(zoo):
    model, module, _ = zoo("depthwise", DepthwiseNet, (3, 16, 16), 17)
    check_logits(model, module)
    assert kinds(model) == ["relu6", "relu6"]
    convs = [b.module for b in model.bias_layers() if b.kind == "conv"]
    assert [c.groups for c in convs] == [1, 8, 1]
    assert convs[1].weight.shape == (8, 1, 3, 3)


@pytest.mark.parametrize("exporter", [11, 17, DYNAMO])
def test_tf_same_padding_with_pad_nodes(zoo, exporter):
    model, module, _ = zoo(f"tfpad_{exporter}", TFPadNet, (3, 16, 16), exporter)
    check_logits(model, module)
    # dynamo folds the zero pad in front of the conv into the conv's pads; the other stays
    assert model.report.op_counts.get("Pad") == (1 if exporter == DYNAMO else 2)
    if exporter == DYNAMO:  # onnx has no Pad 18 -> 17 adapter: the loader carries it over
        assert any(
            "converted opset" in n and "1 Pad nodes carried over" in n for n in model.report.notes
        )
    assert [b.kind for b in model.bias_layers()] == ["conv", "linear"]
    assert model.default_feature_layer().shape == (8, 4, 4)


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_tf_same_padding_auto_pad(zoo, mode):
    model, _, path = zoo.onnx(f"autopad_{mode}", lambda p: same_pad_model(p, mode))
    assert model.report.verified
    assert any("made 3 auto_pad" in n for n in model.report.notes), model.report.notes
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert_close(model(x), ort_logits(path, x))
    # an independent torch reference for the first conv: SAME pads 16 -> 8 as (0, 1) / (1, 0)
    w = onnx.load(path).graph.initializer
    w1, b1 = (torch.from_numpy(numpy_helper.to_array(t).copy()) for t in w[:2])
    pad = (0, 1, 0, 1) if mode == "SAME_UPPER" else (1, 0, 1, 0)
    ref = F.conv2d(F.pad(x, pad), w1, b1, stride=2)
    first = model.bias_layers()[0]
    with model.tap([first.node], gradients=False) as tap, torch.no_grad():
        model(x)
    assert_close(tap.activations[first.node], ref)
    assert [f.shape for f in model.feature_layers()][-1] == (8, 4, 4)


def test_residual_default_feature_layer(zoo):
    model, module, _ = zoo(
        "resnet_17", ResNetLike, (3, 8, 8), 17, training=torch.onnx.TrainingMode.PRESERVE
    )
    check_logits(model, module)
    default = model.default_feature_layer()
    assert isinstance(model.module(default.name), nn.ReLU)
    assert is_add(model, input_node(model, default.name))  # the post-add ReLU …
    assert default.shape == (16, 4, 4)
    relus = [a.name for a in model.activations()]
    features = {f.name for f in model.feature_layers()}
    post_add = [r for r in relus if is_add(model, input_node(model, r))]
    assert len(post_add) == 2
    # … and no node inside a residual branch is a cut vertex: only the stem ReLU and the
    # post-add ReLUs among the rectifiers
    assert [r for r in relus if r in features] == [relus[0], *post_add]
    adds = [n.name for n in model.graph.graph.nodes if is_add(model, n)]
    assert len(adds) == 2 and set(adds) <= features


POOLS = {
    # name: (pool, flat features, ONNX op the exporter writes)
    "maxpool": (lambda: nn.MaxPool2d(2), 8 * 4 * 4, "MaxPool"),
    "avgpool": (lambda: nn.AvgPool2d(2), 8 * 4 * 4, "AveragePool"),
    "avgpool_padded": (lambda: nn.AvgPool2d(3, 2, 1), 8 * 4 * 4, "AveragePool"),
    "global_avg": (lambda: nn.AdaptiveAvgPool2d(1), 8, "GlobalAveragePool"),
    "global_max": (lambda: nn.AdaptiveMaxPool2d(1), 8, "MaxPool"),
}


@pytest.mark.parametrize("exporter", [17, DYNAMO])
@pytest.mark.parametrize("name", sorted(POOLS))
def test_pooling(zoo, name, exporter):
    pool, flat, op = POOLS[name]
    model, module, _ = zoo(
        f"pool_{name}_{exporter}", lambda: PoolNet(pool(), flat), (3, 8, 8), exporter
    )
    check_logits(model, module)
    if exporter != DYNAMO:
        assert op in model.report.op_counts
    # the last spatial map before the spatial collapse: the conv's ReLU before a global pool,
    # the pool's output otherwise
    expected = (8, 8, 8) if name.startswith("global") else (8, 4, 4)
    assert model.default_feature_layer().shape == expected


def test_global_max_pool_op(zoo):
    model, _, path = zoo.onnx("gmp_op", global_max_pool_model)
    assert model.report.op_counts.get("GlobalMaxPool") == 1
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert_close(model(x), ort_logits(path, x))
    assert model.default_feature_layer().shape == (6, 8, 8)


@pytest.mark.parametrize("exporter", [9, 17, DYNAMO])
@pytest.mark.parametrize("head", ["flatten", "reshape"])
def test_flatten_vs_reshape_head(zoo, head, exporter):
    model, module, _ = zoo(
        f"head_{head}_{exporter}", lambda: SmallCNN(head=head), (3, 16, 16), exporter
    )
    check_logits(model, module, batch=5)
    ops = model.report.op_counts
    if exporter == DYNAMO:
        assert "Reshape" in ops
    else:
        assert ("Flatten" if head == "flatten" else "Reshape") in ops
    assert model.report.batch_checked


def test_gemm_head(zoo):
    model, module, _ = zoo("cnn_17", SmallCNN, (3, 16, 16), 17)
    assert model.report.op_counts.get("Gemm") == 1
    head = model.bias_layers()[-1]
    assert head.kind == "linear" and torch.equal(head.bias, module.fc.bias.detach())


def test_matmul_add_head(zoo):
    model, w, path = zoo.onnx("matmul_add", matmul_add_model)
    assert model.report.verified and "Gemm" not in model.report.op_counts
    x = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        assert_close(model(x), ort_logits(path, x))
    adds = [b for b in model.bias_layers() if b.kind == "add"]
    assert len(adds) == 3  # the in-graph mean subtraction is a bias too (Sub → -mean)
    assert_close(adds[0].bias, -torch.from_numpy(w["mean"]))
    assert_close(adds[1].bias, torch.from_numpy(w["b1"]))
    assert_close(adds[2].bias, torch.from_numpy(w["b2"]))
    assert adds[2].shape == (1, 5)


@pytest.mark.parametrize("channels", [1, 3])
def test_input_channels(zoo, channels):
    model, module, _ = zoo(
        f"channels_{channels}", lambda: SmallCNN(channels=channels), (channels, 16, 16), 17
    )
    check_logits(model, module)
    assert model.spec.channels == channels
    assert model.report.input_shape == [None, channels, 16, 16]
    assert xplain.explain(model, model.example_input(2)).maps.shape == (2, 16, 16)


@pytest.mark.parametrize("exporter", [17, DYNAMO])
@pytest.mark.parametrize("head", ["flatten", "reshape"])
def test_fixed_batch_one(zoo, head, exporter):
    model, module, _ = zoo(
        f"fixed_{head}_{exporter}",
        lambda: SmallCNN(head=head),
        (3, 16, 16),
        exporter,
        dynamic=False,
    )
    assert model.spec.fixed_batch and model.report.input_shape[0] == 1
    assert not model.report.batch_checked
    check_logits(model, module, batch=3)  # a batch of 3 runs one sample at a time
    maps = xplain.explain(model, model.example_input(3), targets=[0, 1, 2]).maps
    assert maps.shape == (3, 16, 16)


def test_dynamic_batch(zoo):
    model, module, _ = zoo("cnn_17", SmallCNN, (3, 16, 16), 17)
    assert not model.spec.fixed_batch and model.report.input_shape[0] is None
    check_logits(model, module, batch=7)


@pytest.mark.parametrize("exporter", [11, 17, DYNAMO])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_trailing_softmax_stripped(zoo, log, exporter):
    model, module, _ = zoo(
        f"softmax_{log}_{exporter}", lambda: SoftmaxNet(log), (3, 16, 16), exporter
    )
    assert model.report.verified  # verified against the probabilities onnxruntime computes
    assert model.report.softmax_stripped == ("LogSoftmax" if log else "Softmax")
    check_logits(model, module.inner)  # the model now returns the logits
    assert [b.kind for b in model.bias_layers()] == ["conv", "conv", "linear"]


def test_identity_deduplicated_weights(zoo):
    model, module, path = zoo("twin", TwinConv, (3, 8, 8), 17)
    assert model.report.op_counts.get("Identity", 0) >= 1  # the torch ≥1.12 dedup pattern
    assert any("folded" in n and "Identity" in n for n in model.report.notes)
    check_logits(model, module)
    convs = [b for b in model.bias_layers() if b.kind == "conv"]
    assert len(convs) == 2 and convs[0].module is not convs[1].module  # no shared module
    assert torch.equal(convs[0].module.weight, convs[1].module.weight)


def test_constant_node_weights(zoo):
    model, w, path = zoo.onnx("constants", constant_weight_model)
    assert model.report.op_counts["Constant"] == 4
    assert any("folded 4 Constant" in n for n in model.report.notes), model.report.notes
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert_close(model(x), ort_logits(path, x))
    conv, gemm = model.bias_layers()
    assert isinstance(conv.module, nn.Conv2d) and torch.equal(
        conv.bias.flatten(), torch.from_numpy(w["b"])
    )
    assert gemm.kind in ("linear", "gemm") and torch.equal(
        gemm.bias.flatten(), torch.from_numpy(w["bf"])
    )


# ============================================================================= FullGrad completeness
def completeness_terms(model, x: torch.Tensor, target: int):
    """Return f_target(x), ∇ₓf·x and the per-bias-layer terms ∇_b f·b (one sample)."""
    layers = model.bias_layers()
    x = x.clone().requires_grad_(True)
    with model.tap([b.node for b in layers], gradients=True) as tap, torch.enable_grad():
        logits = model(x)
        logits[0, target].backward()
    terms = {b.node: float((tap.gradients[b.node] * b.bias).sum()) for b in layers}
    return float(logits[0, target].detach()), float((x.grad * x.detach()).sum()), terms


FULLGRAD_CASES = {
    "cnn": lambda zoo: zoo("cnn_17", SmallCNN, (3, 16, 16), 17)[0],
    "bn_unfolded": lambda zoo: zoo(
        "bn_preserve", BNNet, (3, 8, 8), 17, training=torch.onnx.TrainingMode.PRESERVE
    )[0],
    "resnet_bn_unfolded": lambda zoo: zoo(
        "resnet_17", ResNetLike, (3, 8, 8), 17, training=torch.onnx.TrainingMode.PRESERVE
    )[0],
    "resnet_opset9": lambda zoo: zoo(
        "resnet_9", ResNetLike, (3, 8, 8), 9, training=torch.onnx.TrainingMode.PRESERVE
    )[0],
    "resnet_dynamo": lambda zoo: zoo(f"resnet_{DYNAMO}", ResNetLike, (3, 8, 8), DYNAMO)[0],
    "tfpad": lambda zoo: zoo("tfpad_17", TFPadNet, (3, 16, 16), 17)[0],
    "matmul_add": lambda zoo: zoo.onnx("matmul_add", matmul_add_model)[0],
    "auto_pad": lambda zoo: zoo.onnx(
        "autopad_SAME_UPPER", lambda p: same_pad_model(p, "SAME_UPPER")
    )[0],
    "depthwise_relu6": lambda zoo: zoo("depthwise", DepthwiseNet, (3, 16, 16), 17)[0],
}


@pytest.mark.parametrize("case", sorted(FULLGRAD_CASES))
def test_fullgrad_completeness(zoo, case):
    """For piecewise-linear nets f(x) = ∇ₓf·x + Σ_b ∇_b f·b exactly (no bias term missed)."""
    model = FULLGRAD_CASES[case](zoo)
    assert all(a.rectifier for a in model.activations())
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        x = torch.randn(1, model.spec.channels, model.spec.height, model.spec.width, generator=gen)
        with torch.no_grad():
            target = int(model(x).argmax())
        f, input_term, terms = completeness_terms(model, x, target)
        total = input_term + sum(terms.values())
        tol = 1e-4 * max(1.0, abs(f))
        assert abs(total - f) <= tol, (
            f"completeness off by {total - f:.3g} (f = {f:.4g}, terms {terms})"
        )
        # the identity is a proof of discovery only because every bias term matters: dropping
        # any one bias layer (a missed bias source) breaks it by far more than the tolerance
        for node, term in terms.items():
            assert abs(total - term - f) > tol, (
                f"bias layer {node} contributes nothing ({term:.3g})"
            )


def test_fullgrad_detects_a_missed_bias_source(zoo):
    """The same check with BatchNorm folding ignored (BN shifts dropped) fails loudly."""
    model = FULLGRAD_CASES["resnet_bn_unfolded"](zoo)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    f, input_term, terms = completeness_terms(model, x, 0)
    assert abs(input_term + sum(terms.values()) - f) <= 1e-4 * max(1.0, abs(f))
    # a naive discovery that only looked at conv/linear .bias would see just the fc bias
    fc = model.bias_layers()[-1]
    assert fc.kind == "linear"
    assert abs(input_term + terms[fc.node] - f) > 1e-2 * max(1.0, abs(f))


# ============================================================================= context managers
@pytest.fixture()
def resnet(zoo):
    return zoo("resnet_17", ResNetLike, (3, 8, 8), 17, training=torch.onnx.TrainingMode.PRESERVE)[0]


class Boom(RuntimeError):
    pass


def test_tap_restores_graph(resnet):
    code, x = resnet.graph.code, resnet.example_input(2)
    with torch.no_grad():
        before = resnet(x)

    def hooks():
        return sum(len(m._forward_hooks) for m in resnet.graph.modules())

    names = [b.node for b in resnet.bias_layers()]
    placeholder = next(n.name for n in resnet.graph.graph.nodes if n.op == "placeholder")
    with resnet.tap(names + [placeholder], gradients=False) as tap:
        assert hooks() == len(
            names
        )  # module nodes: forward hooks; the input: an inserted pass-through
        assert resnet.graph.code != code
        with torch.no_grad():
            assert torch.equal(resnet(x), before)
        assert set(tap.activations) == set(names) | {placeholder}
        torch.testing.assert_close(tap.activations[placeholder], x)
        with pytest.raises(RuntimeError, match="tapped"):  # a swap would silently bypass the hook
            with resnet.swap_modules({names[0]: torch.nn.Identity()}):
                pass
    assert resnet.graph.code == code and hooks() == 0
    with pytest.raises(Boom):
        with resnet.tap(names):
            raise Boom
    assert resnet.graph.code == code and hooks() == 0 and not resnet._surgery._tapped
    with torch.no_grad():
        assert torch.equal(resnet(x), before)
    assert not any(n.startswith("xplain_inserted") for n, _ in resnet.graph.named_children())


def test_insert_after_restores_graph(resnet):
    code, x = resnet.graph.code, resnet.example_input(2)
    with torch.no_grad():
        before = resnet(x)
    site = resnet.default_feature_layer().name

    class Zero(nn.Module):
        def forward(self, t):
            return torch.zeros_like(t)

    with resnet.insert_after({site: Zero()}):
        assert resnet.graph.code != code
        with torch.no_grad():  # everything after the site is cut: only the fc bias remains
            out = resnet(x)
        assert torch.allclose(out, resnet.bias_layers()[-1].bias.expand_as(out))
    assert resnet.graph.code == code
    with pytest.raises(Boom):
        with resnet.insert_after({site: Zero()}):
            raise Boom
    assert resnet.graph.code == code
    # a bad name after a good one: the good insertion is undone before the error escapes
    with pytest.raises(xplain.errors.UsageError):
        with resnet.insert_after({site: Zero(), "no_such_layer": Zero()}):
            pass
    assert resnet.graph.code == code
    with torch.no_grad():
        assert torch.equal(resnet(x), before)
    assert not any(n.startswith("xplain_inserted") for n, _ in resnet.graph.named_children())


def test_swap_modules_restores_graph(resnet):
    code, x = resnet.graph.code, resnet.example_input(2)
    with torch.no_grad():
        before = resnet(x)
    relus = [a.name for a in resnet.activations()]
    originals = {name: resnet.module(name) for name in relus}
    with resnet.swap_modules({name: nn.Identity() for name in relus}):
        assert all(isinstance(resnet.module(n), nn.Identity) for n in relus)
        with torch.no_grad():
            assert not torch.equal(resnet(x), before)
    assert resnet.graph.code == code
    assert all(resnet.module(n) is originals[n] for n in relus)
    with pytest.raises(Boom):
        with resnet.swap_modules({relus[0]: nn.Identity()}):
            raise Boom
    assert resnet.module(relus[0]) is originals[relus[0]]
    with pytest.raises(xplain.errors.UsageError):
        with resnet.swap_modules({relus[0]: nn.Identity(), "no_such_layer": nn.Identity()}):
            pass
    assert resnet.module(relus[0]) is originals[relus[0]]
    assert resnet.graph.code == code
    with torch.no_grad():
        assert torch.equal(resnet(x), before)


def test_bias_layers_follow_weights_edited_in_place(tiny_cnn_path):
    """Randomisation tests edit weights in place; the effective biases must not be stale."""
    model = xplain.load_model(tiny_cnn_path, device="cpu")
    before = {b.node: b.bias.clone() for b in model.bias_layers()}
    bn = (
        next(m for m in model.graph.modules() if isinstance(m, torch.nn.BatchNorm2d))
        if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.graph.modules())
        else None
    )
    with torch.no_grad():
        for p in model.graph.parameters():
            p.add_(1.0)
        if bn is not None:
            bn.running_mean.add_(1.0)
    after = {b.node: b.bias for b in model.bias_layers()}
    assert before.keys() == after.keys()
    for node in before:
        assert not torch.allclose(before[node], after[node]), node
