"""mkdocs hooks of xplain's docs site (``mkdocs.yml``: ``hooks:``).

Why a hook: the method and metric reference pages are generated from the plugin registry at
every build, so they cannot drift from ``xplain methods show NAME``; and pages that other
changes add to ``docs/`` but not to ``nav`` are listed under "More" instead of being
unreachable, so a new page never needs an edit of ``mkdocs.yml`` to be found.
"""

from __future__ import annotations

from typing import Any

from mkdocs.structure.files import File, Files

GENERATED = {"reference/methods.md": "method", "reference/metrics.md": "metric"}


def _nav_pages(nav: Any) -> set[str]:
    """Every page path named in a mkdocs ``nav`` value (nested lists and dicts)."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_nav_pages(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(*(_nav_pages(v) for v in nav)) if nav else set()
    return set()


def on_files(files: Files, config: Any) -> Files:
    from xplain.plugins.catalogue_pages import catalogue_page
    from xplain.plugins.registry import get_registry

    registry = get_registry()
    for path, kind in GENERATED.items():
        files.append(File.generated(config, path, content=catalogue_page(registry, kind)))
    nav = config.get("nav")
    if nav:
        listed = _nav_pages(nav)
        extra = sorted(
            f.src_uri for f in files.documentation_pages() if f.src_uri not in listed
        )
        if extra:
            nav.append({"More": extra})
    return files
