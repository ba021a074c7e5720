"""Every script in ``examples/`` runs as a user would run it (from the repository root), so the
documented snippets cannot rot."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"explain_a_photo.py", "torch_module.py"}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    if script.name == "explain_a_photo.py":
        assert "\nclass 3 (3)" in done.stdout
        assert (tmp_path / "out" / "digit_3.saliency.3.overlay.png").exists()
        assert (tmp_path / "out" / "digit_3.panel.png").exists()
    if script.name == "torch_module.py":
        gaps = done.stdout.split("IG completeness gap per image:")[1].splitlines()[0]
        assert all(abs(float(v)) < 0.05 for v in gaps.strip(" []").split(","))
