"""The input pipeline of ``xplain eval``: decode and preprocess images in background workers.

Decoding a JPEG and resizing it with Pillow costs a few milliseconds per image, as much as a
forward pass of a small network, so ``eval`` decodes the next batches while the current one is
explained. ``prefetch`` keeps at most ``depth`` batches in flight, so memory is bounded by
``depth x batch_size`` decoded images whatever the size of the data set (no cache grows with
it), and yields the batches in order, so results do not depend on the number of workers.

Threads are the default: Pillow releases the GIL while it decodes and resamples, and threads
need no pickling of images back to the parent. Measured on this project's 2-core machine
(``bench/eval_throughput.py --pipeline``): see docs/evaluation.md for the numbers
that chose it. ``kind="process"`` is offered for decoders that hold the GIL.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..errors import XplainError
from .datasets import Sample
from .images import Geometry, Preprocess, load_image


@dataclasses.dataclass
class Prepared:
    """One sample of a batch: its position in the data set, and its pixels or why there are none."""

    index: int
    sample: Sample
    array: np.ndarray | None = None  #: float32 C×H×W, model input
    geometry: Geometry | None = None
    error: str | None = None


def prepare(index: int, sample: Sample, preprocess: Preprocess) -> Prepared:
    """Load and preprocess one sample; a bad row or image becomes ``error``, never an exception."""
    if sample.error is not None:
        return Prepared(index, sample, error=sample.error)
    try:
        arr, geo = preprocess(load_image(sample.path))
        return Prepared(index, sample, arr, geo)
    except XplainError as e:
        return Prepared(index, sample, error=str(e))
    except Exception as e:  # noqa: BLE001 - one broken image must not end the run
        return Prepared(index, sample, error=f"{sample.path}: cannot load: {type(e).__name__}: {e}")


def default_workers() -> int:
    """The number of cores this process may use (the CPU affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _prepare_batch(batch: list[tuple[int, Sample]], preprocess: Preprocess) -> list[Prepared]:
    return [prepare(i, s, preprocess) for i, s in batch]


def prefetch(
    batches: Iterable[list[tuple[int, Sample]]],
    preprocess: Preprocess,
    workers: int = 0,
    kind: str = "thread",
    depth: int = 2,
) -> Iterator[list[Prepared]]:
    """Yield each batch of ``(index, sample)`` prepared, in order, decoding ahead in workers.

    ``workers`` 0 decodes in the calling thread (no pool). With a pool, every image of a batch is
    a separate task (threads) so the workers share one batch; processes get one task per batch
    slice to keep pickling cheap. At most ``depth`` batches are decoded ahead of the consumer.
    """
    if workers <= 0:
        for batch in batches:
            yield _prepare_batch(batch, preprocess)
        return
    if kind not in ("thread", "process"):
        raise ValueError(f"unknown worker kind {kind!r}")
    if kind == "thread":
        pool: cf.Executor = cf.ThreadPoolExecutor(workers, thread_name_prefix="xplain-decode")
    else:  # spawn: forking a process that holds torch threads is unsafe
        pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    pending: deque[list[cf.Future]] = deque()
    source = iter(batches)
    try:

        def submit() -> bool:
            batch = next(source, None)
            if batch is None:
                return False
            if kind == "thread":
                pending.append([pool.submit(prepare, i, s, preprocess) for i, s in batch])
            else:
                step = max(1, -(-len(batch) // workers))
                pending.append(
                    [
                        pool.submit(_prepare_batch, batch[k : k + step], preprocess)
                        for k in range(0, len(batch), step)
                    ]
                )
            return True

        for _ in range(max(1, depth)):
            if not submit():
                break
        while pending:
            futures = pending.popleft()
            submit()
            out: list[Prepared] = []
            for f in futures:
                res: Any = f.result()
                out.extend(res if isinstance(res, list) else [res])
            yield out
    finally:
        for futures in pending:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def to_device(arrays: list[np.ndarray], device: Any):
    """Stack arrays into one float32 batch on ``device``: pinned memory and a non-blocking copy
    on CUDA (the copy overlaps with the host's next work), a plain tensor elsewhere."""
    import torch

    x = torch.from_numpy(np.stack(arrays))
    device = torch.device(device)
    if device.type == "cuda":
        return x.pin_memory().to(device, torch.float32, non_blocking=True)
    return x.to(device, torch.float32)


__all__ = ["Prepared", "default_workers", "prefetch", "prepare", "to_device"]
