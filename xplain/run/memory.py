"""The process's memory bound: a watchdog thread reading the resident set size.

Value-dependent shapes are checked per node (:mod:`xplain.onnx.shape_checks`); many tensors each
under that bound, or onnxruntime's own allocations, are not. :func:`watch` starts one daemon
thread per process reading the resident set size (Linux ``/proc/self/statm``) every 20 ms. Above
the limit (``$XPLAIN_MAX_MEMORY``: bytes or ``512M``/``4G``; default 80 % of the machine's or the
cgroup's memory; ``0`` = off) it prints one line naming the model file and ends the process with
exit 3: the allocation is usually inside one native call (torch or onnxruntime) that no
exception can interrupt, and the alternative is the kernel's OOM killer. Files already written
are complete (every write is atomic).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from pathlib import Path

from ..errors import ModelError, UsageError
from ..untrusted import printable

#: how often the watchdog reads the resident set size
WATCH_INTERVAL_S = 0.02
#: default share of the machine's (or cgroup's) memory the process may hold
DEFAULT_SHARE = 0.8


# ----------------------------------------------------------------------------- the watchdog
def parse_size(text: str, source: str = "XPLAIN_MAX_MEMORY") -> int:
    """``"4G"``, ``"512M"``, ``"2.5GiB"`` or plain bytes; 0 turns the watchdog off."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    factor = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(raw[-1:], 1)
    number = raw[:-1] if factor > 1 else raw
    try:
        value = float(number) if len(number) <= 20 else -1.0
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise UsageError(
            f"{source} must be a size such as 4G, 512M or bytes, got {printable(text[:40])!r}"
        )
    return int(value * factor)


def _physical_memory() -> int | None:
    limits = []
    with contextlib.suppress(OSError, ValueError):
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            limits.append(int(text))
    with contextlib.suppress(OSError, ValueError, AttributeError):
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return min(limits) if limits else None


def memory_limit() -> int | None:
    """The bound in force (bytes), or None when off / not measurable here."""
    text = os.environ.get("XPLAIN_MAX_MEMORY", "").strip()
    if text:
        value = parse_size(text)
        return value or None
    total = _physical_memory()
    return int(total * DEFAULT_SHARE) if total else None


def resident_bytes() -> int | None:
    """The process's resident set size (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _Watchdog(threading.Thread):
    def __init__(self, limit: int):
        super().__init__(name="xplain-memory-watchdog", daemon=True)
        self.limit = limit
        self.path = ""

    def run(self) -> None:  # pragma: no cover - exercised in a subprocess
        while True:
            rss = resident_bytes()
            if rss is None:
                return
            if rss > self.limit:
                self.stop(rss)
            time.sleep(WATCH_INTERVAL_S)

    def stop(self, rss: int) -> None:  # pragma: no cover - ends the process
        from ..plugins.boundary import hard_exit

        where = f"{printable(self.path)}: " if self.path else ""
        with contextlib.suppress(Exception):
            sys.stderr.write(
                f"xplain: error: {where}the process holds {rss / 2**30:.2f} GiB, more than the "
                f"limit of {self.limit / 2**30:.2f} GiB (a tensor whose size depends on the "
                "input's values?); stopped (raise it with XPLAIN_MAX_MEMORY)\n"
            )
            sys.stderr.flush()
        hard_exit(int(ModelError.exit_code))


_watchdog: _Watchdog | None = None
_lock = threading.Lock()


def watch(path) -> None:
    """Start (once per process) or re-aim the watchdog at the model file ``path``."""
    global _watchdog
    limit = memory_limit()
    with _lock:
        if limit is None or resident_bytes() is None:
            if _watchdog is not None:
                _watchdog.limit = sys.maxsize  # turned off since: stays idle
            return
        if _watchdog is None:
            _watchdog = _Watchdog(limit)
            _watchdog.path = str(path)
            _watchdog.start()
        _watchdog.limit = limit
        _watchdog.path = str(path)
