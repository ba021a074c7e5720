"""What the loader found: the model's input and the facts about loading it.

The ONNX stage fills both before a model exists, so they live here, and
:class:`~xplain.graph.model.Model` (the next stage) holds them; ``xplain inspect`` and every
JSON record show them without graph knowledge.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the model eats: one float32 image batch B×C×H×W."""

    name: str  #: the ONNX input's original name (for display only)
    channels: int
    height: int
    width: int
    fixed_batch: bool  #: the graph is fixed at batch 1, so batches are run one sample at a time
    num_classes: int


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
