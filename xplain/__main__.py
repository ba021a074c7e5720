"""``python -m xplain``: the same as the ``xplain`` command."""

from .cli import run

run()
