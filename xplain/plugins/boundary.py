"""The plugin boundary's process-level rules: a plugin may not end the process.

``sys.exit()`` inside a plugin is already a ``SystemExit`` that the callers turn into a plugin
error. ``os._exit(0)`` is not: it ends the process at once, with the status the plugin chose (0
claims success), before the run writes its records or its summary. While a method, metric or fit
runs, :func:`no_process_exit` replaces ``os._exit`` with a function that raises
:class:`PluginExit` (a ``SystemExit``, so every caller's existing ``except SystemExit`` reports
it as the plugin's failure). xplain's own hard stops call ``posix._exit`` directly.

Native code (``ctypes``' ``_exit``, a ``kill -9`` of the own process) cannot be stopped this way;
eval's records are append-only complete lines and ``summary.json`` is written last, so such a
stop leaves a run that resumes, never one that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

_ORIGINAL_EXIT = os._exit
_lock = threading.Lock()
_depth = 0


class PluginExit(SystemExit):
    """``os._exit(code)`` called inside a plugin; ``code`` is what it asked for."""

    def __str__(self) -> str:
        return f"os._exit({self.code!r})"


_PID = os.getpid()


def _refuse_exit(code: int = 0) -> None:
    if os.getpid() != _PID:  # a forked child (a plugin's multiprocessing pool) ends as usual
        _ORIGINAL_EXIT(code)
    raise PluginExit(code)


def hard_exit(code: int) -> None:
    """End the process now (xplain's own last resort: a stop a plugin swallowed, memory)."""
    _ORIGINAL_EXIT(int(code))


@contextlib.contextmanager
def no_process_exit() -> Iterator[None]:
    """Within the block (nesting allowed), ``os._exit`` raises :class:`PluginExit`."""
    global _depth
    with _lock:
        _depth += 1
        os._exit = _refuse_exit  # type: ignore[assignment]
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                os._exit = _ORIGINAL_EXIT


def exit_process(code: int) -> None:
    """The CLI's last step. A thread a plugin started and left running (not a daemon) would keep
    the interpreter from exiting after the command finished — for ever, or until it ends; when
    one is still alive, flush the output and end the process with ``code`` without waiting."""
    import sys

    alive = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    deadline = time.monotonic() + 1.0  # xplain's own pools finish their last item first
    for t in alive:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in alive if t.is_alive()]
    if alive:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        hard_exit(code)
    sys.exit(code)
