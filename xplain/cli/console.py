"""Where the CLI prints: two rich consoles (``out`` for results, ``err`` for progress, warnings
and errors) that never let a control character of untrusted text reach the terminal.

Why a module of its own: every verb prints through these, and the escaping is a security
property (model names, op types, labels and file names are file content), kept in one place.
"""

from __future__ import annotations

from rich.console import Console
from rich.segment import Segment

from ..untrusted import printable


class SafeConsole(Console):
    """A rich Console that never lets a control character through.

    Every segment rich renders (plain strings, markup, table cells, progress text) passes
    through :func:`xplain.untrusted.printable` (newlines kept), so an ESC/CSI/OSC/C1 sequence in
    a model's producer name, an op type, a label or a file name is shown as ``\\x1b…`` text
    instead of being executed by the terminal. Rich's own control segments (cursor moves of a
    progress bar) are left alone: they carry no untrusted text."""

    def print(self, *objects, **kwargs):  # noqa: A003 - rich's name
        super().print(
            *(printable(o, keep_newlines=True) if isinstance(o, str) else o for o in objects),
            **kwargs,
        )

    def render(self, renderable, options=None):
        for segment in super().render(renderable, options):
            if segment.control or segment.text.isprintable() or segment.text == "\n":
                yield segment
            else:
                yield Segment(
                    printable(segment.text, keep_newlines=True), segment.style, segment.control
                )


# emoji off and markup escaped: model names, paths and plugin errors are untrusted text
out = SafeConsole(soft_wrap=True, emoji=False)
err = SafeConsole(stderr=True, soft_wrap=True, emoji=False)


class NoStatus:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *args, **kwargs) -> None:  # the status API, for a console that is no terminal
        pass
