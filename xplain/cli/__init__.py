"""The ``xplain`` command (Typer app in :mod:`xplain.cli.app`)."""
