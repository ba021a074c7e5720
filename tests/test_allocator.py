"""The CLI fixes glibc's allocator thresholds (xplain.run.allocator), unless the user set them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xplain.run import allocator

_CHILD = """
import ctypes, json, sys
from xplain.run.allocator import tune_allocator
print(json.dumps(tune_allocator()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_allocator_sets_thresholds_unless_the_environment_does(monkeypatch):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    run = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "true", run.stderr
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        run = subprocess.run(
            [sys.executable, "-c", _CHILD],
            env={**env, name: "131072"},
            capture_output=True,
            text=True,
        )
        assert run.stdout.strip() == "false", run.stderr  # the user's choice wins
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.tune_allocator() is False
