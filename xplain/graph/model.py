"""The converted classifier every method works on, and what is known about its graph.

A :class:`Model` wraps the ``torch.fx.GraphModule`` that onnx2torch produced (eval mode,
frozen parameters, on one device) with the input spec and graph knowledge computed once by
shape propagation. Methods change how gradients flow only through the context managers
here, which always restore the graph — also after an exception (invariant 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import operator
from collections.abc import Iterator, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from ..output.display import display_name
from .kinds import BATCHNORM, weight_layer
from .kinds import batchnorm_affine as _bn_affine

#: activation kinds that rectify (piecewise-linear with a zero/clamped region)
RECTIFIERS = frozenset({"relu", "relu6", "hardtanh", "clip", "leaky_relu", "prelu"})


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the model eats: one float32 image batch B×C×H×W."""

    name: str  #: the ONNX input's original name (for display only)
    channels: int
    height: int
    width: int
    fixed_batch: bool  #: the graph is fixed at batch 1, so batches are run one sample at a time
    num_classes: int


@dataclasses.dataclass(frozen=True)
class Activation:
    name: str  #: fx node name
    kind: str  #: relu, relu6, hardtanh, clip, leaky_relu, prelu, sigmoid, hardswish, …
    module: nn.Module
    bounds: tuple[float | None, float | None] | None = None  #: for clip/hardtanh/relu6

    @property
    def rectifier(self) -> bool:
        return self.kind in RECTIFIERS


@dataclasses.dataclass(frozen=True)
class BiasLayer:
    """A place where a constant is added to the signal.

    ``node`` is where the (effective) bias has been added — after a BatchNorm that follows a
    conv, so tapping the gradient there and multiplying by ``bias`` gives the layer's
    FullGrad bias term. ``layer`` names the weight layer (conv/linear), if any."""

    node: str
    layer: str
    kind: str  #: conv, linear, gemm, batchnorm, add
    bias: torch.Tensor  #: broadcastable to the output at ``node`` (per channel for conv/BN)
    module: nn.Module | None  #: the conv/linear module (None for BN-only or constant adds)
    shape: tuple[int, ...]  #: output shape at ``node`` for a batch of one


NCHW, NHWC, TOKENS = "nchw", "nhwc", "tokens"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the channels and the spatial grid sit in one feature tensor.

    ``nchw``: B×C×h×w (convolutional maps). ``nhwc``: B×h×w×C (Swin, ConvNeXt's channels-last
    blocks). ``tokens``: B×N×C with ``prefix`` leading non-spatial tokens (class, distillation,
    register tokens) followed by h·w patch tokens in raster order (ViT, DeiT, BEiT …).
    :meth:`to_spatial` gives every layout as B×C×h×w; :meth:`from_spatial` is its inverse,
    taking the prefix tokens from ``like`` (for methods that replace the map, e.g. a
    bottleneck). Found once from the graph by shape propagation (:meth:`Model.layout`)."""

    kind: str  #: nchw | nhwc | tokens
    channels: int
    grid: tuple[int, int]  #: h, w
    prefix: int = 0  #: tokens only: leading tokens that are not grid cells

    def to_spatial(self, t: torch.Tensor) -> torch.Tensor:
        """B×C×h×w view of a tensor in this layout (prefix tokens dropped)."""
        if self.kind == NHWC:
            return t.permute(0, 3, 1, 2)
        if self.kind == TOKENS:
            h, w = self.grid
            return t[:, self.prefix :].transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)
        return t

    def from_spatial(self, s: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """The inverse of :meth:`to_spatial`; prefix tokens come from ``like`` (same layout,
        broadcastable batch), zeros without it."""
        if self.kind == NHWC:
            return s.permute(0, 2, 3, 1)
        if self.kind == TOKENS:
            grid = s.flatten(2).transpose(1, 2)
            if not self.prefix:
                return grid
            if like is None:
                head = grid.new_zeros(grid.shape[0], self.prefix, grid.shape[2])
            else:
                head = like[:, : self.prefix].expand(grid.shape[0], -1, -1)
            return torch.cat([head.to(grid), grid], dim=1)
        return s

    def describe(self) -> str:
        """Human-readable, e.g. ``tokens B×(1+7×7)×C`` (shown by ``xplain inspect``)."""
        h, w = self.grid
        if self.kind == TOKENS:
            tokens = f"({self.prefix}+{h}×{w})" if self.prefix else f"{h}×{w}"
            return f"tokens B×{tokens}×{self.channels}"
        if self.kind == NHWC:
            return f"channels-last B×{h}×{w}×{self.channels}"
        return f"B×{self.channels}×{h}×{w}"


@dataclasses.dataclass(frozen=True)
class FeatureLayer:
    """A feature map methods can read as a spatial grid.

    Usually a cut vertex (all information flows through it); for token models the default
    layer is the last block's first LayerNorm output (``cut`` False), as pytorch-grad-cam
    uses for ViTs, since after the last block only the class token reaches the logits."""

    name: str
    shape: tuple[int, ...]  #: the tensor's per-sample shape (C×H×W for nchw, N×C for tokens)
    layout: Layout | None = None
    cut: bool = True

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """C×h×w after :meth:`to_spatial`."""
        if self.layout is None:
            return tuple(self.shape)  # type: ignore[return-value]
        return (self.layout.channels, *self.layout.grid)

    def to_spatial(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.layout is None else self.layout.to_spatial(t)

    def from_spatial(self, s: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        return s if self.layout is None else self.layout.from_spatial(s, like)


@dataclasses.dataclass
class LoadReport:
    """Facts about loading, shown by ``xplain inspect`` and kept in every JSON record."""

    path: str
    digest: str
    producer: str = ""
    ir_version: int = 0
    opset: int = 0
    opset_used: int = 0
    op_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    input_name: str = ""
    input_shape: list = dataclasses.field(default_factory=list)
    output_name: str = ""
    output_shape: list = dataclasses.field(default_factory=list)
    outputs: list[str] = dataclasses.field(default_factory=list)
    softmax_stripped: str | None = None
    verified: bool = False
    max_abs_diff: float | None = None
    #: max |diff| / max(1, max |logit|): the quantity verification bounds by ``VERIFY_TOL``. A
    #: model with huge logits (random-weight Inception v3: ~1e12) has a huge absolute difference
    #: at float32 precision; this says how far off the conversion is at the output's own scale.
    max_rel_diff: float | None = None
    batch_checked: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)
    original_names: dict[str, str] = dataclasses.field(default_factory=dict)


def _activation_kind(module: nn.Module) -> tuple[str, tuple | None] | None:
    from onnx2torch.node_converters.activations import OnnxHardSigmoid, OnnxPReLU
    from onnx2torch.node_converters.clip import OnnxClip

    if isinstance(module, nn.ReLU):
        return "relu", (0.0, None)
    if isinstance(module, nn.ReLU6):
        return "relu6", (0.0, 6.0)
    if isinstance(module, nn.Hardtanh):
        return "hardtanh", (float(module.min_val), float(module.max_val))
    if isinstance(module, OnnxClip):
        lo = None if module.min_val is None else float(module.min_val)
        hi = None if module.max_val is None else float(module.max_val)
        return "clip", (lo, hi)
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", None
    if isinstance(module, (OnnxPReLU, nn.PReLU)):
        return "prelu", None
    for cls, kind in (
        (nn.Sigmoid, "sigmoid"),
        (nn.Hardswish, "hardswish"),
        (OnnxHardSigmoid, "hardsigmoid"),
        (nn.SiLU, "silu"),
        (nn.GELU, "gelu"),
        (nn.ELU, "elu"),
        (nn.CELU, "celu"),
        (nn.SELU, "selu"),
        (nn.Softplus, "softplus"),
        (nn.Mish, "mish"),
        (nn.Tanh, "tanh"),
    ):
        if isinstance(module, cls):
            return kind, None
    return None


#: what a method may declare in ``Capabilities.requires``
REQUIREMENTS = {
    "rectifiers": "every non-linearity is a rectifier (gates such as squeeze-excitation allowed)",
    "lrp-rules": "every non-linearity has an LRP rule (no sigmoid/softplus activations, Group/InstanceNorm, LRN)",
    "attention": "global self-attention (a Softmax between Q·Kᵀ and ·V over all tokens)",
}

_DISPLAY = {
    "relu": "ReLU",
    "relu6": "ReLU6",
    "clip": "Clip",
    "hardtanh": "Hardtanh",
    "leaky_relu": "LeakyReLU",
    "prelu": "PReLU",
    "gelu": "GELU",
    "silu": "SiLU",
    "hardswish": "Hardswish",
    "sigmoid": "Sigmoid",
    "hardsigmoid": "HardSigmoid",
    "tanh": "Tanh",
    "elu": "ELU",
    "celu": "CELU",
    "selu": "SELU",
    "softplus": "Softplus",
    "erf": "Erf",
    "gate": "sigmoid gates",
    "layernorm": "LayerNormalization",
    "groupnorm": "GroupNormalization",
    "instancenorm": "InstanceNormalization",
    "lrn": "LRN",
    "softmax": "Softmax (attention)",
    "divide": "divisions by a signal",
    "product": "products of two signals",
}

#: kinds the LRP composite has no rule for (``requirement_problem("lrp-rules")``)
_NO_LRP_RULE = frozenset(
    {"sigmoid", "hardsigmoid", "softplus", "erf", "groupnorm", "instancenorm", "lrn"}
)


def _census(kinds: dict[str, list[str]]) -> str:
    return ", ".join(f"{_DISPLAY.get(k, k)} ({len(v)})" for k, v in kinds.items())


def _is_layer_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__ in (
        "OnnxLayerNorm",
        "OnnxLayerNormalization",
    )


def _product_kind(module: nn.Module) -> str | None:
    """mul / div / matmul for modules multiplying their two inputs, else None."""
    name = type(module).__name__
    if name in ("OnnxMatMul", "OnnxEinsum"):
        return "matmul"
    function = getattr(module, "math_op_function", None)
    if name == "OnnxBinaryMathOperation" and function in (torch.mul, torch.div):
        return "mul" if function is torch.mul else "div"
    return None


@dataclasses.dataclass(frozen=True)
class Attention:
    """One attention-probability tensor (a Softmax over the key axis)."""

    node: str  #: the Softmax's fx node name
    tokens: int  #: N, the number of keys (= queries)
    maps: int  #: attention maps per image at batch 1 (heads; windows × heads when windowed)
    layout: Layout | None  #: the token layout (prefix, grid); None for windowed attention
    windowed: bool
    #: the feature layer (a cut vertex) that feeds the block: its tokens are the block's tokens;
    #: windowed attention (Swin) attends within windows of this layer's grid
    stream: str | None = None
    stream_layout: Layout | None = None


class Model:
    """A converted, verified classifier: call it with ``x`` (B×C×H×W) to get logits (B×K)."""

    def __init__(
        self,
        graph: fx.GraphModule,
        spec: InputSpec,
        report: LoadReport,
        labels: list[str] | None = None,
        sidecar: dict | None = None,
    ):
        self.graph = graph
        self.spec = spec
        self.report = report
        self.labels = labels
        #: where ``labels`` came from: "sidecar", "given", "imagenet (default for 1000 classes)"…
        self.labels_source: str | None = "given" if labels else None
        self.sidecar = sidecar or {}
        self._insert_ids = itertools.count()
        self._tapped: set[str] = (
            set()
        )  #: module targets a live tap hooks (they must not be swapped)
        self.state_dir: str | Path | None = (
            None  #: where fitted state is looked up (None: the default state dir)
        )
        self._state_hidden = False  #: inside :meth:`without_fitted_state`
        #: method -> (tensors, meta) read once by a driver and shipped (Ray workers): used instead of the disk
        self.preloaded_state: dict | None = None

    # ---------------------------------------------------------------- running
    @property
    def device(self) -> torch.device:
        for tensor in itertools.chain(self.graph.parameters(), self.graph.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def digest(self) -> str:
        return self.report.digest

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def to(self, device) -> Model:
        self.graph.to(device)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch; a graph fixed at batch 1 runs one sample at a time."""
        if self.spec.fixed_batch and x.shape[0] != 1:
            return torch.cat([self.graph(xi) for xi in x.split(1)])
        return self.graph(x)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch with no autograd graph: the one entry point for forward-only work.

        Perturbation metrics and black-box methods (occlusion, RISE, LIME, deletion, ...) call this
        instead of ``model(x)`` so that the run's execution engine (eager torch today; onnxruntime
        where it is faster, issue 21) can serve them without any plugin knowing which one ran."""
        with torch.inference_mode():
            return self(x)

    def example_input(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        shape = (batch, self.spec.channels, self.spec.height, self.spec.width)
        return torch.randn(shape, generator=gen).to(self.device)

    def label(self, index: int) -> str | None:
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        return None

    def preprocess(self, image, **options):
        """``image`` (a path or a PIL image) as this model's input: ``(x, geometry)``, ``x`` a
        1×C×H×W float32 tensor on the model's device, ``geometry`` the resize and crop (to draw a
        map back onto the photo). The CLI's rules: ``options`` (preset, resize, mean, std) over
        the sidecar over the preset chosen by input size (:mod:`xplain.data.preprocessing`)."""
        from ..data.preprocessing import preprocess_image  # a later stage: the image pipeline

        return preprocess_image(self, image, **options)

    def fitted_state(self, method: str) -> tuple[dict, dict]:
        """The state ``xplain fit METHOD`` saved for this model: ``(tensors, meta)``.

        Raises an error that tells the user the fit command when there is none."""
        from ..errors import InputDataError
        from ..run.state import load_state

        if self._state_hidden:  # inside without_fitted_state: neither the disk nor a preloaded copy
            found = None
        elif self.preloaded_state and method in self.preloaded_state:
            tensors, meta = self.preloaded_state[method]
            return {k: v.to(self.device) for k, v in tensors.items()}, dict(meta)
        else:
            found = load_state(self.digest, method, root=self.state_dir, device=self.device)
        if found is None:
            raise InputDataError(
                f"no fitted state for method {method!r} and this model",
                path=self.report.path,
                hint=f"run `xplain fit {method} {self.report.path} DATA` first",
            )
        return found

    @property
    def fitted_state_hidden(self) -> bool:
        """True inside :meth:`without_fitted_state` (methods that cache state key on it)."""
        return self._state_hidden

    @contextlib.contextmanager
    def without_fitted_state(self) -> Iterator[None]:
        """Inside, :meth:`fitted_state` finds nothing: state fitted on this model's weights must
        not be used once they are changed (the cascading-randomisation metric), so methods with a
        fallback re-estimate what they need on the model as it is, and the others say so."""
        saved, self._state_hidden = self._state_hidden, True
        try:
            yield
        finally:
            self._state_hidden = saved

    # ---------------------------------------------------------------- graph knowledge
    def node(self, name: str) -> fx.Node:
        """The fx node called ``name`` — its safe id, or the original ONNX node name behind it.

        Node names are replaced by safe ids before conversion (they reach generated code); users
        know the exporter's names (``/blocks/blocks.3/Add``), so both are accepted."""
        for node in self.graph.graph.nodes:
            if node.name == name:
                return node
        from ..errors import UsageError

        matches = self._by_onnx_name.get(name, []) if name else []
        if len(matches) == 1:
            return self.node(matches[0])
        shown = display_name(name)
        if len(matches) > 1:
            raise UsageError(
                f"layer name {shown} names {len(matches)} ONNX nodes",
                hint="use one of their ids: " + ", ".join(matches[:8]),
            )
        raise UsageError(
            f"no layer named {shown}", hint="see `xplain inspect MODEL` for layer names"
        )

    def onnx_name(self, name: str) -> str | None:
        """The original ONNX node name behind fx node ``name`` (None if it has none, e.g. an
        indexing node onnx2torch added). Raw text from the file: escape it for display
        (:func:`display_name`)."""
        node = next((n for n in self.graph.graph.nodes if n.name == name), None)
        if node is None:
            return None
        key = node.target if node.op == "call_module" else node.name
        original = self.report.original_names.get(key) if isinstance(key, str) else None
        return original or None

    @cached_property
    def _by_onnx_name(self) -> dict[str, list[str]]:
        targets = {n.target: n.name for n in self.graph.graph.nodes if n.op == "call_module"}
        found: dict[str, list[str]] = {}
        for safe, original in self.report.original_names.items():
            if original and safe in targets:
                found.setdefault(original, []).append(targets[safe])
        return found

    def module(self, name: str) -> nn.Module:
        node = self.node(name)
        if node.op != "call_module":
            raise KeyError(f"{name} is not a module")
        return self.graph.get_submodule(str(node.target))

    @cached_property
    def _shapes(self) -> dict[str, tuple]:
        """Output shape of every tensor-valued node for a batch of one (fx ShapeProp)."""
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(self.graph).propagate(self.example_input(1))
        shapes = {}
        for node in self.graph.graph.nodes:
            meta = node.meta.get("tensor_meta")
            if meta is not None and hasattr(meta, "shape"):
                shapes[node.name] = (tuple(meta.shape), meta.dtype)
        return shapes

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name][0]

    def _flowing(self) -> list[fx.Node]:
        """Nodes carrying float signal derived from the input (not constants, not shapes)."""
        reached: set[fx.Node] = set()
        out = []
        for node in self.graph.graph.nodes:
            if (
                node.op == "placeholder"
                or node.op in ("call_module", "call_function", "call_method")
                and any(a in reached for a in node.all_input_nodes)
            ):
                reached.add(node)
            else:
                continue
            shape_dtype = self._shapes.get(node.name)
            if shape_dtype is not None and shape_dtype[1].is_floating_point:
                out.append(node)
        return out

    @cached_property
    def _activations(self) -> list[Activation]:
        found = []
        for node in self.graph.graph.nodes:
            if node.op != "call_module":
                continue
            module = self.graph.get_submodule(node.target)
            kind = _activation_kind(module)
            if kind is not None:
                found.append(Activation(node.name, kind[0], module, kind[1]))
        return found

    def activations(self) -> list[Activation]:
        """Every activation module and its kind, in graph order."""
        return list(self._activations)

    def _find_bias_layers(self) -> list[BiasLayer]:
        from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
        from onnx2torch.node_converters.gemm import OnnxGemm

        flowing = set(self._flowing())
        found: list[BiasLayer] = []
        consumed_bn: set[str] = set()
        nodes = list(self.graph.graph.nodes)
        for node in nodes:
            if node.op != "call_module" or node not in flowing:
                continue
            module = self.graph.get_submodule(node.target)
            weight = weight_layer(module)
            if weight is not None:
                kind = "linear" if isinstance(weight, nn.Linear) else "conv"
                bias = weight.bias.detach() if isinstance(weight.bias, torch.Tensor) else None
                out_node = node
                users = list(node.users)
                if len(users) == 1 and users[0].op == "call_module":
                    bn = self.graph.get_submodule(users[0].target)
                    if isinstance(bn, BATCHNORM):
                        scale, shift = _bn_affine(bn)
                        base = bias if bias is not None else torch.zeros_like(shift)
                        bias = base * scale + shift
                        out_node = users[0]
                        consumed_bn.add(users[0].name)
                if bias is None:
                    continue
                found.append(
                    BiasLayer(
                        out_node.name,
                        node.name,
                        kind,
                        _per_channel(bias, kind, self.shape(out_node.name)),
                        weight,
                        self.shape(out_node.name),
                    )
                )
            elif isinstance(module, BATCHNORM) and node.name not in consumed_bn:
                scale, shift = _bn_affine(module)
                found.append(
                    BiasLayer(
                        node.name,
                        node.name,
                        "batchnorm",
                        _per_channel(shift, "conv", self.shape(node.name)),
                        None,
                        self.shape(node.name),
                    )
                )
            elif isinstance(module, OnnxGemm) and len(node.args) > 2:
                c = self._constant(node.args[2])
                if c is not None:
                    found.append(
                        BiasLayer(
                            node.name,
                            node.name,
                            "gemm",
                            (c * module.beta).detach(),
                            module,
                            self.shape(node.name),
                        )
                    )
            elif isinstance(module, OnnxBinaryMathOperation) and module.math_op_function in (
                torch.add,
                torch.sub,
            ):
                a, b = node.args[:2]
                ca, cb = self._constant(a), self._constant(b)
                if (ca is None) == (cb is None):
                    continue  # residual add (two signals) or constant arithmetic
                const = cb if cb is not None else ca
                assert const is not None  # exactly one side is a constant
                if module.math_op_function is torch.sub and cb is not None:
                    const = -const
                found.append(
                    BiasLayer(
                        node.name, node.name, "add", const.detach(), None, self.shape(node.name)
                    )
                )
        return found

    def _constant(self, arg: Any) -> torch.Tensor | None:
        """The tensor behind a get_attr/OnnxConstant argument, or None for a live signal."""
        if not isinstance(arg, fx.Node):
            return None
        if arg.op == "get_attr":
            value: Any = self.graph
            for part in str(arg.target).split("."):
                value = getattr(value, part)
            return value if isinstance(value, torch.Tensor) and value.is_floating_point() else None
        if arg.op == "call_module" and not arg.all_input_nodes:
            value = getattr(self.graph.get_submodule(str(arg.target)), "value", None)
            return value if isinstance(value, torch.Tensor) and value.is_floating_point() else None
        return None

    def bias_layers(self) -> list[BiasLayer]:
        """Every bias source (conv/linear with BatchNorm folded in, lone BN, Gemm C, constant adds).

        Found afresh on each call (a walk over the graph, cheap next to a backward pass), so the
        effective biases follow weights edited in place, e.g. by a randomisation test."""
        return self._find_bias_layers()

    @cached_property
    def _cuts(self) -> list[fx.Node]:
        """Flowing nodes that all information passes through (cut vertices), in graph order."""
        flowing = self._flowing()
        order = {n: i for i, n in enumerate(self.graph.graph.nodes)}
        last_use = {n: max((order[u] for u in n.users), default=order[n]) for n in flowing}
        live: set[fx.Node] = set()
        cuts = []
        for node in flowing:
            live.add(node)
            live = {m for m in live if last_use[m] > order[node] or m is node}
            if live == {node} and node.op != "placeholder":
                cuts.append(node)
        return cuts

    # ---------------------------------------------------------------- layouts
    def _is_grid(self, h: int, w: int) -> bool:
        """h×w is the input grid downsampled by one integer factor (floor or ceil)."""
        if h < 1 or w < 1 or h * w < 2:
            return False
        big_h, big_w = self.spec.height, self.spec.width
        for s in {max(1, big_h // h), max(1, -(-big_h // h))}:
            if h in (big_h // s, -(-big_h // s)) and w in (big_w // s, -(-big_w // s)):
                return True
        return False

    def _channels_last_evidence(self, node: fx.Node) -> int:
        """+1 per neighbour that works on the last axis (LayerNorm, Linear), −1 per one that
        works on axis 1 (conv, BatchNorm, pooling): breaks ties for square maps with C = H."""
        score = 0
        for other in [node, *node.users, *node.all_input_nodes]:
            if other.op != "call_module":
                continue
            module = self.graph.get_submodule(str(other.target))
            name = type(module).__name__
            if isinstance(module, (nn.LayerNorm, nn.Linear)) or "LayerNorm" in name:
                score += 1
            elif (
                isinstance(
                    module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.MaxPool2d, nn.AvgPool2d)
                )
                or "Pool" in name
            ):
                score -= 1
        return score

    @cached_property
    def _grids(self) -> set[tuple[int, int]]:
        """Every spatial grid a rank-4 tensor of the graph has (what token counts are read against)."""
        grids = set()
        for node in self._flowing():
            shape = self.shape(node.name)
            if len(shape) == 4 and shape[0] == 1:
                for h, w in ((shape[2], shape[3]), (shape[1], shape[2])):
                    if self._is_grid(h, w):
                        grids.add((h, w))
        return grids

    def _token_layout(self, tokens: int, channels: int, max_prefix: int = 16) -> Layout | None:
        """B×N×C read as ``prefix`` tokens + a grid the graph has: the grid with the fewest
        leftover tokens (N − h·w, at most ``max_prefix`` and fewer than the grid cells)."""
        best = None
        for h, w in self._grids:
            extra = tokens - h * w
            if 0 <= extra <= max_prefix and extra < h * w and (best is None or extra < best[0]):
                best = (extra, (h, w))
        return None if best is None else Layout(TOKENS, channels, best[1], best[0])

    def _flattened_channels_first(self, node: fx.Node, known: dict[str, Layout]) -> bool:
        """B×C×(h·w): a B×C×h×w map with its grid flattened (before the transpose to tokens);
        told apart from tokens B×N×C when C = N by where it comes from."""
        source = node.all_input_nodes[0] if node.all_input_nodes else None
        layout = known.get(source.name) if source is not None else None
        shape = self.shape(node.name)
        return (
            layout is not None
            and layout.kind == NCHW
            and layout.channels == shape[1]
            and layout.grid[0] * layout.grid[1] == shape[2]
        )

    @cached_property
    def _layouts(self) -> dict[str, Layout]:
        out = {}
        for node in self._flowing():
            shape = self.shape(node.name)
            if not shape or shape[0] != 1:
                continue
            if len(shape) == 4:
                first, last = self._is_grid(shape[2], shape[3]), self._is_grid(shape[1], shape[2])
                if last and (not first or self._channels_last_evidence(node) > 0):
                    out[node.name] = Layout(NHWC, shape[3], (shape[1], shape[2]))
                elif first or (
                    min(shape[2], shape[3]) > 1 and self._channels_last_evidence(node) <= 0
                ):
                    # as before layouts: a rank-4 map with h, w > 1 is B×C×H×W (odd sizes such as
                    # Inception's 147×147 are not a clean downsampling); a 1×W "grid" that is not
                    # one is a pooled channels-last tensor (ConvNeXt's head: B×1×1×C)
                    out[node.name] = Layout(NCHW, shape[1], (shape[2], shape[3]))
            elif len(shape) == 3:
                layout = self._token_layout(shape[1], shape[2])
                if layout is not None and not self._flattened_channels_first(node, out):
                    out[node.name] = layout
        return out

    def layout(self, name: str) -> Layout | None:
        """The layout of node ``name``'s output (None: not a spatial feature tensor)."""
        self.node(name)  # UsageError for an unknown name
        return self._layouts.get(name)

    # ---------------------------------------------------------------- feature layers
    @cached_property
    def _feature_layers(self) -> list[FeatureLayer]:
        layers = []
        for node in self._cuts:
            layout = self._layouts.get(node.name)
            if layout is not None:
                layers.append(FeatureLayer(node.name, tuple(self.shape(node.name)[1:]), layout))
        extra = self._token_default(layers)
        if extra is not None and all(f.name != extra.name for f in layers):
            order = {n.name: i for i, n in enumerate(self.graph.graph.nodes)}
            layers = sorted([*layers, extra], key=lambda f: order[f.name])
        self._default_name = (
            extra.name if extra is not None else (layers[-1].name if layers else None)
        )
        return layers

    def _token_default(self, layers: list[FeatureLayer]) -> FeatureLayer | None:
        """For token models read through prefix tokens (ViT/DeiT): the first LayerNorm of the
        last block that has attention, i.e. the tokens entering that block's attention.

        After the last block only the class token reaches the logits, so a map there has no
        gradient on the patch tokens; pytorch-grad-cam uses ``blocks[-1].norm1`` for this."""
        tokens = [f for f in layers if f.layout is not None and f.layout.kind == TOKENS]
        last = layers[-1].layout if layers else None
        if not tokens or last is None or last.kind != TOKENS or not last.prefix:
            return None
        order = {n: i for i, n in enumerate(self.graph.graph.nodes)}
        softmax = [order[self.node(a.node)] for a in self.attention()]
        for start, end in reversed(list(zip(tokens, tokens[1:]))):
            lo, hi = order[self.node(start.name)], order[self.node(end.name)]
            if not any(lo < s < hi for s in softmax):
                continue
            for user in sorted(self.node(start.name).users, key=order.__getitem__):
                if user.op == "call_module" and _is_layer_norm(
                    self.graph.get_submodule(str(user.target))
                ):
                    layout = self._layouts.get(user.name)
                    if layout is not None:
                        return FeatureLayer(
                            user.name, tuple(self.shape(user.name)[1:]), layout, cut=False
                        )
            return start
        return None

    def feature_layers(self) -> list[FeatureLayer]:
        """Feature maps methods can read spatially, input to output, each with its layout:
        the cut vertices with a spatial layout (B×C×H×W, B×H×W×C, tokens) and, for class-token
        models, the default layer inside the last block."""
        return list(self._feature_layers)

    def default_feature_layer(self) -> FeatureLayer | None:
        """The Grad-CAM/IBA default: the last spatial cut vertex before the spatial collapse.

        Among equal-shaped consecutive cuts the last one (after the rectifier) wins. Class-token
        models (ViT, DeiT): the tokens entering the last block's attention, after its first
        LayerNorm (see :meth:`_token_default`)."""
        layers = self._feature_layers
        return next((f for f in layers if f.name == self._default_name), None)

    def feature_layer(self, name: str = "") -> FeatureLayer | None:
        """The named node as a :class:`FeatureLayer` (any node with a spatial layout, cut vertex
        or not), or the default for an empty name; None when it has no spatial layout."""
        if not name:
            return self.default_feature_layer()
        node = self.node(name)  # UsageError for an unknown name
        for f in self._feature_layers:
            if f.name == node.name:
                return f
        layout = self._layouts.get(node.name)
        if layout is None:
            return None
        return FeatureLayer(
            node.name, tuple(self.shape(node.name)[1:]), layout, cut=node in self._cuts
        )

    # ---------------------------------------------------------------- non-linearities
    def signal_inputs(self, node: fx.Node | str) -> list[fx.Node]:
        """The inputs of ``node`` (an fx node or its name) whose *values* depend on the model
        input's values. Constants are not signal, and neither is a tensor's shape nor what is
        computed from it: the classic exporter writes ``x.view(b, -1)`` as Shape → Gather →
        Unsqueeze → Concat → Reshape, a Reshape with one signal input, not two."""
        return self._signal_inputs(self.node(node) if isinstance(node, str) else node)

    def _signal_inputs(self, node: fx.Node) -> list[fx.Node]:
        flowing = self._flowing_set
        return [a for a in node.all_input_nodes if a in flowing]

    @cached_property
    def _flowing_set(self) -> set[fx.Node]:
        """Flowing nodes whose *values* depend on the input's values: a tensor's shape (Shape
        and what is computed from it, e.g. an attention scale √d) is not signal."""
        values: set[fx.Node] = set()
        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                values.add(node)
                continue
            if node.op not in ("call_module", "call_function", "call_method"):
                continue
            module = self.graph.get_submodule(node.target) if node.op == "call_module" else None
            if type(module).__name__ in ("OnnxShape", "OnnxSize") or node.target in ("size", "dim"):
                continue
            if any(a in values for a in node.all_input_nodes):
                values.add(node)
        return values & set(self._flowing())

    def _chain_up(self, node: fx.Node, steps: int = 8) -> list[fx.Node]:
        """``node`` and its producers while each has exactly one signal input (elementwise ops
        with constants, reshapes, transposes): where a gate or attention map comes from."""
        chain = [node]
        for _ in range(steps):
            inputs = self._signal_inputs(chain[-1])
            if len(inputs) != 1:
                break
            chain.append(inputs[0])
        return chain

    def _kind_of(self, node: fx.Node) -> str | None:
        """The non-linearity kind of one node, before gate analysis (None: linear/routing)."""
        if node.op != "call_module":
            return None
        module = self.graph.get_submodule(str(node.target))
        kind = _activation_kind(module)
        if kind is not None:
            return kind[0]
        name = type(module).__name__
        if name == "OnnxErf":
            return "erf"
        if name == "OnnxFunction" and getattr(module, "function", None) is torch.tanh:
            return "tanh"
        if isinstance(module, nn.Softmax) or "Softmax" in name:
            return "softmax"
        if _is_layer_norm(module):
            return "layernorm"
        if isinstance(module, nn.GroupNorm):
            return "groupnorm"
        if isinstance(module, nn.modules.instancenorm._InstanceNorm) or "InstanceNorm" in name:
            return "instancenorm"
        if isinstance(module, nn.LocalResponseNorm) or name == "OnnxLRN":
            return "lrn"
        if _product_kind(module) is not None and len(self._signal_inputs(node)) == 2:
            return _product_kind(module)
        return None

    @cached_property
    def _nonlinear(self) -> dict[str, str]:
        """node name -> kind for every non-linear operation on the signal, gates resolved.

        A product ``x · g`` whose factor ``g`` comes (through elementwise ops) from a sigmoid,
        hard-sigmoid, erf or tanh is a *self-gated activation* when ``g``'s chain starts at
        ``x`` — SiLU (x·σ(x)), Hardswish (x·hardsigmoid(x)), GELU (x·½(1+erf(x/√2)), or its tanh
        form) as exporters decompose them — and a *gate* (squeeze-and-excitation) otherwise. A
        product with a softmax factor is attention; a division by a signal is a normalisation
        (a decomposed LayerNorm); other products of two signals are ``product``."""
        kinds: dict[str, str] = {}
        flowing = self._flowing()
        for node in flowing:
            kind = self._kind_of(node)
            if kind is not None:
                kinds[node.name] = kind
        self_gated = {"sigmoid": "silu", "hardsigmoid": "hardswish", "erf": "gelu", "tanh": "gelu"}
        for node in flowing:
            kind = kinds.get(node.name)
            if kind not in ("mul", "div", "matmul"):
                continue
            a, b = self._signal_inputs(node)[:2]
            if kind == "div":
                kinds[node.name] = "divide"
                continue
            resolved = "product"
            if kind == "matmul" and self._feeds_softmax(node):
                kinds[node.name] = "attention"  # Q·Kᵀ: the logits of an attention softmax
                continue
            for factor, other in ((a, b), (b, a)):
                chain = self._chain_up(factor)
                source = next(
                    (n for n in chain if kinds.get(n.name) in (*self_gated, "softmax")), None
                )
                if source is None:
                    continue
                if kinds[source.name] == "softmax":
                    resolved = "attention"
                    break
                if self._gates_itself(source, other):
                    resolved = self_gated[kinds[source.name]]
                    kinds[source.name] = "consumed"
                else:
                    resolved = "gate"
                    kinds[source.name] = "consumed"
                break
            kinds[node.name] = resolved
        return {k: v for k, v in kinds.items() if v not in ("consumed", "attention")}

    def _feeds_softmax(self, node: fx.Node, steps: int = 8) -> bool:
        """The node reaches a softmax through single-user elementwise steps (scale, mask)."""
        for _ in range(steps):
            users = list(node.users)
            if len(users) != 1:
                return False
            node = users[0]
            if self._kind_of(node) == "softmax":
                return True
            if node not in self._flowing_set or len(self._signal_inputs(node)) != 1:
                return False
        return False

    def _gates_itself(self, gate: fx.Node, other: fx.Node) -> bool:
        """The gate function reads ``other`` directly or through one elementwise op with a
        constant (GELU's x/√2): a self-gated activation, not a gate from another branch."""
        inputs = self._signal_inputs(gate)
        if len(inputs) != 1:
            return False
        if inputs[0] is other:
            return True
        step = inputs[0]
        if (
            step.op != "call_module"
            or type(self.graph.get_submodule(str(step.target))).__name__
            != "OnnxBinaryMathOperation"
        ):
            return False
        return self._signal_inputs(step) == [other]

    def nonlinearities(self) -> dict[str, list[str]]:
        """Every non-linear operation on the signal by kind (node names in graph order).

        Kinds: the rectifiers (relu, relu6, clip, hardtanh, leaky_relu, prelu), the smooth
        activations (gelu, silu, hardswish, elu, selu, celu, softplus, mish, sigmoid,
        hardsigmoid, tanh — self-gated ones found also when exported as ``x·σ(x)`` etc.),
        ``gate`` (a sigmoid-type factor computed from another branch, e.g. squeeze-excitation),
        ``layernorm``, ``groupnorm``, ``instancenorm``, ``lrn``, ``softmax`` (attention
        probabilities or another softmax), ``divide`` (division by a signal: a decomposed
        normalisation) and ``product`` (a product of two signals that is none of the above)."""
        out: dict[str, list[str]] = {}
        for name, kind in self._nonlinear.items():
            out.setdefault(kind, []).append(name)
        return out

    def attention_products(self) -> list[str]:
        """Products of two signals that belong to attention: Q·Kᵀ (feeds a softmax) and A·V
        (one factor is a softmax output), in graph order."""
        out = []
        for node in self._flowing():
            if self._kind_of(node) not in ("matmul", "mul"):
                continue
            if self._feeds_softmax(node) or any(
                self._kind_of(n) == "softmax"
                for f in self._signal_inputs(node)
                for n in self._chain_up(f)
            ):
                out.append(node.name)
        return out

    def product_gate(self, name: str) -> int | None:
        """For a product node (Mul/MatMul of two signals): the index (0 or 1) of the operand
        that is a gate or attention map (softmax, sigmoid-type, erf, tanh chain), else None.
        For a division by a signal: 1 (the divisor). Used by rules that hold such factors
        constant (the LRP rules of Ali et al. 2022)."""
        node = self.node(name)
        inputs = self._signal_inputs(node)
        if len(inputs) != 2:
            return None
        kind = self._kind_of(node)
        if kind == "div":
            return 1 if node.args and len(node.args) > 1 and node.args[1] is inputs[1] else None
        gates = {"sigmoid", "hardsigmoid", "erf", "tanh", "softmax"}
        for _index, factor in enumerate(inputs):
            if any(self._kind_of(n) in gates for n in self._chain_up(factor)):
                position = next(i for i, a in enumerate(node.args) if a is factor)
                return position
        return None

    # ---------------------------------------------------------------- attention
    @cached_property
    def _attention(self) -> list[Attention]:
        found = []
        layers = None
        order = {n: i for i, n in enumerate(self.graph.graph.nodes)}
        for node in self._flowing():
            if self._kind_of(node) != "softmax":
                continue
            shape = self.shape(node.name)
            if len(shape) < 3 or shape[-1] != shape[-2]:
                continue
            up = self._chain_up(self._signal_inputs(node)[0]) if self._signal_inputs(node) else []
            if not any(self._kind_of(n) == "matmul" for n in up):
                continue
            users, down = list(node.users), None
            for _ in range(8):
                if len(users) != 1:
                    break
                user = users[0]
                if self._kind_of(user) == "matmul":
                    down = user
                    break
                users = list(user.users)
            if down is None:
                continue
            tokens = shape[-1]
            lead = 1
            for d in shape[:-2]:
                lead *= d
            if layers is None:
                layers = [f for f in self._feature_layers_cuts() if f.layout is not None]
            before = [f for f in layers if order[self.node(f.name)] < order[node]]
            stream = before[-1].layout if before else None
            stream_name = before[-1].name if before else None
            layout: Layout | None
            if stream is not None and stream.kind == TOKENS:
                windowed = tokens != stream.prefix + stream.grid[0] * stream.grid[1]
                layout = stream
            elif stream is not None:
                windowed = tokens != stream.grid[0] * stream.grid[1]
                layout = Layout(TOKENS, stream.channels, stream.grid, 0)
            else:
                layout = self._token_layout(tokens, 0)
                windowed = layout is None
            found.append(
                Attention(
                    node.name,
                    tokens,
                    lead,
                    None if windowed else layout,
                    windowed,
                    stream_name,
                    stream,
                )
            )
        return found

    def _feature_layers_cuts(self) -> list[FeatureLayer]:
        return [
            FeatureLayer(n.name, tuple(self.shape(n.name)[1:]), self._layouts[n.name])
            for n in self._cuts
            if n.name in self._layouts
        ]

    def attention(self) -> list[Attention]:
        """The attention-probability tensors: each Softmax over the key axis that lies between
        a product of two signals (Q·Kᵀ, possibly scaled/masked) and a product with another
        signal (·V), in graph order, with its token count and token layout (None for windowed
        attention, whose keys are not all tokens of the stream)."""
        return list(self._attention)

    def requirement_problem(self, requirement: str) -> str | None:
        """Why this model does not meet a method requirement (see :data:`REQUIREMENTS`), as the
        end of a sentence "METHOD needs …; this model …", or None when it does."""
        kinds = self.nonlinearities()
        if requirement == "rectifiers":
            bad = {k: v for k, v in kinds.items() if k not in RECTIFIERS and k != "gate"}
            if not bad:
                return None
            return "needs rectifier activations; this model uses " + _census(bad)
        if requirement == "lrp-rules":
            bad = {k: v for k, v in kinds.items() if k in _NO_LRP_RULE}
            if not bad:
                return None
            return "has no LRP rule for " + _census(bad)
        if requirement == "attention":
            found = self.attention()
            if not found:
                return "needs attention layers; this model has none (no Softmax between a Q·Kᵀ and a ·V product)"
            lost = [a for a in found if a.windowed and a.stream_layout is None]
            if lost:
                return (
                    f"needs attention it can place on the image grid; attention {lost[0].node!r} "
                    f"({lost[0].tokens} tokens) follows no spatial feature layer"
                )
            return None
        raise ValueError(f"unknown requirement {requirement!r}")

    def bottleneck_layer(self, fraction: float = 1 / 8) -> FeatureLayer | None:
        """IBA/InputIBA's default layer: the last feature layer on the coarsest grid that is still
        at least ``fraction`` of the input's height and width (the default feature layer when no
        grid is).

        The InputIBA paper puts the bottleneck at conv4_1 of VGG16 and the IBA authors at
        ResNet-50's layer2: both 28×28 at 224×224, i.e. 1/8 of the input. The last layer at that
        resolution keeps the paper's grid (finer prior than the last spatial layer, 1/32) and as
        much depth as the grid allows (on VGG16 it is conv4_3's ReLU, the grid of conv4_1)."""
        height, width = self.spec.height, self.spec.width
        grids = [
            (f, f.spatial_shape[1:]) for f in self._feature_layers
        ]  # token layouts: their grid
        fine = [
            (f, g)
            for f, g in grids
            if len(g) == 2
            and height
            and width
            and g[0] >= height * fraction
            and g[1] >= width * fraction
        ]
        if not fine:
            return self.default_feature_layer()
        area = min(g[0] * g[1] for _, g in fine)  # e.g. 28×28, not a padded 29×29 before a stride
        return [f for f, g in fine if g[0] * g[1] == area][-1]

    # ---------------------------------------------------------------- graph surgery
    @contextlib.contextmanager
    def swap_modules(self, replacements: dict[str, nn.Module]) -> Iterator[None]:
        """Temporarily replace the modules of the named nodes (forward must stay the same)."""
        saved: dict[str, nn.Module] = {}
        nodes = {n.name: n for n in self.graph.graph.nodes} if len(replacements) > 1 else {}
        device = self.device
        try:
            for name, new in replacements.items():
                target = str((nodes[name] if name in nodes else self.node(name)).target)
                if target in self._tapped:
                    raise RuntimeError(
                        f"node {name!r} is tapped: enter Model.tap inside swap_modules/apply_rules, "
                        "so the tap's hook sits on the module that runs"
                    )
                saved[target] = self.graph.get_submodule(target)
                _set_submodule(self.graph, target, new.to(device))
            yield
        finally:
            for target, old in saved.items():
                _set_submodule(self.graph, target, old)

    @contextlib.contextmanager
    def insert_after(self, modules: dict[str, nn.Module]) -> Iterator[None]:
        """Temporarily route each named node's output through a module (e.g. a bottleneck)."""
        graph = self.graph.graph
        inserted: list[tuple[fx.Node, fx.Node, str]] = []
        try:
            for name, module in modules.items():
                site = self.node(name)
                target = f"xplain_inserted_{next(self._insert_ids)}"
                self.graph.add_submodule(target, module.to(self.device))
                with graph.inserting_after(site):
                    new = graph.call_module(target, (site,))
                site.replace_all_uses_with(new, delete_user_cb=partial(operator.is_not, new))
                inserted.append((site, new, target))
            self.graph.recompile()
            yield
        finally:
            for site, new, target in reversed(inserted):
                new.replace_all_uses_with(site)
                graph.erase_node(new)
                delattr(self.graph, target)
            if inserted:
                self.graph.recompile()

    def batchnorm_affine(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The BatchNorm at node ``name`` as its eval-mode affine map ``x * scale + shift``
        (per-channel tensors), or None when the node is not a BatchNorm. The one place BN is
        canonicalised: the bias inventory folds with it, methods that split a folded bias use it."""
        node = self.node(name)
        if node.op != "call_module":
            return None
        module = self.graph.get_submodule(str(node.target))
        return _bn_affine(module) if isinstance(module, BATCHNORM) else None

    def split_at(self, layer: str) -> GraphSplit:
        """The graph cut after node ``layer`` into a prefix (input → that layer's output) and a
        suffix (→ logits): two new fx graphs sharing this model's modules, so a method that
        optimises at a layer (IBA) runs only the suffix per step. The model's own graph is not
        changed. See :class:`GraphSplit`."""
        return GraphSplit(self, layer)

    @contextlib.contextmanager
    def tap(self, names: list[str], gradients: bool = True, leaf: bool = False) -> Iterator[Tap]:
        """Record the outputs (and, after backward, the gradients) at the named nodes.

        A node computed by a module is tapped by a forward hook on that module (no change to the
        graph's code, so entering and leaving costs nothing next to a forward pass); any other
        node by a pass-through module inserted after it. Hooks are removed on exit.

        ``leaf``: each tapped output is replaced by a detached copy that requires grad (same
        values), so the autograd graph starts there: with an input that does not require grad,
        the part of the network below the taps runs as cheaply as inference (nothing saved for a
        backward) and gradients can be taken with respect to the taps only (Grad-CAM)."""
        tap = Tap(gradients, leaf)
        handles: list[Any] = []
        targets: list[str] = []
        others: dict[str, nn.Module] = {}
        try:
            for name in names:
                node = self.node(name)
                target = str(node.target)
                if node.op == "call_module" and target not in self._tapped:
                    module = self.graph.get_submodule(target)
                    handles.append(
                        module.register_forward_hook(
                            lambda _m, _args, out, name=name: (
                                tap.record(name, out) if isinstance(out, torch.Tensor) else None
                            )
                        )
                    )  # record() returns the output to use: None keeps it
                    self._tapped.add(target)
                    targets.append(target)
                else:
                    others[name] = _TapModule(tap, name)
            with self.insert_after(others) if others else contextlib.nullcontext():
                yield tap
        finally:
            for handle in handles:
                handle.remove()
            self._tapped.difference_update(targets)


class GraphSplit:
    """A model cut after fx node ``layer``: ``prefix(x) -> [R, *rest]`` and
    ``suffix(R, rest) -> logits`` (made by :meth:`Model.split_at`).

    ``rest`` are the other prefix values the suffix reads (usually none; e.g. a dynamic
    Reshape's shape). Both halves are fresh ``GraphModule``s that share the model's submodules;
    on a graph fixed at batch 1 they run row by row."""

    def __init__(self, model: Model, layer: str):
        self.model = model
        graph = model.graph.graph
        target = model.node(layer)
        nodes = list(graph.nodes)
        cut = nodes.index(target)
        before, after = nodes[: cut + 1], nodes[cut + 1 :]
        later = set(after)
        boundary = [target] + [
            n
            for n in before
            if n is not target and n.op != "get_attr" and any(u in later for u in n.users)
        ]
        self.layer = target.name
        self.fixed_batch = model.spec.fixed_batch
        #: the layer's layout (tokens, channels-last or B×C×H×W; None when not spatial): the
        #: bottleneck acts on the tensor as it is, smoothing and the map use its spatial view
        self.feature = model.feature_layer(self.layer)

        pre = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in before:
            env[node] = pre.node_copy(node, lambda n: env[n])
        pre.output(tuple(env[n] for n in boundary))
        self._prefix = self._module(pre)

        post = fx.Graph()
        env = {n: post.placeholder(f"cut_{i}") for i, n in enumerate(boundary)}
        for node in after:
            for arg in node.all_input_nodes:  # constants the suffix reads are copied over
                if arg not in env and arg.op == "get_attr":
                    env[arg] = post.node_copy(arg, lambda n: env[n])
            env[node] = post.node_copy(node, lambda n: env[n])
        self._suffix = self._module(post)
        self.extra = len(boundary) - 1

    def _module(self, graph: fx.Graph) -> fx.GraphModule:
        module = fx.GraphModule(self.model.graph, graph)
        module.graph.eliminate_dead_code()
        module.recompile()
        return module

    def prefix(self, x: torch.Tensor) -> list[Any]:
        """``[R, *rest]`` for a batch (row by row on a graph fixed at batch 1)."""
        if not self.fixed_batch or x.shape[0] == 1:
            return list(self._prefix(x))
        rows = [self._prefix(xi) for xi in x.split(1)]
        return [
            torch.cat([r[i] for r in rows]) if isinstance(rows[0][i], torch.Tensor) else rows[0][i]
            for i in range(len(rows[0]))
        ]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output R for a batch."""
        return self.prefix(x)[0]

    def suffix(self, z: torch.Tensor, rest: Sequence[Any] = ()) -> torch.Tensor:
        """Logits from the layer's (possibly modified) output ``z``."""
        if not self.fixed_batch or z.shape[0] == 1:
            return self._suffix(z, *rest)
        n = z.shape[0]

        def row(i: int) -> list[Any]:
            return [
                v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
                for v in rest
            ]

        return torch.cat([self._suffix(z[i : i + 1], *row(i)) for i in range(n)])


class Tap:
    """What :meth:`Model.tap` collected: ``activations[name]`` and ``gradients[name]``.

    A graph fixed at batch 1 runs once per sample, so a tap sees one slice per call; the
    dicts concatenate the slices in call order, so they always cover the whole batch. A
    concatenation is not a node of the autograd graph: to differentiate *with respect to* a
    tapped activation, run a fixed-batch graph one sample at a time."""

    def __init__(self, gradients: bool, leaf: bool = False):
        self.want_gradients = gradients
        self.leaf = leaf
        self._activations: dict[str, list[torch.Tensor]] = {}
        self._gradients: dict[str, dict[int, torch.Tensor]] = {}

    def record(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """Keep ``x``; returns its leaf replacement with ``leaf`` (else None: x stays)."""
        replaced = None
        if self.leaf and x.is_floating_point() and torch.is_grad_enabled():
            x = replaced = x.detach().requires_grad_(True)
        calls = self._activations.setdefault(name, [])
        index = len(calls)
        calls.append(x)
        if self.want_gradients and x.requires_grad:
            x.register_hook(lambda g: self._gradients.setdefault(name, {}).__setitem__(index, g))
        return replaced

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        return {
            name: calls[0] if len(calls) == 1 else torch.cat(calls)
            for name, calls in self._activations.items()
        }

    @property
    def gradients(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, by_call in self._gradients.items():
            parts = [by_call[i] for i in sorted(by_call)]
            out[name] = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out


class _TapModule(nn.Module):
    def __init__(self, tap: Tap, name: str):
        super().__init__()
        self._tap, self._name = tap, name

    def forward(self, x):
        if isinstance(x, torch.Tensor):
            replaced = self._tap.record(self._name, x)
            return x if replaced is None else replaced
        return x


def _per_channel(bias: torch.Tensor, kind: str, shape: tuple) -> torch.Tensor:
    """Reshape a per-channel bias so it broadcasts against the layer output (1×C×1×1…)."""
    if kind == "linear" or len(shape) <= 2:
        return bias
    return bias.reshape(1, -1, *([1] * (len(shape) - 2)))


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
