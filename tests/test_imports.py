"""The import graph of package ``xplain``, computed from its source: no cycle, and no import from
a pipeline stage to a later one (issue 20).

The package reads as the pipeline ``onnx → graph → data → run → output → cli``; a module may
import from its own stage, an earlier one, or the base modules (``errors``, ``untrusted``,
``fileio``), never from a later stage. ``plugins`` (the plugin host and the contract plugins code
against) sits between ``data`` and ``run``: plugins compute on a converted graph and data, and
the run stage calls them.

What counts as an edge (decided for this test, and why):

- **layering**: every import, at module level *or inside a function*. A lazy import is still a
  dependency — it only postpones the failure — and both cycles issue 20 found
  (``output.report ↔ run.evaluation ↔ run.shards ↔ run.ray_engine``, ``onnx.hooks →
  plugins.plugin_api → plugins.registry → onnx.hooks``) hid behind function-level imports that
  crossed stages; moving an import into a function must not be a way around this test. So no
  cycle can span two stages, lazy or not.
- **cycles**: module-level imports (those under ``if TYPE_CHECKING:`` excluded, they never run),
  because they are what runs when a module is imported — the order problems a cycle causes.
  Inside one stage a function-level import back to the module that imports yours (a facade's
  part building the facade's type, say) is allowed: it cannot fail at import time.

``xplain/__init__.py`` (the public API: lazy names over every stage), ``xplain/__main__.py`` and
``xplain/testing.py`` (helpers for tests and plugin authors) stand above the pipeline and are
not checked for layering.

:data:`ALLOWED_UPWARD` is the explicit allowlist of imports into a later stage, each with its
reason; an entry that no longer occurs fails too, so the list cannot go stale.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "xplain"
STAGES = ["onnx", "graph", "data", "plugins", "run", "output", "cli"]
BASE = {"xplain.errors", "xplain.untrusted", "xplain.fileio"}
ABOVE = {"xplain", "xplain.__main__", "xplain.testing"}

#: (importer, imported) → why the earlier stage may import the later one
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("xplain.run.evaluation", "xplain.output.plots"): (
        "evaluate/summarize drive every stage of an evaluation, the last being its pictures"
    ),
    ("xplain.run.evaluation", "xplain.output.report"): (
        "evaluate/summarize end by writing report.html, as the CLI and the Python API promise"
    ),
    ("xplain.run.explaining", "xplain.output.render"): (
        "explain_files writes each map's heatmap and overlay as it is computed, so memory "
        "stays one batch however many images are explained"
    ),
    ("xplain.run.explaining", "xplain.output.schemes"): (
        "explain_files draws each method's maps in one colour scheme per call, decided as the "
        "maps are written (as above)"
    ),
    ("xplain.graph.model", "xplain.data.preprocessing"): (
        "Model.preprocess is the public way to turn a photo into the model's input (issue 26): "
        "a lazy import of the image pipeline, which itself reads only the model's spec and sidecar"
    ),
    ("xplain.run.explaining", "xplain.output.panel"): (
        "explain_files writes the side-by-side panel of an image with its maps, as above"
    ),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _import_time_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes that run when the module is imported: everything outside function
    bodies (class bodies run at import) and outside a module-level ``if TYPE_CHECKING:``."""
    seen: set[int] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        seen.add(id(node))
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return seen


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """(imported xplain module, at module level?, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    at_import = _import_time_nodes(tree)
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import mod` imports the submodule pkg.mod when there is one
            targets = [
                f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin
                for a in node.names
            ]
        for target in targets:
            if target == "xplain" or target.startswith("xplain."):
                while target not in modules:  # `import xplain.x.y` of a name, not a module
                    target = target.rpartition(".")[0]
                found.append((target, id(node) in at_import, node.lineno))
    return found


def _stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, bool, int]]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_graph_is_computed_from_the_source(graph):
    """The test sees the package: every stage is there, and known edges are found (a parser
    that found nothing would pass every check below)."""
    assert {m.split(".")[1] for m in graph if m.count(".") >= 1} >= set(STAGES)
    assert ("xplain.run.scoring", True) in {
        (t, top) for t, top, _ in graph["xplain.run.evaluation"]
    }
    lazy = {t for t, top, _ in graph["xplain.run.evaluation"] if not top}
    assert "xplain.run.ray_engine" in lazy  # function-level imports are seen too


def _cycles(edges: dict[str, list[str]]) -> list[str]:
    """Every cycle a depth-first walk of ``edges`` closes, as ``a → b → a``."""
    cycles: list[str] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in edges.get(m, []):
            if state.get(t) == 1:
                cycles.append(" → ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return cycles


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a → b → c → a"]
    assert _cycles({"a": ["b", "c"], "b": ["c"], "c": []}) == []


def test_no_import_cycle(graph):
    edges = {m: sorted({t for t, top, _ in imps if top and t != m}) for m, imps in graph.items()}
    cycles = _cycles(edges)
    assert not cycles, "import cycles (module-level imports):\n" + "\n".join(cycles)


def test_no_import_into_a_later_stage(graph):
    wrong: list[str] = []
    used = set()
    for module, imports in sorted(graph.items()):
        if module in ABOVE:
            continue
        for target, _top, line in imports:
            if module in BASE and target not in BASE:
                wrong.append(f"{module}:{line} (base) imports {target}")
                continue
            here, there = _stage(module), _stage(target)
            if here is None or there is None or there <= here:
                continue
            if (module, target) in ALLOWED_UPWARD:
                used.add((module, target))
                continue
            line_text = f"{module}:{line} ({STAGES[here]}) imports {target} ({STAGES[there]})"
            if line_text not in wrong:
                wrong.append(line_text)
    assert not wrong, "imports into a later pipeline stage:\n" + "\n".join(wrong)
    assert used == set(ALLOWED_UPWARD), f"stale allowlist entries: {set(ALLOWED_UPWARD) - used}"


def test_modules_stay_small():
    """No module of the CLI, run and output stages over 600 lines (issue 20)."""
    long = [
        f"{p.relative_to(PACKAGE.parent)}: {n} lines"
        for stage in ("cli", "run", "output")
        for p in sorted((PACKAGE / stage).glob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600
    ]
    assert not long, "\n".join(long)
