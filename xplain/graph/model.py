"""The converted classifier every method works on: a facade over the graph's analyses.

A :class:`Model` wraps the ``torch.fx.GraphModule`` that onnx2torch produced (eval mode, frozen
parameters, on one device) with its input spec. Graph knowledge is computed once, on first use,
by focused modules (:mod:`.knowledge` lists them: signal flow, layouts, feature and bias layers,
non-linearities, attention, requirements); graph changes go through :mod:`.surgery`, whose
context managers always restore the graph, also after an exception (invariant 3). The public
members here are the plugin contract (``docs/plugin-contract.md``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from ..onnx.report import InputSpec as InputSpec
from ..onnx.report import LoadReport
from .attention import Attention
from .kinds import BATCHNORM
from .kinds import batchnorm_affine as _bn_affine
from .knowledge import GraphKnowledge
from .layers import BiasLayer, FeatureLayer, find_bias_layers
from .layouts import Layout
from .names import NodeNames
from .nonlinear import RECTIFIERS as RECTIFIERS
from .nonlinear import Activation
from .requirements import REQUIREMENTS as REQUIREMENTS
from .requirements import requirement_problem
from .split import GraphSplit
from .surgery import Surgery, Tap


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
        #: where fitted state is looked up (None: the default state dir)
        self.state_dir: str | Path | None = None
        self._state_hidden = False  #: inside :meth:`without_fitted_state`
        #: method -> (tensors, meta) read once by a driver and shipped (Ray workers): used instead of the disk
        self.preloaded_state: dict | None = None
        self._surgery = Surgery(self)
        #: the forward engine of :meth:`infer` (:class:`xplain.onnx.engine.ForwardEngine`; None: torch)
        self.engine: Any = None

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
        instead of ``model(x)`` so that the run's execution engine (eager torch, or onnxruntime
        where it runs the file) can serve them without any plugin knowing which one ran. onnxruntime
        serves only an unmodified graph (:attr:`graph_modified`); see :mod:`xplain.onnx.engine`."""
        from ..onnx.engine import forward

        return forward(self, x)

    @property
    def graph_modified(self) -> bool:
        """True while a swap_modules / insert_after / tap context is live: only the torch graph
        then computes what the method asked for."""
        return self._surgery.modified

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

    # ---------------------------------------------------------------- fitted state
    def fitted_state(self, method: str) -> tuple[dict, dict]:
        """The state ``xplain fit METHOD`` saved for this model: ``(tensors, meta)``.

        Raises an error that tells the user the fit command when there is none."""
        from .fitted import lookup_state

        return lookup_state(self, method)

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

    # ---------------------------------------------------------------- names and shapes
    def node(self, name: str) -> fx.Node:
        """The fx node called ``name`` — its safe id, or the original ONNX node name behind it.

        Node names are replaced by safe ids before conversion (they reach generated code); users
        know the exporter's names (``/blocks/blocks.3/Add``), so both are accepted."""
        return self._names.node(name)

    def onnx_name(self, name: str) -> str | None:
        """The original ONNX node name behind fx node ``name`` (None if it has none, e.g. an
        indexing node onnx2torch added). Raw text from the file: escape it for display
        (:func:`~xplain.untrusted.display_name`)."""
        return self._names.onnx_name(name)

    @cached_property
    def _names(self) -> NodeNames:
        return NodeNames(self.graph, self.report.original_names)

    def module(self, name: str) -> nn.Module:
        node = self.node(name)
        if node.op != "call_module":
            raise KeyError(f"{name} is not a module")
        return self.graph.get_submodule(str(node.target))

    def shape(self, name: str) -> tuple[int, ...]:
        return self._known.signal.shape(name)

    def signal_inputs(self, node: fx.Node | str) -> list[fx.Node]:
        """The inputs of ``node`` (an fx node or its name) whose *values* depend on the model
        input's values. Constants are not signal, and neither is a tensor's shape nor what is
        computed from it: the classic exporter writes ``x.view(b, -1)`` as Shape → Gather →
        Unsqueeze → Concat → Reshape, a Reshape with one signal input, not two."""
        return self._known.signal.signal_inputs(self.node(node) if isinstance(node, str) else node)

    # ---------------------------------------------------------------- graph knowledge
    @cached_property
    def _known(self) -> GraphKnowledge:
        """The analyses of the graph, each computed once (see :mod:`.knowledge`)."""
        spec = self.spec
        return GraphKnowledge(self.graph, spec.height, spec.width, self.example_input)

    @property
    def _shapes(self) -> dict[str, tuple]:
        """Output ``(shape, dtype)`` of every tensor-valued node at batch 1."""
        return self._known.signal.shapes

    def activations(self) -> list[Activation]:
        """Every activation module and its kind, in graph order."""
        return list(self._known.nonlinear.activations)

    def bias_layers(self) -> list[BiasLayer]:
        """Every bias source (conv/linear with BatchNorm folded in, lone BN, Gemm C, constant adds).

        Found afresh on each call (a walk over the graph, cheap next to a backward pass), so the
        effective biases follow weights edited in place, e.g. by a randomisation test."""
        return find_bias_layers(self._known.signal)

    def layout(self, name: str) -> Layout | None:
        """The layout of node ``name``'s output (None: not a spatial feature tensor)."""
        self.node(name)  # UsageError for an unknown name
        return self._known.layouts.by_node.get(name)

    def feature_layers(self) -> list[FeatureLayer]:
        """Feature maps methods can read spatially, input to output, each with its layout:
        the cut vertices with a spatial layout (B×C×H×W, B×H×W×C, tokens) and, for class-token
        models, the default layer inside the last block."""
        return list(self._known.features.all)

    def default_feature_layer(self) -> FeatureLayer | None:
        """The Grad-CAM/IBA default: the last spatial cut vertex before the spatial collapse.

        Among equal-shaped consecutive cuts the last one (after the rectifier) wins. Class-token
        models (ViT, DeiT): the tokens entering the last block's attention, after its first
        LayerNorm (as pytorch-grad-cam's ``blocks[-1].norm1``)."""
        return self._known.features.default

    def feature_layer(self, name: str = "") -> FeatureLayer | None:
        """The named node as a :class:`FeatureLayer` (any node with a spatial layout, cut vertex
        or not), or the default for an empty name; None when it has no spatial layout."""
        if not name:
            return self.default_feature_layer()
        return self._known.features.named(self.node(name))  # UsageError for an unknown name

    def bottleneck_layer(self, fraction: float = 1 / 8) -> FeatureLayer | None:
        """IBA/InputIBA's default layer: the last feature layer on the coarsest grid that is still
        at least ``fraction`` of the input's height and width (the default feature layer when no
        grid is).

        The InputIBA paper puts the bottleneck at conv4_1 of VGG16 and the IBA authors at
        ResNet-50's layer2: both 28×28 at 224×224, i.e. 1/8 of the input. The last layer at that
        resolution keeps the paper's grid (finer prior than the last spatial layer, 1/32) and as
        much depth as the grid allows (on VGG16 it is conv4_3's ReLU, the grid of conv4_1)."""
        return self._known.features.bottleneck(fraction)

    def nonlinearities(self) -> dict[str, list[str]]:
        """Every non-linear operation on the signal by kind (node names in graph order).

        Kinds: the rectifiers (relu, relu6, clip, hardtanh, leaky_relu, prelu), the smooth
        activations (gelu, silu, hardswish, elu, selu, celu, softplus, mish, sigmoid,
        hardsigmoid, tanh — self-gated ones found also when exported as ``x·σ(x)`` etc.),
        ``gate`` (a sigmoid-type factor computed from another branch, e.g. squeeze-excitation),
        ``layernorm``, ``groupnorm``, ``instancenorm``, ``lrn``, ``softmax`` (attention
        probabilities or another softmax), ``divide`` (division by a signal: a decomposed
        normalisation) and ``product`` (a product of two signals that is none of the above)."""
        return self._known.nonlinear.by_kind()

    def attention_products(self) -> list[str]:
        """Products of two signals that belong to attention: Q·Kᵀ (feeds a softmax) and A·V
        (one factor is a softmax output), in graph order."""
        return self._known.nonlinear.attention_products()

    def product_gate(self, name: str) -> int | None:
        """For a product node (Mul/MatMul of two signals): the index (0 or 1) of the operand
        that is a gate or attention map (softmax, sigmoid-type, erf, tanh chain), else None.
        For a division by a signal: 1 (the divisor). Used by rules that hold such factors
        constant (the LRP rules of Ali et al. 2022)."""
        return self._known.nonlinear.product_gate(self.node(name))

    def attention(self) -> list[Attention]:
        """The attention-probability tensors: each Softmax over the key axis that lies between
        a product of two signals (Q·Kᵀ, possibly scaled/masked) and a product with another
        signal (·V), in graph order, with its token count and token layout (None for windowed
        attention, whose keys are not all tokens of the stream)."""
        return list(self._known.attention)

    def requirement_problem(self, requirement: str) -> str | None:
        """Why this model does not meet a method requirement (see :data:`REQUIREMENTS`), as the
        end of a sentence "METHOD needs …; this model …", or None when it does."""
        return requirement_problem(requirement, self.nonlinearities(), self._known.attention)

    def batchnorm_affine(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The BatchNorm at node ``name`` as its eval-mode affine map ``x * scale + shift``
        (per-channel tensors), or None when the node is not a BatchNorm. The one place BN is
        canonicalised: the bias inventory folds with it, methods that split a folded bias use it."""
        node = self.node(name)
        if node.op != "call_module":
            return None
        module = self.graph.get_submodule(str(node.target))
        return _bn_affine(module) if isinstance(module, BATCHNORM) else None

    # ---------------------------------------------------------------- graph surgery
    def swap_modules(self, replacements: dict[str, nn.Module]) -> contextlib.AbstractContextManager:
        """Temporarily replace the modules of the named nodes (forward must stay the same)."""
        return self._surgery.swap_modules(replacements)

    def insert_after(self, modules: dict[str, nn.Module]) -> contextlib.AbstractContextManager:
        """Temporarily route each named node's output through a module (e.g. a bottleneck)."""
        return self._surgery.insert_after(modules)

    def tap(
        self, names: list[str], gradients: bool = True, leaf: bool = False
    ) -> contextlib.AbstractContextManager[Tap]:
        """Record the outputs (and, after backward, the gradients) at the named nodes.

        A node computed by a module is tapped by a forward hook on that module (no change to the
        graph's code, so entering and leaving costs nothing next to a forward pass); any other
        node by a pass-through module inserted after it. Hooks are removed on exit.

        ``leaf``: each tapped output is replaced by a detached copy that requires grad (same
        values), so the autograd graph starts there: with an input that does not require grad,
        the part of the network below the taps runs as cheaply as inference (nothing saved for a
        backward) and gradients can be taken with respect to the taps only (Grad-CAM)."""
        return self._surgery.tap(names, gradients, leaf)

    def split_at(self, layer: str) -> GraphSplit:
        """The graph cut after node ``layer`` into a prefix (input → that layer's output) and a
        suffix (→ logits): two new fx graphs sharing this model's modules, so a method that
        optimises at a layer (IBA) runs only the suffix per step. The model's own graph is not
        changed. See :class:`GraphSplit`."""
        return GraphSplit(self, layer)
