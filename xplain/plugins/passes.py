"""How many images one forward (and backward) pass of a many-pass method may hold.

Integrated gradients, smoothgrad and occlusion run tens to hundreds of copies of each image
through the model. Sending them all at once is slower, not faster: on a 224×224 network a pass
of 64 images makes activations of tens of MB each, which the C allocator maps fresh from the
kernel and returns on free, so every pass pays for the kernel zeroing new pages (profiled on
EfficientNet-Lite0, integrated gradients with 64 images per pass: system time 12.1 s against
9.4 s of user time; 4 per pass: 1.2 s, the same user time, a third of the resident memory).
Passes sized to a memory budget keep the activations small enough to be reused from the
allocator's free lists, bound peak memory, and cost nothing in arithmetic, since a 224×224 image
alone already fills the convolution kernels.

The rule (the same on CPU and CUDA): one image's forward activations, the float output of every
node of the graph at batch 1 (known from shape propagation), is the cost of an image; a pass holds
``budget // cost`` images, at least one. The budget is the method's ``memory_budget_mb`` or, when
that is 0, :func:`default_budget_mb`: a quarter of the device's free memory, at most
:data:`DEFAULT_BUDGET_MB` on the CPU (:data:`DEFAULT_BUDGET_MB_CUDA` on a GPU), and on the CPU
also no more images than keep the largest single activation of a pass within
:data:`DEFAULT_TENSOR_MB`. The two CPU ceilings are about glibc's allocator (below); CUDA's
caching allocator reuses its blocks whatever their size, and a GPU needs many images per kernel
to be busy, so there only the free memory bounds a pass. An explicit ``internal_batch``
overrides all of it.

Forward-only work (occlusion, Score-CAM's masked forwards, LIME, KernelSHAP, RISE and the
perturbation metrics, all through ``Model.infer``) keeps no activation for a backward: once a
node's last consumer has run, its output is freed (fx's generated code drops it; onnxruntime's
planner reuses the buffer). Such a pass needs only the activations alive *at once*, a few of the
largest rather than all of them, so :func:`images_per_forward_pass` sizes it by
:func:`forward_peak_bytes` (the peak of that liveness walk at batch 1, plus the largest
activation as room for an operator's temporaries). At 224×224 that is 12 MB against 101 MB of
all activations on ResNet-50, so the 256 MB CPU budget holds 20 images instead of 2 and a GPU's
4096 MB 334 instead of 40. On the CPU the :data:`DEFAULT_TENSOR_MB` ceiling still applies (5
ResNet-50 images, 3 EfficientNet-Lite0 images): measured at one thread, Score-CAM's masked
forwards on Lite0 ran 0.71× pytorch-grad-cam's time at 3 images per pass and 0.89× at 6 (28 MB
tensors), and eager ResNet-50 forwards cost 100 ms/image at 4 per pass, 117 at 16, 139 at 32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .plugin_api import Param

if TYPE_CHECKING:  # this module imports no torch: plugins declare pass_params() at import time
    import torch

    from ..graph.model import Model

#: by default no single activation of a pass exceeds this: glibc returns freed blocks above its
#: mmap threshold (at most 32 MB) to the kernel, so larger tensors are zeroed afresh every pass.
#: Measured on shapes_cnn (64×64): 297 images per pass made integrated gradients 1.6× and
#: occlusion 1.8× slower than 64 per pass (the largest activation 74 MB against 16 MB)
DEFAULT_TENSOR_MB = 16.0
#: the default budget's ceiling: a pass of this many MB of activations (about 3 images of
#: EfficientNet-Lite0 or 2 of ResNet-50 at 224×224, ~300 of a 64×64 CNN) is as fast per image
#: as any larger one on a CPU (GPUs: :data:`DEFAULT_BUDGET_MB_CUDA`)
DEFAULT_BUDGET_MB = 256.0
#: the default budget's ceiling on a GPU (about 60 EfficientNet-Lite0 images at 224×224): enough
#: images per kernel to fill a device, while a quarter of free memory still bounds small GPUs
DEFAULT_BUDGET_MB_CUDA = 4096.0
_MB = 1024 * 1024


def free_memory_mb(device: torch.device) -> float | None:
    """Free memory of ``device`` in MB: CUDA's free device memory, or the host's available
    memory (``MemAvailable`` of /proc/meminfo) for the CPU; None where it cannot be read."""
    if device.type == "cuda":
        import torch

        try:
            free, _total = torch.cuda.mem_get_info(device)
            return free / _MB
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_budget_mb(device: torch.device) -> float:
    """A quarter of the free memory of ``device``, at least 1 MB, at most
    :data:`DEFAULT_BUDGET_MB` on the CPU and :data:`DEFAULT_BUDGET_MB_CUDA` on a GPU."""
    ceiling = DEFAULT_BUDGET_MB_CUDA if device.type == "cuda" else DEFAULT_BUDGET_MB
    free = free_memory_mb(device)
    if free is None:
        return DEFAULT_BUDGET_MB
    return max(1.0, min(ceiling, free / 4))


def _float_bytes(shape, dtype) -> int:
    import torch

    count = 1
    for d in shape:
        count *= int(d)
    return count * torch.empty((), dtype=dtype).element_size()


def _activation_bytes(model: Model) -> tuple[int, int]:
    """(sum, largest) of the bytes of every float node output at batch 1, computed once."""
    cached = getattr(model, "_xplain_activation_bytes", None)
    if cached is not None:
        return cached
    total = largest = 0
    for shape, dtype in model._shapes.values():
        if not dtype.is_floating_point:
            continue
        size = _float_bytes(shape, dtype)
        total, largest = total + size, max(largest, size)
    found = (max(1, total), max(1, largest))
    setattr(model, "_xplain_activation_bytes", found)  # noqa: B010 - a per-model cache, not a Model field
    return found


def image_cost_bytes(model: Model) -> int:
    """Bytes of one image's forward activations: every float node output at batch 1."""
    return _activation_bytes(model)[0]


def largest_activation_bytes(model: Model) -> int:
    """Bytes of one image's largest single activation (node output at batch 1)."""
    return _activation_bytes(model)[1]


def forward_peak_bytes(model: Model) -> int:
    """Bytes one image needs in a forward pass without autograd: the most float activations
    alive at once (an output lives from its node until its last consumer has run; the graph's
    outputs to the end) in graph order at batch 1, plus :func:`largest_activation_bytes` for
    the temporaries inside an operator. Only the nodes the input's signal flows through count
    (weights and constants do not grow with the batch). Computed once per model."""
    cached = getattr(model, "_xplain_forward_peak_bytes", None)
    if cached is not None:
        return cached
    signal = model._known.signal
    nodes = list(signal.graph.graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    size = {node: _float_bytes(*signal.shapes[node.name]) for node in signal.flowing()}
    freed_after: dict[int, int] = {}
    for node, nbytes in size.items():
        last = max((position[user] for user in node.users), default=position[node])
        if any(user.op == "output" for user in node.users):
            last = len(nodes)
        freed_after[last] = freed_after.get(last, 0) + nbytes
    live = peak = 0
    for i, node in enumerate(nodes):
        live += size.get(node, 0)  # the output is written while the inputs are still alive
        peak = max(peak, live)
        live -= freed_after.pop(i, 0)
    found = max(1, peak + largest_activation_bytes(model))
    setattr(model, "_xplain_forward_peak_bytes", found)  # noqa: B010 - a per-model cache
    return found


def images_per_pass(model: Model, internal_batch: int = 0, memory_budget_mb: float = 0.0) -> int:
    """Images per forward/backward pass: ``internal_batch`` when positive, else as many as fit
    in ``memory_budget_mb`` at :func:`image_cost_bytes` each; with neither, as many as fit in
    :func:`default_budget_mb` with no activation over :data:`DEFAULT_TENSOR_MB`. At least 1."""
    return _images(model, internal_batch, memory_budget_mb, image_cost_bytes)


def _images(model: Model, internal_batch: int, memory_budget_mb: float, cost) -> int:
    """The sizing rule of both helpers, with ``cost(model)`` the bytes of one image."""
    if internal_batch and internal_batch > 0:
        return int(internal_batch)
    if memory_budget_mb and memory_budget_mb > 0:
        return max(1, int(memory_budget_mb * _MB // cost(model)))
    fit = int(default_budget_mb(model.device) * _MB // cost(model))
    if model.device.type == "cuda":  # no glibc here: the caching allocator keeps its blocks
        return max(1, fit)
    return max(1, min(fit, int(DEFAULT_TENSOR_MB * _MB // largest_activation_bytes(model))))


def images_per_forward_pass(
    model: Model, internal_batch: int = 0, memory_budget_mb: float = 0.0
) -> int:
    """Images per forward-only pass (``Model.infer``, no backward follows): ``internal_batch``
    when positive, else as many as fit in ``memory_budget_mb`` at :func:`forward_peak_bytes`
    each; with neither, as many as fit in :func:`default_budget_mb` with, on the CPU, no
    activation over :data:`DEFAULT_TENSOR_MB` (as :func:`images_per_pass`). At least 1. Never
    changes a map or a score: only how the same images are split into passes."""
    return _images(model, internal_batch, memory_budget_mb, forward_peak_bytes)


def pass_params(what: str, forward_only: bool = False) -> list[Param]:
    """The parameters every many-pass method declares: ``internal_batch``, ``memory_budget_mb``.
    ``forward_only``: the method's passes are sized by :func:`images_per_forward_pass`."""
    kind = "forward" if forward_only else "forward/backward"
    sizing = (
        "the images whose live activations (a forward's peak) fit"
        if forward_only
        else "every activation of each image"
    )
    return [
        Param(
            "internal_batch",
            "int",
            0,
            f"{what} per {kind} pass; 0 = as many as fit in memory_budget_mb. Bounds "
            "memory and speed, never changes the map",
            min=0,
            max=4096,
        ),
        Param(
            "memory_budget_mb",
            "float",
            0.0,
            f"activation memory one pass may use when internal_batch is 0 ({sizing}); 0 = a "
            f"quarter of the free memory, at most {DEFAULT_BUDGET_MB:.0f} MB with no single "
            f"activation over {DEFAULT_TENSOR_MB:.0f} MB on the CPU, at most "
            f"{DEFAULT_BUDGET_MB_CUDA:.0f} MB on a GPU",
            min=0.0,
            max=1e7,
        ),
    ]
