"""``xplain.report_progress``: how a long method or fit says how far it got.

Why a module of its own: a single InputIBA map ran 7.5 minutes on a blank terminal (issue 29.3).
A method calls ``xplain.report_progress(done, total, "stage")`` from its loops (optimisation
steps, GAN epochs, integration chunks, fit epochs); whoever runs it (``xplain explain``'s bar)
listens with :func:`progress_to`.  Nobody listening costs one context-variable lookup, so the
call is safe in any loop; the listener lives in a ``ContextVar``, so nested or concurrent runs do
not see each other's bars.  Part of the public API for plugins (contract v1 addition).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

__all__ = ["report_progress", "progress_to"]

Listener = Callable[[int, int, str], None]
_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar(
    "xplain_progress", default=None
)


def report_progress(done: int, total: int, what: str = "") -> None:
    """Tell the runner that ``done`` of ``total`` units of the current stage ``what`` are done."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(int(done), int(total), str(what))


@contextlib.contextmanager
def progress_to(listener: Listener | None) -> Iterator[None]:
    """Route :func:`report_progress` calls made inside the block to ``listener``."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)
