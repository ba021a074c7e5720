"""The docs site builds with ``mkdocs build --strict``: a broken link, a missing page or an API
object that no longer exists fails the suite; the method and metric pages are generated from
the registry, and pages missing from ``nav`` are still reachable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import REPO

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings")


def _build(config, site, cwd=REPO):
    # no -q: mkdocs then drops warnings before counting them, and --strict passes anything
    path = os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_site_builds_strict_with_generated_reference(tmp_path):
    import xplain

    done = _build(REPO / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    registry = xplain.get_registry()
    methods = (tmp_path / "site" / "reference" / "methods" / "index.html").read_text()
    metrics = (tmp_path / "site" / "reference" / "metrics" / "index.html").read_text()
    for name, method in registry.methods.items():
        assert f'id="{name}"' in methods, name
        assert method.params[0].name in methods if method.params else True
    for name in registry.metrics:
        assert f'id="{name}"' in metrics, name
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for documented in ("load_model", "preprocess", "takes_baselines", "Explanation"):
        assert documented in api, documented


def test_strict_catches_a_broken_link_and_lists_pages_outside_nav(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the guide](guide.md).\n")
    (docs / "guide.md").write_text("# Guide\n")
    (docs / "added-later.md").write_text("# Added later\n\n[broken](nowhere.md)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        textwrap.dedent(
            f"""\
            site_name: t
            docs_dir: {docs}
            hooks: [{REPO / "mkdocs_hooks.py"}]
            nav: [index.md, guide.md]
            """
        )
    )
    done = _build(config, tmp_path / "site", cwd=tmp_path)
    assert done.returncode != 0 and "nowhere.md" in done.stderr
    (docs / "added-later.md").write_text("# Added later\n\nBack [home](index.md).\n")
    done = _build(config, tmp_path / "site", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    home = (tmp_path / "site" / "index.html").read_text()
    assert "More" in home and "added-later" in home
    # an API page naming an object without a docstring fails the strict build
    (tmp_path / "nodoc_module.py").write_text(
        'def documented():\n    """Yes."""\n\n\ndef bare():\n    pass\n'
    )
    (docs / "added-later.md").write_text("# API\n\n::: nodoc_module.documented\n")
    assert _build(config, tmp_path / "site", cwd=tmp_path).returncode == 0
    (docs / "added-later.md").write_text("# API\n\n::: nodoc_module.bare\n")
    done = _build(config, tmp_path / "site", cwd=tmp_path)
    assert done.returncode != 0 and "nodoc_module.bare has no docstring" in done.stderr
