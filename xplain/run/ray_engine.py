"""``xplain eval --ray``: score batches on Ray actors; this process stays the only writer.

Each worker is a Ray actor that unpickles the model once (shipped with ``ray.put``, not re-read
from the worker's disk, with the fitted state of every method preloaded the same way), moves it
to its device and scores whole batches with :func:`xplain.run.scoring.score_batch`, decoding the
batch's images itself. The driver hands out batches dynamically — each actor has at most two in
flight and gets the next as soon as one returns (``ray.wait``) — so a slow method on hard images
balances across workers. Records come back to the driver, which appends them (fsynced, keyed,
skipping keys already written), so results, resume and a killed driver behave exactly as a
single process: nothing the driver wrote is lost and nothing is written twice.

A worker that dies is restarted by Ray (``max_restarts``) and its in-flight batches are
resubmitted by the driver to whichever actor is alive, up to three attempts per batch.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError, XplainError
from ..untrusted import path_text

_ATTEMPTS = 3
_IN_FLIGHT = 2  # batches queued per actor: one running, one waiting, so the actor never idles


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray", hint="pip install 'xplain[ray]'") from None
    return ray


def connect(address: str, workers: int, gpus_per_worker: float) -> bool:
    """Join or start a cluster; True when this call started it (and must shut it down).

    ``local`` starts a private one-machine cluster sized for the workers; ``auto`` joins the
    cluster ``ray start`` runs on this machine; anything else is a cluster address."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "ignore_reinit_error": True,
        "log_to_driver": False,
        "logging_level": "ERROR",
        "configure_logging": False,
    }
    try:
        if address == "local":
            # address="local": a new cluster even when `ray start` runs on this machine
            ray.init(address="local", num_cpus=max(1, workers), include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except ConnectionError as e:
        raise UsageError(
            f"--ray {address}: cannot connect: {' '.join(str(e).split())}",
            hint="start a cluster with `ray start --head`, or use --ray local",
        ) from None
    return True


def _model_bytes(model) -> bytes:
    """The model pickled on the CPU (a worker may have no GPU, or another one)."""
    from ray import cloudpickle

    device = model.device
    try:
        model.to("cpu")
        return cloudpickle.dumps(model)
    finally:
        model.to(device)


def _fitted_state(model) -> dict[str, tuple[dict, dict]]:
    """Every state ``xplain fit`` saved for this model, read once here (CPU tensors)."""
    from .state import load_state, state_paths

    folder = state_paths(model.digest, "x", model.state_dir)[0].parent
    found = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.safetensors")):
            state = load_state(model.digest, path.stem, root=model.state_dir, device="cpu")
            if state is not None:
                found[path.stem] = state
    return found


class _Worker:
    """One Ray actor: a model on its device, scoring the batches it is given."""

    def __init__(
        self, model_bytes: bytes, state: dict, methods, metrics, preprocess, plan, use_gpu: bool
    ):
        import torch

        torch.set_num_threads(1)
        self.model = pickle.loads(model_bytes)
        self.model.preloaded_state = state
        self.model.to("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.methods, self.metrics, self.preprocess, self.plan = methods, metrics, preprocess, plan
        from .guards import ModelGuard

        self.guard = ModelGuard(
            self.model
        )  # a method that changes this worker's model is caught here

    def score(self, jobs):
        from ..data.pipeline import prepare
        from .scoring import score_batch

        prepared = [prepare(j.index, j.sample, self.preprocess) for j in jobs]
        return score_batch(
            self.model, jobs, prepared, self.methods, self.metrics, self.plan, self.guard
        )

    def ping(self) -> bool:
        return True


def run_on_ray(
    model,
    batches: list,
    chosen_methods,
    chosen_metrics,
    preprocess,
    plan,
    on_batch: Callable[[list, list, list, int], None],
    *,
    address: str = "local",
    workers: int = 2,
    gpus_per_worker: float = 0.0,
) -> None:
    """Score ``batches`` (lists of :class:`~xplain.run.planning.Job`) on ``workers`` actors;
    ``on_batch(records, maps, views, n_jobs)`` is called in this process for every finished batch."""
    if workers < 1:
        raise UsageError("--ray-workers must be at least 1")
    if gpus_per_worker < 0:
        raise UsageError("--gpus-per-worker must be at least 0")
    if not batches:
        return
    ray = _import_ray()
    # Workers run in their own folder (on other nodes, too): they get absolute image paths, and the
    # records get back the path as the data set names it, as a single process writes it.
    shown = {
        k: path_text(job.sample.path)
        for batch in batches
        for job in batch
        for k in job.keys.values()
    }
    shown_path = {job.index: str(job.sample.path) for batch in batches for job in batch}
    batches = [
        [
            dataclasses.replace(
                job, sample=dataclasses.replace(job.sample, path=job.sample.path.absolute())
            )
            for job in batch
        ]
        for batch in batches
    ]
    started = connect(address, workers, gpus_per_worker)
    try:
        model_ref = ray.put(_model_bytes(model))
        state_ref = ray.put(_fitted_state(model))
        actor_cls = ray.remote(
            num_cpus=1, num_gpus=gpus_per_worker, max_restarts=2, max_task_retries=0
        )(_Worker)
        actors = [
            actor_cls.remote(
                model_ref,
                state_ref,
                chosen_methods,
                chosen_metrics,
                preprocess,
                plan,
                gpus_per_worker > 0,
            )
            for _ in range(min(workers, len(batches)))
        ]
        queue = deque(range(len(batches)))
        attempts = [0] * len(batches)
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (batch, actor)
        pings: dict[Any, int] = {}  # object ref -> actor being restarted
        load = [0] * len(actors)
        alive = [True] * len(actors)

        def submit(a: int) -> None:
            while alive[a] and queue and load[a] < _IN_FLIGHT:
                b = queue.popleft()
                running[actors[a].score.remote(batches[b])] = (b, a)
                load[a] += 1

        def lost(a: int) -> None:  # wait for Ray to restart the actor before giving it work again
            if alive[a]:
                alive[a] = False
                pings[actors[a].ping.remote()] = a

        for a in range(len(actors)):
            submit(a)
        while running or (queue and pings):
            ready, _ = ray.wait(list(running) + list(pings), num_returns=1)
            ref = ready[0]
            if ref in pings:
                a = pings.pop(ref)
                try:
                    ray.get(ref)
                    alive[a] = True
                except ray.exceptions.RayError:  # out of restarts: this actor is gone for good
                    pass
            else:
                b, a = running.pop(ref)
                load[a] -= 1
                try:
                    records, maps, views = ray.get(ref)
                except ray.exceptions.ActorUnavailableError:  # restarting: not the batch's fault
                    queue.appendleft(b)
                    lost(a)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                    attempts[b] += 1  # the worker died while it held this batch
                    if attempts[b] >= _ATTEMPTS:
                        raise XplainError(
                            f"Ray workers died {attempts[b]} times on one batch: "
                            f"{' '.join(str(e).split())[:200]}"
                        ) from None
                    queue.appendleft(b)  # another (or the restarted) actor takes it
                    lost(a)
                except ray.exceptions.RayTaskError as e:
                    cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
                    if isinstance(cause, XplainError):
                        raise cause from None
                    raise XplainError(
                        f"a Ray worker failed: {' '.join(str(e).split())[:300]}"
                    ) from None
                else:
                    for record in records:
                        record["image"] = shown.get(record["key"], record["image"])
                    views = [
                        (i, dataclasses.replace(sample, path=Path(shown_path[i])), array)
                        for i, sample, array in views
                    ]
                    on_batch(records, maps, views, len(batches[b]))
            for k in sorted(range(len(actors)), key=lambda k: load[k]):
                submit(k)
        if queue:
            raise XplainError(
                f"every Ray worker died; {len(queue)} batch(es) not scored (rerun to resume)"
            )
    finally:
        if started:
            ray.shutdown()


__all__ = ["connect", "run_on_ray"]
