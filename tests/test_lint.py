"""The tree passes the linters configured in pyproject.toml (ruff, mypy).

CI runs only the README's set-up and test commands, so the linters run here, each in a
subprocess from the repository root. A tool that is not installed skips its test rather than
failing it (the ``test`` extra installs both)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> list[str]:
    """The command that runs ``name``: its script beside this interpreter, else ``python -m``."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return [str(beside)]
    if shutil.which(name):
        return [name]
    try:
        __import__(name)
    except ImportError:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return [sys.executable, "-m", name]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command[-3:])} failed:\n{done.stdout}\n{done.stderr}"


def test_ruff_check():
    _run([*_tool("ruff"), "check", "--no-cache", "."])


def test_ruff_format():
    _run([*_tool("ruff"), "format", "--check", "--no-cache", "."])


def test_mypy():
    _run([*_tool("mypy"), "xplain"])  # incremental: .mypy_cache makes reruns fast
