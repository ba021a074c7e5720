"""Shards of an evaluation, and merging them: ``--shard I/N`` and ``xplain eval summarize DIR``.

A shard owns the images whose key hashes to it: ``blake2b(key) mod N == I``, where the key is
the image's path relative to the data root (the folder, or the manifest's folder). The split
depends on nothing but the key — not on the order of the listing, the number of images, the
machine or the mount point — so reruns and machines agree, and adding images never moves the
others to another shard. Each shard writes ``results.shard-I-of-N.jsonl``; any number of shards
can run at once on one shared folder because no two write the same file.

``run.json`` describes the configuration (method and metric parameters, the configuration
digests that make result keys, the image list) so that :func:`xplain.run.evaluation.summarize`
can merge every results file of a folder into ``summary.json/csv`` and plots, and name the images
no shard has done (:func:`missing_report`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputDataError, UsageError
from ..fileio import atomic_write
from .records import read_results

RUN = "run.json"
_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based); ``Shard(0, 1)`` is the whole data set."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(
                f"shard {self.index}/{self.count}: needs 0 <= I < N",
                hint="shards are numbered from 0, e.g. --shard 0/4 ... --shard 3/4",
            )

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def results_name(self) -> str:
        if self.count == 1:
            return "results.jsonl"
        return f"results.shard-{self.index}-of-{self.count}.jsonl"

    def owns(self, key: str) -> bool:
        return self.count == 1 or shard_of(key, self.count) == self.index


def shard_of(key: str, count: int) -> int:
    """The shard an image key belongs to (a hash, never a position)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % count


def parse_shard(text: str | None, env: Mapping[str, str] | None = None) -> Shard:
    """``I/N``, ``env`` (torchrun's RANK/WORLD_SIZE, else a SLURM array's task id/count), or None.

    None (no flag) still reads RANK/WORLD_SIZE when WORLD_SIZE > 1: every rank of a torchrun job
    runs the same command, and without a shard each would redo the whole data set."""
    env = os.environ if env is None else env
    if text is None or text.strip().lower() == "env":
        found = _from_env(env)
        if found is not None:
            return found
        if text is None:
            return Shard(0, 1)
        raise UsageError(
            "--shard env: none of RANK/WORLD_SIZE or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT "
            "is set"
        )
    m = _SHARD.fullmatch(text)
    if not m:
        raise UsageError(f"--shard {text!r}: expected I/N (e.g. 0/4) or 'env'")
    return Shard(int(m.group(1)), int(m.group(2)))


def _from_env(env: Mapping[str, str]) -> Shard | None:
    def num(name: str) -> int | None:
        v = env.get(name, "").strip()
        if not v:
            return None
        if not v.isdigit():
            raise UsageError(f"${name}={v!r} is not a non-negative integer")
        return int(v)

    world, rank = num("WORLD_SIZE"), num("RANK")
    if world is not None and world > 1:
        if rank is None:
            raise UsageError(f"$WORLD_SIZE={world} but $RANK is not set")
        return Shard(rank, world)
    count, task = num("SLURM_ARRAY_TASK_COUNT"), num("SLURM_ARRAY_TASK_ID")
    if count is not None and count > 1 and task is not None:
        first = num("SLURM_ARRAY_TASK_MIN") or 0  # --array=1-4 numbers tasks from 1
        return Shard(task - first, count)
    return None


def data_root(data: Path) -> Path:
    """The folder image keys are relative to: the data folder, or the manifest's/image's folder."""
    data = Path(data)
    return data if data.is_dir() else data.parent


def image_key(path: Path, root: Path) -> str:
    """The machine-independent name of an image: its path relative to the data root (POSIX)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


# ----------------------------------------------------------------------------- run.json
def write_run(out: Path, run: dict[str, Any]) -> None:
    """Describe the run for ``summarize`` (atomic; concurrent shards of one run write the same)."""
    atomic_write(out / RUN, (json.dumps(run, separators=(",", ":")) + "\n").encode())


def read_run(out: Path) -> dict[str, Any]:
    path = out / RUN
    if not path.is_file():
        raise InputDataError("no run.json: not the output folder of `xplain eval`", path=out)
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputDataError(f"unreadable run description: {e}", path=path) from None
    need = {"configs": dict, "methods": dict, "metrics": dict, "images": list}
    for name, kind in need.items():
        if not isinstance(run.get(name), kind):
            raise InputDataError(f"run description lacks {name!r}", path=path)
    return run


@contextlib.contextmanager
def lock_results(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on one shard's results file (created if missing) for the block.

    A shard cannot lock the whole --out folder as an unsharded run does: its sibling shards share
    the folder. Two processes given the same shard are refused (exit 2), like two unsharded runs."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"another xplain run is writing {path.name} (it is locked); wait for it or choose "
                "another --shard or --out",
                path=path,
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def result_files(out: Path) -> list[Path]:
    """Every results file of a folder: the unsharded one and the shards of any split."""
    return sorted(p for p in out.glob("results*.jsonl") if p.is_file())


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object: configuration digests and result keys."""
    return hashlib.blake2b(
        json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=12
    ).hexdigest()


def result_key(config: str, image: str) -> str:
    """The key of one (image, method configuration) record."""
    return digest({"config": config, "image": image})


def missing_report(
    out: Path, configs: dict[str, str], images: list[str], files: list[Path], examples: int = 10
) -> dict[str, Any]:
    """Images of the run with at least one method's record in none of ``files``."""
    have = {r["key"] for path in files for r in read_results(path)}
    missing = [
        img for img in images if any(result_key(c, img) not in have for c in configs.values())
    ]
    return {"missing": len(missing), "missing_images": missing[:examples]}


__all__ = [
    "Shard",
    "data_root",
    "image_key",
    "missing_report",
    "parse_shard",
    "read_run",
    "result_files",
    "shard_of",
    "write_run",
]
