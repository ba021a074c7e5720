"""Evaluation protocols: a published study's methods × metrics as a data file, and its
aggregation (issue 23).

A protocol is JSON (shipped ones in ``xplain/data/protocols/``, e.g. ``latec``; or a user's
file via ``--protocol FILE``)::

    {"name": ..., "description": ..., "source": ..., "criteria": ["faithfulness", ...],
     "methods": [{"name": "gradcam", "method": "grad-cam", "params": {...}}, {"name": "lime",
                  "missing": "why"}, ...],
     "metrics": [{"name": "irof", "metric": "irof", "criterion": "faithfulness",
                  "params": {...}}, ...]}

An entry either names the xplain plugin that runs it (``method`` / ``metric``, with optional
``params`` and ``note``) or says why it is ``missing``: nothing of a protocol is skipped
silently. The run itself is an ordinary ``xplain eval`` (so resume, shards and Ray are
unchanged); :func:`aggregate` then reads the records and computes the protocol's summary:
the median per method × metric (LATEC), each metric's ranking of the methods (1 = best, in the
metric's own direction, ties averaged), the mean rank per criterion and overall, and the
meta-evaluation: for each pair of metrics, Kendall's τ-b between their rankings of the methods
(1 = the two metrics order the methods identically, -1 = reversed).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..plugins.registry import Registry

PROTOCOL_DIR = Path(__file__).resolve().parent.parent / "data" / "protocols"
_TOP = {"name", "description", "source", "criteria", "methods", "metrics"}
_METHOD = {"name", "method", "params", "note", "missing"}
_METRIC = {"name", "metric", "params", "note", "missing", "criterion"}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One method or metric of a protocol: ``plugin`` runs it, or ``missing`` says why not."""

    name: str
    plugin: str | None
    params: dict[str, Any]
    note: str = ""
    missing: str = ""
    criterion: str = ""


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    source: str
    criteria: tuple[str, ...]
    methods: tuple[Entry, ...]
    metrics: tuple[Entry, ...]
    path: str

    def runnable_methods(self) -> list[Entry]:
        return [m for m in self.methods if m.plugin]

    def runnable_metrics(self) -> list[Entry]:
        return [m for m in self.metrics if m.plugin]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "criteria": list(self.criteria),
            "methods": [dataclasses.asdict(m) for m in self.methods],
            "metrics": [dataclasses.asdict(m) for m in self.metrics],
            "path": self.path,
        }


def known_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.json"))


def _fail(where: str, message: str) -> UsageError:
    from ..untrusted import printable

    return UsageError(f"protocol {printable(where)}: {message}")


def load_protocol(spec: str, registry: Registry) -> Protocol:
    """The protocol named ``spec`` (shipped) or read from the file ``spec``; every problem is
    one line naming the file and the entry (exit 2)."""
    from ..untrusted import parse_json, require_regular_file

    path = PROTOCOL_DIR / f"{spec}.json" if spec in known_protocols() else Path(spec)
    if not path.exists():
        raise UsageError(
            f"unknown protocol {spec!r}: known ones are {', '.join(known_protocols())}, "
            "or give a protocol file (JSON)"
        )
    where = str(path) if path.parent != PROTOCOL_DIR else spec

    def error(message, path=None):
        return _fail(where, message)

    size = require_regular_file(path, error, "protocol file")
    if size > 1_000_000:
        raise _fail(where, f"{size} bytes; a protocol file is at most 1 MB")
    data = parse_json(path.read_bytes(), where, error, "protocol")
    if not isinstance(data, dict):
        raise _fail(where, "expected a JSON object")
    _keys(data, _TOP, where, "the top level")
    criteria = data.get("criteria", [])
    if not isinstance(criteria, list) or not all(isinstance(c, str) for c in criteria):
        raise _fail(where, "'criteria' must be a list of names")
    methods = _entries(data.get("methods"), "methods", _METHOD, where, registry.methods, criteria)
    metrics = _entries(data.get("metrics"), "metrics", _METRIC, where, registry.metrics, criteria)
    if not any(m.plugin for m in methods) or not any(m.plugin for m in metrics):
        raise _fail(where, "needs at least one runnable method and one runnable metric")
    for kind, entries, lookup in (
        ("method", methods, registry.method),
        ("metric", metrics, registry.metric),
    ):
        from ..plugins.registry import validate_params

        for e in entries:
            if e.plugin:
                validate_params(
                    lookup(e.plugin).params, e.params, f"protocol {where}: {kind} {e.plugin!r}"
                )
    return Protocol(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", "")),
        source=str(data.get("source", "")),
        criteria=tuple(criteria),
        methods=tuple(methods),
        metrics=tuple(metrics),
        path=str(path),
    )


def _keys(obj: dict, allowed: set[str], where: str, what: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _fail(
            where,
            f"{what}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})",
        )


def _entries(items, kind, allowed, where, available, criteria) -> list[Entry]:
    if not isinstance(items, list) or not items:
        raise _fail(where, f"'{kind}' must be a non-empty list")
    plugin_key = kind[:-1]  # "method" / "metric"
    out: list[Entry] = []
    for i, item in enumerate(items):
        at = f"{kind}[{i}]"
        if not isinstance(item, dict):
            raise _fail(where, f"{at}: expected an object")
        _keys(item, allowed, where, at)
        name = item.get("name", item.get(plugin_key))
        if not isinstance(name, str) or not name:
            raise _fail(where, f"{at}: needs a 'name'")
        plugin = item.get(plugin_key)
        missing = item.get("missing", "")
        if plugin is None and not missing:
            raise _fail(where, f"{at} ({name}): give '{plugin_key}' or say why it is 'missing'")
        if plugin is not None and plugin not in available:
            raise _fail(
                where,
                f"{at} ({name}): unknown {plugin_key} {plugin!r}; known {plugin_key}s: "
                f"{', '.join(sorted(available))}",
            )
        params = item.get("params", {})
        if not isinstance(params, dict):
            raise _fail(where, f"{at} ({name}): 'params' must be an object")
        criterion = item.get("criterion", "")
        if kind == "metrics" and criteria and criterion not in criteria:
            raise _fail(
                where,
                f"{at} ({name}): criterion {criterion!r} is not one of {', '.join(criteria)}",
            )
        out.append(
            Entry(
                name=name,
                plugin=plugin,
                params={str(k): v for k, v in params.items()},
                note=str(item.get("note", "")),
                missing=str(missing) if plugin is None else "",
                criterion=str(criterion),
            )
        )
    plugins = [e.plugin for e in out if e.plugin]
    for p in plugins:
        if plugins.count(p) > 1 and kind == "methods":
            raise _fail(where, f"method {p!r} is listed twice")
    return out


def split_applicable(protocol: Protocol, model: Any, registry: Registry):
    """(runnable method entries, [(entry, reason)] the model cannot run: a rectifier method on a
    ViT, attention methods on a CNN …), from the methods' declared requirements."""
    ok, refused = [], []
    for e in protocol.runnable_methods():
        method = registry.method(str(e.plugin))
        problems = [
            model.requirement_problem(r)
            for r in getattr(method.capabilities, "requires", ())
            if model.requirement_problem(r)
        ]
        if problems:
            need = next(r for r in method.capabilities.requires if model.requirement_problem(r))
            refused.append((e, f"needs {need}; this model {problems[0]}"))
        else:
            ok.append(e)
    return ok, refused


# ----------------------------------------------------------------------------- aggregation
def _median(values: list[float]) -> float:
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return float("nan")
    n = len(vals)
    mid = n // 2
    return vals[mid] if n % 2 else (vals[mid - 1] + vals[mid]) / 2


def average_ranks(values: dict[str, float], higher_is_better: bool) -> dict[str, float]:
    """Rank 1 = best; ties share their average rank; NaN values get no rank."""
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    order = sorted(finite, key=lambda k: -finite[k] if higher_is_better else finite[k])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and finite[order[j + 1]] == finite[order[i]]:
            j += 1
        for k in order[i : j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's τ-b of two equally long lists (ties corrected); NaN for fewer than 2 pairs or
    a constant list (as scipy.stats.kendalltau)."""
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                ties_x += 1
                ties_y += 1
            elif dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    pairs = n * (n - 1) / 2
    denom = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    return (concordant - discordant) / denom if denom > 0 else float("nan")


def aggregate(records: list[dict], protocol: Protocol, registry: Registry, refused=()) -> dict:
    """The protocol's summary from eval records (one per image × method)."""
    methods = [str(e.plugin) for e in protocol.runnable_methods()]
    methods = [m for m in methods if m not in {str(e.plugin) for e, _ in refused}]
    metrics = [e for e in protocol.runnable_metrics()]
    scores: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    for r in records:
        if r.get("method") in scores and isinstance(r.get("scores"), dict):
            for k, v in r["scores"].items():
                if isinstance(v, (int, float)):
                    scores[r["method"]].setdefault(k, []).append(float(v))
    medians: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    ranks: dict[str, dict[str, float]] = {}
    for e in metrics:
        key = str(e.plugin)
        col = {m: _median(scores[m].get(key, [])) for m in methods}
        medians[e.name] = col
        counts[e.name] = {
            m: sum(1 for v in scores[m].get(key, []) if math.isfinite(v)) for m in methods
        }
        ranks[e.name] = average_ranks(col, registry.metric(key).higher_is_better_for(key))
    criteria = list(protocol.criteria) or sorted({e.criterion for e in metrics})
    per_criterion: dict[str, dict[str, float]] = {}
    for c in criteria:
        names = [e.name for e in metrics if e.criterion == c]
        per_criterion[c] = {}
        for m in methods:
            rs = [ranks[n][m] for n in names if m in ranks[n]]
            per_criterion[c][m] = sum(rs) / len(rs) if rs else float("nan")
    overall = {}
    for m in methods:
        vals = [per_criterion[c][m] for c in criteria if math.isfinite(per_criterion[c][m])]
        overall[m] = sum(vals) / len(vals) if vals else float("nan")
    agreement: dict[str, dict[str, float]] = {}
    scored = [e.name for e in metrics if len(ranks[e.name]) >= 2]
    for a in scored:
        agreement[a] = {}
        for b in scored:
            common = [m for m in methods if m in ranks[a] and m in ranks[b]]
            agreement[a][b] = kendall_tau_b(
                [ranks[a][m] for m in common], [ranks[b][m] for m in common]
            )
    return {
        "protocol": protocol.name,
        "source": protocol.source,
        "methods": methods,
        "metrics": [e.name for e in metrics],
        "criteria": criteria,
        "criterion_of": {e.name: e.criterion for e in metrics},
        "metric_plugin": {e.name: e.plugin for e in metrics},
        "median": medians,
        "count": counts,
        "rank": ranks,
        "criterion_rank": per_criterion,
        "overall_rank": overall,
        "agreement": agreement,
        "missing_methods": {e.name: e.missing for e in protocol.methods if not e.plugin},
        "missing_metrics": {e.name: e.missing for e in protocol.metrics if not e.plugin},
        "not_applicable": {str(e.plugin): reason for e, reason in refused},
        "notes": {e.name: e.note for e in (*protocol.methods, *protocol.metrics) if e.note},
    }


def _fmt(v: float, digits: int = 3) -> str:
    return "—" if not math.isfinite(v) else f"{v:.{digits}g}"


def markdown(result: dict) -> str:
    """protocol.md: the ranking table, the medians, the metric agreement and what is missing."""
    methods, criteria = result["methods"], result["criteria"]
    order = sorted(
        methods,
        key=lambda m: (not math.isfinite(result["overall_rank"][m]), result["overall_rank"][m]),
    )
    lines = [f"# Protocol {result['protocol']}", "", result.get("source", ""), ""]
    lines += ["## Mean rank per criterion (1 = best)", ""]
    lines.append("| method | " + " | ".join(criteria) + " | overall |")
    lines.append("|---" * (len(criteria) + 2) + "|")
    for m in order:
        cells = [_fmt(result["criterion_rank"][c][m], 3) for c in criteria]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_fmt(result['overall_rank'][m])} |")
    lines += ["", "## Median per method × metric", ""]
    lines.append("| metric | criterion | " + " | ".join(order) + " |")
    lines.append("|---" * (len(order) + 2) + "|")
    for name in result["metrics"]:
        cells = [_fmt(result["median"][name][m], 4) for m in order]
        lines.append(f"| {name} | {result['criterion_of'][name]} | " + " | ".join(cells) + " |")
    names = list(result["agreement"])
    if names:
        lines += ["", "## Metric agreement (Kendall τ-b between the metrics' method rankings)", ""]
        lines.append("| | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for a in names:
            lines.append(
                f"| {a} | " + " | ".join(_fmt(result["agreement"][a][b], 2) for b in names) + " |"
            )
    for title, key in (
        ("Methods of the protocol xplain does not have", "missing_methods"),
        ("Metrics of the protocol xplain does not have", "missing_metrics"),
        ("Methods this model cannot run (not applicable)", "not_applicable"),
        ("Notes", "notes"),
    ):
        if result.get(key):
            lines += ["", f"## {title}", ""]
            lines += [f"- {k}: {v}" for k, v in result[key].items()]
    return "\n".join(lines) + "\n"


def write(out: Path, result: dict) -> None:
    from ..fileio import atomic_write

    atomic_write(out / "protocol.json", json.dumps(result, indent=2, allow_nan=True).encode())
    atomic_write(out / "protocol.md", markdown(result).encode())


# ----------------------------------------------------------------------------- the eval run
PLAN = "protocol-plan.json"


def cli_plan(spec: str, methods: str, metrics: str, registry: Registry):
    """``--protocol SPEC``: (protocol, method names, metric names, method params, metric params)
    with the protocol's parameters as the defaults that ``--param`` / ``--metric-param``
    override."""
    if methods.strip() or metrics.strip():
        raise UsageError("--protocol sets the methods and metrics; leave out --methods/--metrics")
    protocol = load_protocol(spec, registry)
    method_params = {str(e.plugin): dict(e.params) for e in protocol.runnable_methods()}
    metric_params: dict[str, dict[str, Any]] = {}
    for e in protocol.runnable_metrics():  # a metric listed twice (deletion): first params win
        metric_params.setdefault(str(e.plugin), dict(e.params))
    return protocol, list(method_params), list(metric_params), method_params, metric_params


def merged(protocol_params: dict, given: dict) -> dict:
    return {k: {**protocol_params.get(k, {}), **given.get(k, {})} for k in protocol_params}


def write_plan(out: Path, protocol: Protocol, refused) -> None:
    """OUT/protocol-plan.json: what ``finish`` needs after the run (and after the shards)."""
    from ..fileio import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    plan = {
        "protocol": protocol.to_dict(),
        "not_applicable": {str(e.plugin): r for e, r in refused},
    }
    atomic_write(out / PLAN, json.dumps(plan, indent=2).encode())


def _from_dict(d: dict) -> Protocol:
    def entries(items):
        return tuple(Entry(**item) for item in items)

    return Protocol(
        name=d["name"],
        description=d["description"],
        source=d["source"],
        criteria=tuple(d["criteria"]),
        methods=entries(d["methods"]),
        metrics=entries(d["metrics"]),
        path=d["path"],
    )


def finish(out: Path, registry: Registry) -> dict | None:
    """Aggregate every results file of OUT by the run's protocol (None without one); writes
    OUT/protocol.json and OUT/protocol.md."""
    from ..untrusted import parse_json
    from .dataset_stage import overlay, read_dataset_scores
    from .records import read_results

    plan_path = Path(out) / PLAN
    if not plan_path.is_file():
        return None

    def error(message, path=None):
        return UsageError(f"{plan_path}: {message}")

    plan = parse_json(plan_path.read_bytes(), plan_path, error, "protocol plan")
    protocol = _from_dict(plan["protocol"])
    refused = [
        (e, plan["not_applicable"][str(e.plugin)])
        for e in protocol.runnable_methods()
        if str(e.plugin) in plan.get("not_applicable", {})
    ]
    records: list[dict] = []
    for path in sorted(Path(out).glob("results*.jsonl")):
        records.extend(read_results(path))
    records = list(overlay(records, read_dataset_scores(Path(out))))
    result = aggregate(records, protocol, registry, refused)
    write(Path(out), result)
    return result


def ranking_lines(result: dict) -> list[str]:
    """A short text summary for the terminal: the ranking and what was not run."""
    crit = result["criteria"]
    order = sorted(
        result["methods"],
        key=lambda m: (not math.isfinite(result["overall_rank"][m]), result["overall_rank"][m]),
    )
    width = max([len(m) for m in order] + [6])
    lines = [
        f"protocol {result['protocol']}: mean rank per criterion (1 = best; medians per method x "
        "metric, ranks per metric)",
        "method".ljust(width) + "".join(f"  {c[:12]:>12}" for c in crit) + "       overall",
    ]
    for m in order:
        cells = "".join(f"  {_fmt(result['criterion_rank'][c][m]):>12}" for c in crit)
        lines.append(m.ljust(width) + cells + f"  {_fmt(result['overall_rank'][m]):>12}")
    taus = [
        (result["agreement"][a][b], a, b)
        for i, a in enumerate(result["agreement"])
        for b in list(result["agreement"])[i + 1 :]
        if math.isfinite(result["agreement"][a][b])
    ]
    if taus:
        lo = min(taus)
        lines.append(
            f"metric agreement (Kendall tau-b over methods): {len(taus)} pairs, mean "
            f"{sum(t for t, _, _ in taus) / len(taus):.2f}; most opposed: {lo[1]} vs {lo[2]} "
            f"({lo[0]:.2f}) — protocol.md"
        )
    for title, key in (
        ("not applicable to this model", "not_applicable"),
        ("methods not in xplain", "missing_methods"),
        ("metrics not in xplain", "missing_metrics"),
    ):
        if result.get(key):
            lines.append(f"{len(result[key])} {title}: {', '.join(result[key])}")
    return lines
