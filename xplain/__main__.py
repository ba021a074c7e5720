"""``python -m xplain``: the same as the ``xplain`` command."""

from .cli.app import run

run()
