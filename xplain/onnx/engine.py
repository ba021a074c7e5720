"""Forward engines: who computes ``Model.infer(x)`` — eager torch or onnxruntime.

It lives in the ONNX stage: the loader (which must not import the later stages) builds the
engine state, and it knows models only by duck typing (``graph``, ``spec``, ``graph_modified``).

Forward-only work (occlusion, deletion/insertion, pixel-flipping, sensitivity-n, RISE, LIME, …)
asks ``model.infer(x)`` for logits and never says which library computes them. The model arrives as
ONNX, and onnxruntime runs many graphs several times faster than eager torch on the CPU
(EfficientNet-Lite0's depthwise convolutions above all; see ``docs/engines.md``), so a run picks an
engine once (``--engine auto|torch|onnxruntime``) and :func:`forward` dispatches each call:

* onnxruntime only when it computes what the torch graph would: the model came from the ONNX
  loader (which left the ORT-ready logits graph, :mod:`xplain.onnx.logits_graph`), the graph is
  unmodified (no live ``swap_modules`` / ``insert_after`` / ``tap``), no parameter was edited in
  place since the session was built, the input is float32, and the device has a provider (CPU;
  CUDA only with ``onnxruntime-gpu``, the ``gpu`` extra);
* eager torch otherwise — gradient methods never come here at all.

The first onnxruntime call of a session checks it against torch on a random batch (the same
tolerance as the loader's verification); a session that disagrees is dropped with one warning line
and the run goes on with torch. Counts of the forwards each engine served are kept
(:func:`forward_counts`), so eval records and ``run.json`` say which ran.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections import Counter
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import UsageError

#: what ``--engine`` accepts
ENGINES = ("auto", "torch", "onnxruntime")
#: a session whose first output differs from torch's by more than this (× max(1, max |torch|))
#: is not used; the loader verifies the conversion with the same bound
SELF_CHECK_TOL = 1e-4


class Engine(Protocol):
    """Something that turns a float32 batch into logits, without autograd."""

    name: str

    def run(self, model: Any, x: torch.Tensor) -> torch.Tensor: ...


class TorchEngine:
    """The converted fx graph, eagerly, under ``inference_mode``."""

    name = "torch"

    def run(self, model: Any, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # its own coloured log must not reach the terminal
    return ort


@functools.cache
def _providers() -> tuple[str, ...] | None:
    """onnxruntime's execution providers here (None: onnxruntime is not installed)."""
    try:
        return tuple(_ort().get_available_providers())
    except ImportError:
        return None


class OnnxRuntimeEngine:
    """One onnxruntime session over the loader's logits graph, for one device and thread count.

    Session options (the ones an onnxruntime user would expect, measured in ``docs/engines.md``):
    ``ORT_ENABLE_ALL`` graph optimisation; ``intra_op_num_threads`` = torch's thread count (so
    ``--threads``/``torch.set_num_threads`` governs both engines), one inter-op thread, sequential
    execution, deterministic kernels; intra-op threads do not spin between runs (xplain does torch work between passes,
    and the CPU is often shared); the CPU memory arena is on (CUDA's grows by what is requested,
    ``kSameAsRequested``, instead of doubling), and memory patterns are off: forward-only work
    feeds a few different batch shapes (the last chunk is smaller), for which a pattern per shape
    only costs memory. RSS stays flat over thousands of batches (measured, ``docs/engines.md``).
    On CUDA the inputs and outputs are bound to torch's tensors (IO binding: no host copies) and
    onnxruntime runs on torch's current stream."""

    name = "onnxruntime"

    def __init__(self, graph: bytes, device: torch.device, threads: int, arena: str = "on"):
        """``arena``: ``on`` (the default) or ``off`` (no CPU arena: every tensor from malloc) —
        the alternatives ``bench/engines.py --parts rss`` measures."""
        ort = _ort()
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_mem_pattern = False
        options.use_deterministic_compute = True  # seeded runs repeat byte for byte (CUDA too)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.device = device
        self.threads = threads
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            cuda = {
                "device_id": index,
                "arena_extend_strategy": "kSameAsRequested",
                "user_compute_stream": str(torch.cuda.current_stream(device).cuda_stream),
            }
            providers: list = [("CUDAExecutionProvider", cuda)]
            self.provider = "CUDAExecutionProvider"
        else:
            # the CPU provider takes no arena options (an extend strategy passed to it is
            # dropped: get_provider_options() shows {}); on or off is the choice there is
            options.enable_cpu_mem_arena = arena != "off"
            providers = ["CPUExecutionProvider"]
            self.provider = "CPUExecutionProvider"
        self.session = ort.InferenceSession(graph, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        output = self.session.get_outputs()[0]
        self.output_name = output.name
        self.output_rank = len(output.shape) if isinstance(output.shape, list) else 2
        self.options = {
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "intra_op_num_threads": options.intra_op_num_threads,
            "inter_op_num_threads": 1,
            "cpu_mem_arena": arena != "off",
            "cuda_arena_extend_strategy": "kSameAsRequested" if device.type == "cuda" else None,
            "enable_mem_pattern": False,
            "allow_spinning": False,
            "io_binding": device.type == "cuda",
        }

    def run(self, model: Any, x: torch.Tensor) -> torch.Tensor:
        if model.spec.fixed_batch and x.shape[0] != 1:  # a graph fixed at batch 1: sample by sample
            return torch.cat([self._run(xi, model.num_classes) for xi in x.split(1)])
        return self._run(x, model.num_classes)

    def _run(self, x: torch.Tensor, classes: int) -> torch.Tensor:
        x = x.detach().contiguous()
        if x.device.type == "cuda":
            return self._run_bound(x, classes)
        out = self.session.run([self.output_name], {self.input_name: x.numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).reshape(x.shape[0], -1)

    def _run_bound(self, x: torch.Tensor, classes: int) -> torch.Tensor:
        index = x.device.index or 0
        shape = (x.shape[0], classes) + (1,) * max(0, self.output_rank - 2)
        out = torch.empty(shape, device=x.device, dtype=torch.float32)
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", index, np.float32, shape, out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out.reshape(x.shape[0], -1)


def _tensor_versions(model: Any) -> tuple[int, int]:
    """(count, sum of in-place version counters) of the graph's parameters and buffers: changes
    when anything edits a weight in place (``tensor._version`` is bumped by every in-place op)."""
    tensors = [*model.graph.parameters(), *model.graph.buffers()]
    return len(tensors), sum(t._version for t in tensors)


@dataclasses.dataclass
class ForwardEngine:
    """The engine choice a :class:`~xplain.Model` carries (``model.engine``).

    ``graph``: the onnxruntime-ready logits graph the ONNX loader left (None: a plugin loader's
    torch-only model, or a graph onnxruntime cannot serve; ``unavailable`` says why)."""

    requested: str = "auto"
    graph: bytes | None = None
    unavailable: str = "the model was not loaded from an ONNX file by xplain's loader"
    served: Counter = dataclasses.field(default_factory=Counter)  #: infer calls per engine
    images: Counter = dataclasses.field(default_factory=Counter)  #: images forwarded per engine
    self_check: float | None = None  #: max relative difference of the first onnxruntime output
    _session: OnnxRuntimeEngine | None = None
    _key: tuple | None = None  #: (device, threads) the session was made for
    _versions: tuple[int, int] | None = None
    _failed: str | None = None  #: why onnxruntime was dropped during this run

    def __getstate__(self) -> dict:  # a session cannot be pickled (Ray ships the model)
        state = dict(self.__dict__)
        state.update(_session=None, _key=None, _versions=None)
        return state

    # ----------------------------------------------------------- choice
    def ort_reason(self, device: torch.device) -> str | None:
        """Why onnxruntime cannot serve this model on ``device`` (None: it can)."""
        if self.graph is None:
            return self.unavailable
        if self._failed:
            return self._failed
        providers = _providers()
        if providers is None:
            return "onnxruntime is not installed"
        if device.type == "cuda" and "CUDAExecutionProvider" not in providers:
            return "onnxruntime has no CUDA provider here (install onnxruntime-gpu: the gpu extra)"
        if device.type not in ("cpu", "cuda"):
            return f"onnxruntime does not serve device {device}"
        return None

    def resolved(self, device: torch.device) -> str:
        """The engine forward-only work on an unmodified graph runs on: torch or onnxruntime."""
        if self.requested == "torch":
            return "torch"
        return "torch" if self.ort_reason(device) else "onnxruntime"

    # ----------------------------------------------------------- running
    def session(self, model: Any, device: torch.device) -> OnnxRuntimeEngine | None:
        threads = torch.get_num_threads()
        key = (str(device), threads)
        if self._session is not None and self._key == key:
            if _tensor_versions(model) == self._versions:
                return self._session
            return None  # weights edited in place since: only the torch graph has them
        if self._session is not None and self._versions != _tensor_versions(model):
            return None
        assert self.graph is not None
        try:
            session = OnnxRuntimeEngine(self.graph, device, threads)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises many types
            return self._drop(f"onnxruntime cannot run the graph: {str(err).splitlines()[0][:160]}")
        self._versions = _tensor_versions(model)
        if self.self_check is None or self._key is None or self._key[0] != key[0]:
            x = model.example_input(1 if model.spec.fixed_batch else 2, seed=1)
            try:
                got = session.run(model, x).double()
            except Exception as err:  # noqa: BLE001
                return self._drop(f"onnxruntime failed: {str(err).splitlines()[0][:160]}")
            ref = TorchEngine().run(model, x).double()
            if got.shape != ref.shape:
                return self._drop(
                    f"onnxruntime gives shape {list(got.shape)}, torch {list(ref.shape)}"
                )
            scale = max(1.0, float(ref.abs().max()))
            diff = float((got - ref).abs().max()) / scale
            if not diff <= SELF_CHECK_TOL:
                return self._drop(
                    f"onnxruntime's logits differ from torch's by {diff:.2g} (relative)"
                )
            self.self_check = diff
        self._session, self._key = session, key
        return session

    def _drop(self, reason: str) -> OnnxRuntimeEngine | None:
        self._failed = reason
        self._session = None
        if self.requested == "onnxruntime":
            raise UsageError(f"--engine onnxruntime: {reason}")
        warnings.warn(f"{reason}; forward-only work runs on torch", stacklevel=4)
        return None  # typed like session(): callers return it


_TORCH = TorchEngine()


def forward(model: Any, x: torch.Tensor) -> torch.Tensor:
    """``model.infer(x)``: logits without autograd, from the engine the run chose (see above)."""
    engine: ForwardEngine | None = getattr(model, "engine", None)
    runner: Engine = _TORCH
    if (
        engine is not None
        and engine.requested != "torch"
        and not model.graph_modified
        and x.dtype == torch.float32
        and engine.ort_reason(x.device) is None
    ):
        session = engine.session(model, x.device)
        if session is not None:
            runner = session
    if engine is not None:
        engine.served[runner.name] += 1
        engine.images[runner.name] += x.shape[0]
    return runner.run(model, x)


def configure(model: Any, engine: str | None) -> None:
    """Set the engine a model's forward-only work runs on (``auto``, ``torch`` or
    ``onnxruntime``); None leaves it. ``onnxruntime`` for a model it cannot serve on the model's
    device is a usage error (exit 2) naming the reason."""
    if engine is None:
        return
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}", hint="use auto, torch or onnxruntime")
    state: ForwardEngine | None = getattr(model, "engine", None)
    if state is None:
        state = model.engine = ForwardEngine()
    if engine == "onnxruntime" and (reason := state.ort_reason(model.device)):
        raise UsageError(f"--engine onnxruntime: {reason}", path=model.report.path)
    state.requested = engine


def forward_counts(model: Any) -> Counter:
    """How many ``infer`` calls each engine has served on this model so far (a copy)."""
    engine: ForwardEngine | None = getattr(model, "engine", None)
    return Counter(engine.served) if engine is not None else Counter()


def forward_images(model: Any) -> Counter:
    """How many images each engine has forwarded through ``infer`` on this model (a copy)."""
    engine: ForwardEngine | None = getattr(model, "engine", None)
    return Counter(engine.images) if engine is not None else Counter()


def engines_between(before: Counter, after: Counter) -> str:
    """``"onnxruntime"``, ``"torch"``, ``"onnxruntime+torch"`` or ``"none"``: who served the
    ``infer`` calls between two :func:`forward_counts`."""
    used = sorted(name for name in after if after[name] > before.get(name, 0))
    return "+".join(used) if used else "none"


def describe(model: Any) -> dict:
    """The engine settings for ``run.json`` and ``xplain bench``: requested, resolved for the
    model's device, why not onnxruntime, the session's options and its self-check."""
    engine: ForwardEngine | None = getattr(model, "engine", None)
    device = model.device
    if engine is None:
        return {"requested": "torch", "forward": "torch", "reason": "no engine configured"}
    info: dict[str, Any] = {
        "requested": engine.requested,
        "forward": engine.resolved(device),
        "threads": torch.get_num_threads(),
    }
    if reason := engine.ort_reason(device):
        info["onnxruntime_unavailable"] = reason
    session = engine._session
    if session is not None:
        info.update(provider=session.provider, session_options=session.options)
    if engine.self_check is not None:
        info["self_check_max_rel_diff"] = engine.self_check
    if engine.served:
        info["forwards"] = dict(engine.served)
    return info
