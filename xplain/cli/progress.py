"""What ``xplain explain`` shows while it works: a bar over the images, naming the method that
runs and on which image, with the time elapsed (issue 29.3: one InputIBA map ran 7.5 minutes
on a blank terminal).

Why a module of its own: the display is rich's, the counting is ``explain_files``' callbacks;
this joins them and stays silent when output is not a terminal or with ``--quiet``.
"""

from __future__ import annotations

from collections.abc import Callable

from .console import err

__all__ = ["explain_progress"]


def explain_progress(n_images: int, enabled: bool, title: str = "loading images"):
    """``(progress, on_images, on_method, within)``: a started rich ``Progress`` (disabled when
    not ``enabled``), the callback counting finished images, the one naming the running method,
    and the :func:`xplain.progress_to` listener showing the method's own steps."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not enabled,
    )
    task = progress.add_task(title, total=n_images)
    progress.start()

    def on_images(n: int) -> None:
        progress.advance(task, n)

    running = [title]

    def on_method(name: str, first: int, count: int) -> None:
        where = f"image {first + 1}" if count == 1 else f"images {first + 1}–{first + count}"
        running[0] = f"{name} on {where}"
        progress.update(task, description=running[0])

    def within(done: int, total: int, what: str) -> None:  # xplain.report_progress
        progress.update(task, description=f"{running[0]} · {what} {done}/{total}")

    callbacks: tuple[
        Callable[[int], None], Callable[[str, int, int], None], Callable[[int, int, str], None]
    ] = (on_images, on_method, within)
    return progress, *callbacks
