"""Markdown pages of the installed methods and metrics, written from the plugins' own help.

Why generated: the docs site's method and metric reference must say exactly what
``xplain methods show NAME`` says, so it is built from the same registry fields (summary,
description, parameters, capabilities) at every docs build (``mkdocs_hooks.py``) instead of
being copied by hand and drifting.
"""

from __future__ import annotations

import re

from .plugin_api import Method, Metric, Param
from .registry import Registry

_SPECIAL = re.compile(r"([\\*_{}\[\]<>|#])")


def _text(value: object) -> str:
    """Help text made inert for Markdown, except `code` spans (help is prose that quotes
    parameter names in backticks, as the terminal shows them)."""
    parts = str(value).split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick: no code spans at all
        return _SPECIAL.sub(r"\\\1", str(value)).replace("`", "\\`")
    return "`".join(part if i % 2 else _SPECIAL.sub(r"\\\1", part) for i, part in enumerate(parts))


def _params(params: list[Param]) -> list[str]:
    if not params:
        return ["Parameters: none.", ""]
    rows = ["| parameter | type | default | meaning |", "|---|---|---|---|"]
    for p in params:
        meaning = _text(p.help)
        if p.choices:
            meaning += " (one of: " + ", ".join(f"`{c}`" for c in p.choices) + ")"
        bounds = [
            f"≥ {p.min:g}" if p.min is not None else "",
            f"≤ {p.max:g}" if p.max is not None else "",
        ]
        if any(bounds):
            meaning += " (" + ", ".join(b for b in bounds if b) + ")"
        rows.append(f"| `{p.name}` | {p.type} | `{p.default!r}` | {meaning} |")
    return [*rows, ""]


def _capabilities(method: Method) -> str:
    caps = method.capabilities
    flags = [
        name
        for name, on in (
            ("needs gradients", caps.needs_gradients),
            ("needs fitting (`xplain fit`)", caps.needs_fitting),
            ("stochastic (seeded per image)", caps.stochastic),
            ("multi-class", caps.multi_class),
        )
        if on
    ]
    line = "Capabilities: " + (", ".join(flags) or "none") + "."
    if caps.requires:
        line += " Requires: " + ", ".join(caps.requires) + " (other models are refused, exit 2)."
    return line


def _entry(item: Method | Metric) -> list[str]:
    lines = [f"## `{item.name}`", "", f"**{_text(item.summary)}** (plugin `{item.plugin}`)", ""]
    if item.description:
        lines += [_text(item.description), ""]
    if isinstance(item, Method):
        lines += [_capabilities(item), ""]
        if item.reference:
            lines += [f"Compared with: `{item.reference}`.", ""]
    else:
        lines += [f"Direction: {'higher' if item.higher_is_better else 'lower'} is better.", ""]
        if item.needs:
            lines += ["Needs: " + ", ".join(item.needs) + ".", ""]
    return lines + _params(item.params)


def catalogue_page(registry: Registry, kind: str) -> str:
    """The Markdown page of every installed ``kind`` ("method" or "metric"), sorted by name."""
    items: list[Method | Metric] = sorted(
        (registry.methods if kind == "method" else registry.metrics).values(),
        key=lambda item: item.name,
    )
    title = "Methods" if kind == "method" else "Metrics"
    lines = [
        f"# {title} reference",
        "",
        f"Generated at build time from each plugin's own help: the same text as "
        f"`xplain {kind}s show NAME`. Installed plugins' {kind}s appear here too.",
        "",
        f"| {kind} | summary |",
        "|---|---|",
    ]
    lines += [f"| [`{i.name}`](#{_anchor(i.name)}) | {_text(i.summary)} |" for i in items]
    lines.append("")
    for item in items:
        lines += _entry(item)
    return "\n".join(lines)


def _anchor(name: str) -> str:
    """The id Python-Markdown's toc extension gives a heading ``## `name` ``."""
    return re.sub(r"[^\w\- ]", "", name).strip().lower().replace(" ", "-")
