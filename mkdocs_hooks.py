"""mkdocs hooks of xplain's docs site (``mkdocs.yml``: ``hooks:``).

Why a hook: the method and metric reference pages are generated from the plugin registry at
every build, so they cannot drift from ``xplain methods show NAME``; and pages that other
changes add to ``docs/`` but not to ``nav`` are listed under "More" instead of being
unreachable, so a new page never needs an edit of ``mkdocs.yml`` to be found; and an object an
API page names (``::: dotted.path``, and its ``members: [...]``) without a docstring is a
warning, so ``mkdocs build --strict`` fails on it (mkdocstrings itself skips it silently).
"""

from __future__ import annotations

import importlib
import logging
import re
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.plugins.xplain")  # mkdocs counts its warnings under --strict
_DIRECTIVE = re.compile(r"^::: *([\w.]+)\s*$")
_MEMBERS = re.compile(r"^\s+members: *\[([^\]]*)\]")
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
        extra = sorted(f.src_uri for f in files.documentation_pages() if f.src_uri not in listed)
        if extra:
            nav.append({"More": extra})
    return files


def _resolve(path: str) -> Any:
    """The object named by a dotted path: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            value = getattr(value, name)
        return value
    raise ImportError(path)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    current = None
    for line in markdown.splitlines():
        if match := _DIRECTIVE.match(line):
            current = match.group(1)
            targets = [current]
        elif current and (match := _MEMBERS.match(line)):
            targets = [f"{current}.{m.strip()}" for m in match.group(1).split(",") if m.strip()]
        else:
            continue
        for target in targets:
            try:
                obj = _resolve(target)
            except (ImportError, AttributeError):
                log.warning(f"{page.file.src_uri}: {target} does not exist")
                continue
            if isinstance(obj, property):
                obj = obj.fget
            if not (getattr(obj, "__doc__", None) or "").strip():
                log.warning(f"{page.file.src_uri}: {target} has no docstring")
    return markdown
