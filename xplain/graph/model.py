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
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import torch
from torch import fx, nn

from ..output.display import display_name

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


@dataclasses.dataclass(frozen=True)
class FeatureLayer:
    """A spatial feature map that all information flows through (a cut vertex)."""

    name: str
    shape: tuple[int, ...]  #: C×H×W


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
        (nn.Tanh, "tanh"),
    ):
        if isinstance(module, cls):
            return kind, None
    return None


class Model:
    """A converted, verified classifier: call it with ``x`` (B×C×H×W) to get logits (B×K)."""

    def __init__(self, graph: fx.GraphModule, spec: InputSpec, report: LoadReport,
                 labels: list[str] | None = None, sidecar: dict | None = None):
        self.graph = graph
        self.spec = spec
        self.report = report
        self.labels = labels
        self.sidecar = sidecar or {}
        self._insert_ids = itertools.count()
        self._tapped: set[str] = set()  #: module targets a live tap hooks (they must not be swapped)
        self.state_dir = None  #: where fitted state is looked up (None: the default state dir)

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

    def example_input(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        shape = (batch, self.spec.channels, self.spec.height, self.spec.width)
        return torch.randn(shape, generator=gen).to(self.device)

    def label(self, index: int) -> str | None:
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        return None

    def fitted_state(self, method: str) -> tuple[dict, dict]:
        """The state ``xplain fit METHOD`` saved for this model: ``(tensors, meta)``.

        Raises an error that tells the user the fit command when there is none."""
        from ..errors import InputDataError
        from ..run.state import load_state

        found = load_state(self.digest, method, root=self.state_dir, device=self.device)
        if found is None:
            raise InputDataError(f"no fitted state for method {method!r} and this model",
                                 path=self.report.path,
                                 hint=f"run `xplain fit {method} {self.report.path} DATA` first")
        return found

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
            raise UsageError(f"layer name {shown} names {len(matches)} ONNX nodes",
                             hint="use one of their ids: " + ", ".join(matches[:8]))
        raise UsageError(f"no layer named {shown}", hint="see `xplain inspect MODEL` for layer names")

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
        return self.graph.get_submodule(node.target)

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
            if node.op == "placeholder":
                reached.add(node)
            elif node.op in ("call_module", "call_function", "call_method") and any(
                a in reached for a in node.all_input_nodes
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
            weight = module[-1] if isinstance(module, nn.Sequential) and len(module) else module
            if isinstance(weight, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)):
                kind = "linear" if isinstance(weight, nn.Linear) else "conv"
                bias = weight.bias.detach() if weight.bias is not None else None
                out_node = node
                users = list(node.users)
                if len(users) == 1 and users[0].op == "call_module":
                    bn = self.graph.get_submodule(users[0].target)
                    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                        scale, shift = _bn_affine(bn)
                        base = bias if bias is not None else torch.zeros_like(shift)
                        bias = base * scale + shift
                        out_node = users[0]
                        consumed_bn.add(users[0].name)
                if bias is None:
                    continue
                found.append(BiasLayer(out_node.name, node.name, kind, _per_channel(bias, kind, self.shape(out_node.name)),
                                       weight, self.shape(out_node.name)))
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) and node.name not in consumed_bn:
                scale, shift = _bn_affine(module)
                found.append(BiasLayer(node.name, node.name, "batchnorm", _per_channel(shift, "conv", self.shape(node.name)),
                                       None, self.shape(node.name)))
            elif isinstance(module, OnnxGemm) and len(node.args) > 2:
                c = self._constant(node.args[2])
                if c is not None:
                    found.append(BiasLayer(node.name, node.name, "gemm", (c * module.beta).detach(), module,
                                           self.shape(node.name)))
            elif isinstance(module, OnnxBinaryMathOperation) and module.math_op_function in (torch.add, torch.sub):
                a, b = node.args[:2]
                ca, cb = self._constant(a), self._constant(b)
                if (ca is None) == (cb is None):
                    continue  # residual add (two signals) or constant arithmetic
                const = cb if cb is not None else ca
                if module.math_op_function is torch.sub and cb is not None:
                    const = -const
                found.append(BiasLayer(node.name, node.name, "add", const.detach(), None, self.shape(node.name)))
        return found

    def _constant(self, arg: Any) -> torch.Tensor | None:
        """The tensor behind a get_attr/OnnxConstant argument, or None for a live signal."""
        if not isinstance(arg, fx.Node):
            return None
        if arg.op == "get_attr":
            value = self.graph
            for part in arg.target.split("."):
                value = getattr(value, part)
            return value if isinstance(value, torch.Tensor) and value.is_floating_point() else None
        if arg.op == "call_module" and not arg.all_input_nodes:
            module = self.graph.get_submodule(arg.target)
            value = getattr(module, "value", None)
            return value if isinstance(value, torch.Tensor) and value.is_floating_point() else None
        return None

    def bias_layers(self) -> list[BiasLayer]:
        """Every bias source (conv/linear with BatchNorm folded in, lone BN, Gemm C, constant adds).

        Found afresh on each call (a walk over the graph, cheap next to a backward pass), so the
        effective biases follow weights edited in place, e.g. by a randomisation test."""
        return self._find_bias_layers()

    @cached_property
    def _feature_layers(self) -> list[FeatureLayer]:
        flowing = self._flowing()
        order = {n: i for i, n in enumerate(self.graph.graph.nodes)}
        last_use = {n: max((order[u] for u in n.users), default=order[n]) for n in flowing}
        live: set[fx.Node] = set()
        cuts = []
        for node in flowing:
            live.add(node)
            live = {m for m in live if last_use[m] > order[node] or m is node}
            shape = self.shape(node.name)
            if live == {node} and node.op != "placeholder" and len(shape) == 4 and shape[2] * shape[3] > 1:
                cuts.append(FeatureLayer(node.name, tuple(shape[1:])))
        return cuts

    def feature_layers(self) -> list[FeatureLayer]:
        """Spatial feature maps all information flows through, input to output."""
        return list(self._feature_layers)

    def default_feature_layer(self) -> FeatureLayer | None:
        """The last spatial cut vertex before the spatial collapse (Grad-CAM/IBA default).

        Among equal-shaped consecutive cuts the last one (after the rectifier) wins."""
        layers = self._feature_layers
        return layers[-1] if layers else None

    # ---------------------------------------------------------------- graph surgery
    @contextlib.contextmanager
    def swap_modules(self, replacements: dict[str, nn.Module]) -> Iterator[None]:
        """Temporarily replace the modules of the named nodes (forward must stay the same)."""
        saved: dict[str, nn.Module] = {}
        try:
            for name, new in replacements.items():
                target = self.node(name).target
                if target in self._tapped:
                    raise RuntimeError(f"node {name!r} is tapped: enter Model.tap inside swap_modules/apply_rules, "
                                       "so the tap's hook sits on the module that runs")
                saved[target] = self.graph.get_submodule(target)
                _set_submodule(self.graph, target, new.to(self.device))
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
                site.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
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

    @contextlib.contextmanager
    def tap(self, names: list[str], gradients: bool = True) -> Iterator[Tap]:
        """Record the outputs (and, after backward, the gradients) at the named nodes.

        A node computed by a module is tapped by a forward hook on that module (no change to the
        graph's code, so entering and leaving costs nothing next to a forward pass); any other
        node by a pass-through module inserted after it. Hooks are removed on exit."""
        tap = Tap(gradients)
        handles, targets, others = [], [], {}
        try:
            for name in names:
                node = self.node(name)
                if node.op == "call_module" and node.target not in self._tapped:
                    module = self.graph.get_submodule(node.target)
                    handles.append(module.register_forward_hook(
                        lambda _m, _args, out, name=name: tap.record(name, out) if isinstance(out, torch.Tensor)
                        else None))
                    self._tapped.add(node.target)
                    targets.append(node.target)
                else:
                    others[name] = _TapModule(tap, name)
            with self.insert_after(others) if others else contextlib.nullcontext():
                yield tap
        finally:
            for handle in handles:
                handle.remove()
            self._tapped.difference_update(targets)


class Tap:
    """What :meth:`Model.tap` collected: ``activations[name]`` and ``gradients[name]``.

    A graph fixed at batch 1 runs once per sample, so a tap sees one slice per call; the
    dicts concatenate the slices in call order, so they always cover the whole batch. A
    concatenation is not a node of the autograd graph: to differentiate *with respect to* a
    tapped activation, run a fixed-batch graph one sample at a time."""

    def __init__(self, gradients: bool):
        self.want_gradients = gradients
        self._activations: dict[str, list[torch.Tensor]] = {}
        self._gradients: dict[str, dict[int, torch.Tensor]] = {}

    def record(self, name: str, x: torch.Tensor) -> None:
        calls = self._activations.setdefault(name, [])
        index = len(calls)
        calls.append(x)
        if self.want_gradients and x.requires_grad:
            x.register_hook(lambda g: self._gradients.setdefault(name, {}).__setitem__(index, g))

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        return {name: calls[0] if len(calls) == 1 else torch.cat(calls) for name, calls in self._activations.items()}

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
            self._tap.record(self._name, x)
        return x


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode is ``x * scale + shift``."""
    var, mean = bn.running_var.detach(), bn.running_mean.detach()
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _per_channel(bias: torch.Tensor, kind: str, shape: tuple) -> torch.Tensor:
    """Reshape a per-channel bias so it broadcasts against the layer output (1×C×1×1…)."""
    if kind == "linear" or len(shape) <= 2:
        return bias
    return bias.reshape(1, -1, *([1] * (len(shape) - 2)))


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
