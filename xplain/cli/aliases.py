"""Old option spellings, kept working but hidden: one vocabulary across the verbs.

Why a module of its own: ``explain`` said ``--method``/``--labels`` where ``eval`` said
``--methods``/``--class-names`` (issue 29).  The verbs now share ``--method`` (``-m``),
``--metric`` and ``--class-names`` (the model's class names; ``eval``/``fit`` keep ``--labels``
for the images' true labels).  The old spellings are rewritten here, before Typer parses, so
they work as before and never appear in ``--help``.
"""

from __future__ import annotations

__all__ = ["ALIASES", "canonical"]

#: verb -> {old spelling: new spelling}
ALIASES: dict[str, dict[str, str]] = {
    "explain": {"--labels": "--class-names"},
    "eval": {"--methods": "--method", "--metrics": "--metric"},
    "bench": {"--methods": "--method", "--metrics": "--metric"},
}
#: global options (before the verb) that take a value
_GLOBAL_VALUED = {"--no-plugin", "--max-input-pixels"}


def _verb_index(argv: list[str]) -> int | None:
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return i
        i += 2 if arg in _GLOBAL_VALUED else 1
    return None


def canonical(argv: list[str]) -> list[str]:
    """``argv`` with the verb's old option spellings (``--old`` and ``--old=value``) renamed."""
    at = _verb_index(argv)
    if at is None or argv[at] not in ALIASES:
        return list(argv)
    table = ALIASES[argv[at]]
    out = list(argv[: at + 1])
    rest = argv[at + 1 :]
    for k, arg in enumerate(rest):
        if arg == "--":
            out += rest[k:]
            break
        name, eq, value = arg.partition("=")
        out.append(table[name] + eq + value if name in table else arg)
    return out
