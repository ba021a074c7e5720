"""Model coverage: export real classifier families with both torch exporters, load, verify, explain.

Every torchvision classification family and a representative set of timm families (random
weights: nothing is downloaded) is exported with torch's default exporter
(``torch.onnx.export(dynamo=True)``) and the classic TorchScript exporter (``dynamo=False``,
opset 17), with a dynamic batch axis (a static batch of 1 when the exporter refuses the dynamic
one, recorded). Each file is then loaded with :func:`xplain.load_model` (which verifies it
against onnxruntime) and every installed method is run once on a random input; its success or
its one-line refusal/error is recorded.

Each (model, exporter) pair runs in its own subprocess under a wall-clock timeout and an
address-space limit, so one crash, hang or out-of-memory cannot stop the run. Records are written
stage by stage to ``OUT/records/MODEL__EXPORTER.json``; a rerun skips pairs already recorded
(``--retry-failed`` reruns the ones that did not load/verify or ran out of time, reusing the
exported file kept for them). ``OUT/coverage.json`` holds every record and ``OUT/coverage.md``
the table that goes into docs/coverage.md (`--readme docs/coverage.md`).

    OMP_NUM_THREADS=2 nohup python bench/coverage.py --out bench/coverage &
    python bench/coverage.py --families vit,swin --retry-failed
    python bench/coverage.py --families inception_v3 --methods none --rerun  # re-verify
    python bench/coverage.py --table-only           # rebuild the table from the records
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

EXPORTERS = ("dynamo", "classic")
CLASSIC_OPSET = 17
#: the methods every row must show; the others run in a second pass (--methods all)
CORE_METHODS = ("gradient", "grad-cam", "integrated-gradients")


class _MethodTimeout(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Entry:
    family: str
    source: str  #: torchvision | timm
    name: str  #: the constructor name
    size: int  #: square input side the model is exported at
    default: bool = True  #: in the default run (False: only with --all)


def _tv(family: str, name: str, size: int = 224, default: bool = True) -> Entry:
    return Entry(family, "torchvision", name, size, default)


def _timm(family: str, name: str, size: int = 224, default: bool = True) -> Entry:
    return Entry(family, "timm", name, size, default)


#: one representative per family runs by default; --all adds the other sizes named in the issue.
#: Sizes are the models' native evaluation resolutions.
MODELS: list[Entry] = [
    _tv("alexnet", "alexnet"),
    _tv("vgg", "vgg16"),
    _tv("resnet", "resnet50"),
    _tv("resnext", "resnext50_32x4d"),
    _tv("wide_resnet", "wide_resnet50_2"),
    _tv("densenet", "densenet121"),
    _tv("inception_v3", "inception_v3", 299),
    _tv("googlenet", "googlenet"),
    _tv("mobilenet_v2", "mobilenet_v2"),
    _tv("mobilenet_v3", "mobilenet_v3_large"),
    _tv("mnasnet", "mnasnet1_0"),
    _tv("shufflenet_v2", "shufflenet_v2_x1_0"),
    _tv("squeezenet", "squeezenet1_1"),
    _tv("efficientnet", "efficientnet_b0"),
    *[
        _tv("efficientnet", f"efficientnet_b{i}", s, default=False)
        for i, s in ((1, 240), (2, 288), (3, 300), (4, 380), (5, 456), (6, 528))
    ],
    _tv("efficientnet", "efficientnet_b7", 600),
    _tv("efficientnet_v2", "efficientnet_v2_s", 384),
    _tv("regnet_x", "regnet_x_400mf"),
    _tv("regnet_y", "regnet_y_400mf"),
    _tv("convnext", "convnext_tiny"),
    _tv("vit", "vit_b_16"),
    _tv("swin", "swin_t"),
    _tv("swin_v2", "swin_v2_t", 256),
    _tv("maxvit", "maxvit_t"),
    _timm("deit", "deit_tiny_patch16_224"),
    _timm("beit", "beit_base_patch16_224"),
    _timm("eva", "eva02_tiny_patch14_224"),
    _timm("convnext_v2", "convnextv2_atto"),
    _timm("coatnet", "coatnet_nano_rw_224"),
    _timm("efficientformer", "efficientformer_l1"),
    _timm("levit", "levit_128s"),
    _timm("mobilevit", "mobilevit_xxs", 256),
    _timm("resnetv2", "resnetv2_50x1_bit"),
    _timm("regnetz", "regnetz_b16"),
]

#: cheap settings so every method runs once per model in bounded time (correctness, not quality)
FAST_PARAMS: dict[str, dict] = {
    "integrated-gradients": {"steps": 4},
    "smoothgrad": {"samples": 2},
    "occlusion": {"patch": 0, "stride": 0},  # filled per model: a 3×3 grid of windows
    "iba": {"steps": 3, "batch_size": 4, "fallback_copies": 4},
    "input-iba": {
        "steps": 2,
        "batch_size": 2,
        "fallback_copies": 4,
        "gan_epochs": 1,
        "gan_dataset": 8,
        "gan_batch": 4,
    },
}


# ----------------------------------------------------------------------------- worker
def _one_line(err: BaseException) -> str:
    """The error's first line — for torch's exporter, the line under its "Exception summary"."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1 :]
        if after:
            return f"{type(err).__name__}: {after[0][:300]}"
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def _build(entry: Entry):
    """The model with random weights; weight matrices initialised to zero (torchvision's ViT
    head, ...) get small random values, so logits and gradients are not identically zero."""
    import torch

    torch.manual_seed(0)
    if entry.source == "torchvision":
        import torchvision

        model = torchvision.models.get_model(entry.name, weights=None)
    else:
        import timm

        model = timm.create_model(entry.name, pretrained=False)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2 and not param.any():
                param.normal_(0.0, 0.02)
    return model.eval()


def _export(entry: Entry, exporter: str, path: Path, record: dict) -> None:
    """Export with a dynamic batch axis; on failure retry with a static batch of 1."""
    from xplain.onnx.export import export_classifier

    module = _build(entry)
    errors = []
    for dynamic in (True, False):
        started = time.perf_counter()
        try:
            export_classifier(
                module, path, (3, entry.size, entry.size), exporter, dynamic, CLASSIC_OPSET
            )
        except Exception as err:  # noqa: BLE001 - the exporter raises anything
            errors.append(("dynamic" if dynamic else "static") + " batch: " + _one_line(err))
            continue
        import onnx

        batch = (
            onnx.load(str(path), load_external_data=False)
            .graph.input[0]
            .type.tensor_type.shape.dim[0]
        )
        record["export"] = {
            "ok": True,
            "dynamic_batch": dynamic and not batch.HasField("dim_value"),
            "seconds": round(time.perf_counter() - started, 1),
            "errors": errors,
        }
        return
    record["export"] = {"ok": False, "errors": errors}


def _method_params(name: str, size: int) -> dict:
    params = dict(FAST_PARAMS.get(name, {}))
    if name == "occlusion":
        params = {"patch": max(1, size // 3), "stride": max(1, size // 3)}
    return params


def _alarm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _MethodTimeout()


def worker(entry: Entry, exporter: str, out: Path, methods: str, method_timeout: int) -> None:
    """Export (unless a kept file exists), load, verify and explain one model; write the record.

    ``methods``: ``core`` (:data:`CORE_METHODS`), ``all`` or comma-separated names; results of
    methods not asked for this time are kept from the previous record."""
    import signal

    import torch

    torch.manual_seed(0)
    records, files = out / "records", out / "onnx"
    records.mkdir(parents=True, exist_ok=True)
    files.mkdir(parents=True, exist_ok=True)
    key = f"{entry.name}__{exporter}"
    record_path = records / f"{key}.json"
    previous = json.loads(record_path.read_text()) if record_path.exists() else {}
    record = {
        "family": entry.family,
        "source": entry.source,
        "model": entry.name,
        "exporter": exporter,
        "size": entry.size,
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = files / f"{key}.onnx"

    def save() -> None:
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(record_path)

    if path.exists() and previous.get("export", {}).get("ok"):
        record["export"] = previous["export"]
        record["export"]["reused"] = True
    else:
        try:
            _export(entry, exporter, path, record)
        except Exception as err:  # noqa: BLE001 - building the model itself failed (timm missing, ...)
            record["export"] = {"ok": False, "errors": [_one_line(err)]}
    save()
    if not record["export"]["ok"]:
        record["status"] = "export failed"
        save()
        return

    import xplain
    from xplain.plugins.registry import get_registry, validate_params
    from xplain.run.api import run_method

    started = time.perf_counter()
    try:
        model = xplain.load_model(path, device="cpu")
    except xplain.XplainError as err:
        record["load"] = {"ok": False, "error": str(err).splitlines()[0][:400]}
        # a mismatch is still worth knowing about: how far off, and do the methods run?
        record["status"] = "load failed"
        save()
        return
    report = model.report
    record["load"] = {
        "ok": True,
        "seconds": round(time.perf_counter() - started, 1),
        "verified": report.verified,
        "max_abs_diff": report.max_abs_diff,
        "max_rel_diff": report.max_rel_diff,
        "batch_checked": report.batch_checked,
        "opset": report.opset,
        "opset_used": report.opset_used,
        "notes": [n for n in report.notes if n],
    }
    record["methods"] = dict(previous.get("methods", {}))
    save()

    registry = get_registry()
    x = model.example_input(1, seed=1)
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    if methods == "none":
        names = []
    elif methods == "core":
        names = [n for n in CORE_METHODS if n in registry.methods]
    elif methods == "all":
        names = [n for n in CORE_METHODS if n in registry.methods]
        names += sorted(n for n in registry.methods if n not in names)
    else:
        names = [n.strip() for n in methods.split(",") if n.strip() in registry.methods]
    signal.signal(signal.SIGALRM, _alarm)
    for name in names:
        method = registry.methods[name]
        if method.capabilities.needs_fitting:
            record["methods"][name] = {
                "ok": False,
                "kind": "needs fit",
                "message": f"needs `xplain fit {name}` on a data set first",
            }
            save()
            continue
        started = time.perf_counter()
        signal.alarm(method_timeout)
        try:
            values = validate_params(method.params, _method_params(name, entry.size), name)
            attribution = run_method(model, method, x, target, values, seed=0)
            nonzero = bool(attribution.maps.abs().sum() > 0)
            record["methods"][name] = {
                "ok": True,
                "seconds": round(time.perf_counter() - started, 2),
                "nonzero": nonzero,
            }
        except _MethodTimeout:
            record["methods"][name] = {
                "ok": False,
                "kind": "timeout",
                "message": f"did not finish in {method_timeout} s on the shared CPU",
            }
        except xplain.XplainError as err:
            kind = "refused" if type(err).__name__ in ("UsageError", "ModelError") else "error"
            record["methods"][name] = {
                "ok": False,
                "kind": kind,
                "message": str(err).splitlines()[0][:300],
            }
        except Exception as err:  # noqa: BLE001 - out of memory and other crashes are recorded
            record["methods"][name] = {"ok": False, "kind": "error", "message": _one_line(err)}
        finally:
            signal.alarm(0)
        save()
    record["status"] = "done"
    save()


# ----------------------------------------------------------------------------- driver
def _limit_memory(gigabytes: float):
    def apply() -> None:
        limit = int(gigabytes * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _needs_run(
    record: dict | None, retry_failed: bool, wanted: list[str], rerun: bool = False
) -> bool:
    if record is None or rerun:
        return True
    if record.get("load", {}).get("ok") and any(n not in record.get("methods", {}) for n in wanted):
        return True
    if not retry_failed:
        return False
    if record.get("status") != "done":
        return True
    return not record.get("load", {}).get("verified", False)


def _wanted_methods(methods: str) -> list[str]:
    if methods == "none":
        return []
    if methods == "core":
        return list(CORE_METHODS)
    if methods == "all":
        from xplain.plugins.registry import get_registry

        return sorted(get_registry().methods)
    return [n.strip() for n in methods.split(",") if n.strip()]


def drive(
    entries: list[Entry],
    exporters: list[str],
    out: Path,
    timeout: float,
    mem_gb: float,
    retry_failed: bool,
    methods: str,
    method_timeout: int,
    rerun: bool = False,
) -> None:
    wanted = _wanted_methods(methods)
    records = out / "records"
    records.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        for exporter in exporters:
            path = records / f"{entry.name}__{exporter}.json"
            record = json.loads(path.read_text()) if path.exists() else None
            if not _needs_run(record, retry_failed, wanted, rerun):
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {entry.name} / {exporter} …", flush=True)
            started = time.perf_counter()
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                entry.name,
                exporter,
                "--out",
                str(out),
                "--methods",
                methods,
                "--method-timeout",
                str(method_timeout),
            ]
            try:
                proc = subprocess.run(
                    cmd,
                    timeout=timeout,
                    preexec_fn=_limit_memory(mem_gb),
                    capture_output=True,
                    text=True,
                )
                tail = (proc.stderr or "").strip().splitlines()[-1:] if proc.returncode else []
                outcome = f"exit {proc.returncode}" + (f": {tail[0][:300]}" if tail else "")
            except subprocess.TimeoutExpired:
                outcome = f"timeout after {timeout:.0f} s"
            record = (
                json.loads(path.read_text())
                if path.exists()
                else {
                    "family": entry.family,
                    "source": entry.source,
                    "model": entry.name,
                    "exporter": exporter,
                    "size": entry.size,
                    "export": {"ok": False, "errors": []},
                }
            )
            if record.get("status") != "done" and not outcome.startswith("exit 0"):
                record["status"] = f"{record.get('status', 'running')} ({outcome})"
                record["crash"] = outcome
                path.write_text(json.dumps(record, indent=1))
            print(f"    {record.get('status')}  {time.perf_counter() - started:.0f} s", flush=True)
            write_outputs(out)
    write_outputs(out)


# ----------------------------------------------------------------------------- table
def _export_cell(record: dict) -> str:
    export = record.get("export", {})
    if not export.get("ok"):
        errors = export.get("errors") or [record.get("crash", "not run")]
        return "failed: " + _md(errors[-1], 140)
    return "ok" if export.get("dynamic_batch") else "static batch¹"


def _md(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def _verified_cell(load: dict) -> str:
    """``yes (max |diff|)``, with the difference relative to the logits' scale beside it when the
    logits exceed 10 — random-weight Inception v3 has logits near 1e12, where float32 alone
    differs by ~5e5 (5e-7 of the scale). Below 10 the two figures differ too little to matter."""
    diff, rel = load.get("max_abs_diff"), load.get("max_rel_diff")
    if not load.get("verified") or diff is None:
        return "no"
    if rel is not None and rel * 10 < diff:
        return f"yes ({diff:.1e}; {rel:.1e} relative²)"
    return f"yes ({diff:.1e})"


def _row(record: dict) -> list[str]:
    load = record.get("load")
    if not record.get("export", {}).get("ok"):
        loads, verified = "–", "–"
    elif load is None:
        loads, verified = _md(record.get("crash", "not finished")), "–"
    elif not load.get("ok"):
        loads, verified = "no: " + _md(load.get("error", ""), 160), "–"
    else:
        loads = "yes"
        verified = _verified_cell(load)
    methods = record.get("methods", {})
    ran = sorted(n for n, m in methods.items() if m.get("ok"))
    refused = sorted(
        (n, m) for n, m in methods.items() if not m.get("ok") and m.get("kind") != "needs fit"
    )
    ran_cell = f"{len(ran)}: " + ", ".join(ran) if ran else "–"
    if load and load.get("ok") and record.get("status") != "done":
        ran_cell += " (unfinished: " + _md(record.get("crash", record.get("status", "")), 60) + ")"
    refused_cell = (
        "; ".join(f"{n} ({m.get('kind')}: {_md(m.get('message', ''), 90)})" for n, m in refused)
        or "–"
    )
    return [
        record["family"],
        f"`{record['model']}`",
        record["exporter"],
        _export_cell(record),
        loads,
        verified,
        ran_cell,
        refused_cell,
    ]


def write_outputs(out: Path) -> dict:
    """Merge the records into coverage.json and render coverage.md."""
    order = {(e.name, x): i for i, (e, x) in enumerate((e, x) for e in MODELS for x in EXPORTERS)}
    records = []
    for path in sorted((out / "records").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    records.sort(key=lambda r: order.get((r.get("model"), r.get("exporter")), 10**6))
    seen = {(r.get("model"), r.get("exporter")) for r in records}
    missing = [
        {
            "family": e.family,
            "source": e.source,
            "model": e.name,
            "exporter": x,
            "size": e.size,
            "status": "not run",
        }
        for e in MODELS
        if e.default
        for x in EXPORTERS
        if (e.name, x) not in seen
    ]
    summary = {}
    for exporter in EXPORTERS:
        rows = [r for r in records if r.get("exporter") == exporter]
        summary[exporter] = {
            "rows": len(rows),
            "exported": sum(bool(r.get("export", {}).get("ok")) for r in rows),
            "loaded": sum(bool(r.get("load", {}).get("ok")) for r in rows),
            "verified": sum(bool(r.get("load", {}).get("verified")) for r in rows),
            "finished": sum(r.get("status") == "done" for r in rows),
        }
    data = {"summary": summary, "records": records}
    (out / "coverage.json").write_text(json.dumps(data, indent=1))
    lines = [
        "| family | model | exporter | export | loads | verified (max \\|diff\\|) | methods that ran | "
        "refused / failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        records + missing, key=lambda r: order.get((r.get("model"), r.get("exporter")), 10**6)
    ):
        if r.get("status") == "not run":
            lines.append(f"| {r['family']} | `{r['model']}` | {r['exporter']} | not run | | | | |")
        else:
            lines.append("| " + " | ".join(_row(r)) + " |")
    totals = "; ".join(
        f"{x}: {s['loaded']}/{s['rows']} rows run load, {s['verified']}/{s['rows']} verify"
        for x, s in summary.items()
        if s["rows"]
    )
    if missing:
        totals += f"; {len(missing)} rows not run"
    lines += [
        "",
        f"Totals — {totals}.",
        "¹ the exporter refused a dynamic batch axis; exported with a fixed batch of 1 (xplain then runs "
        "one sample at a time). Methods needing `xplain fit` (mip-in) are not run here.",
        "² max \\|diff\\| / max \\|logit\\|, shown where the logits exceed 10 (the loader requires "
        "≤ 1e-4 of that scale); random weights can give huge logits, and float32 arithmetic then "
        "differs by a huge absolute amount.",
    ]
    (out / "coverage.md").write_text("\n".join(lines) + "\n")
    return data


README_START, README_END = "<!-- coverage:start -->", "<!-- coverage:end -->"


def update_readme(readme: Path, table: Path) -> None:
    """Replace the text between the coverage markers of ``readme`` with ``table``."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme}: no {README_START} … {README_END} markers")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table.read_text().strip()}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "coverage")
    parser.add_argument(
        "--families", default="", help="comma-separated family or model names (default: all)"
    )
    parser.add_argument("--exporters", default=",".join(EXPORTERS))
    parser.add_argument("--all", action="store_true", help="every size of the multi-size families")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per (model, exporter)")
    parser.add_argument("--mem-gb", type=float, default=12, help="address-space limit per worker")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="load, verify and run the asked methods again for every selected row, reusing its "
        "kept export (method results not asked for are kept)",
    )
    parser.add_argument(
        "--methods",
        default="all",
        help="none (export, load and verify only), core (gradient, "
        "grad-cam, integrated-gradients), all, or comma-separated names",
    )
    parser.add_argument("--method-timeout", type=int, default=300, help="seconds per method")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also put the table into this page (docs/coverage.md), between the coverage markers",
    )
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "EXPORTER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        entry = next(e for e in MODELS if e.name == args.worker[0])
        try:
            worker(entry, args.worker[1], args.out, args.methods, args.method_timeout)
        except Exception:  # noqa: BLE001 - the driver records the last line
            traceback.print_exc()
            return 1
        return 0
    if args.table_only:
        print(json.dumps(write_outputs(args.out)["summary"], indent=1))
        if args.readme:
            update_readme(args.readme, args.out / "coverage.md")
        return 0
    wanted = [w.strip() for w in args.families.split(",") if w.strip()]
    if wanted:  # in the order given
        entries = [e for w in wanted for e in MODELS if w in (e.family, e.name)]
    else:
        entries = [e for e in MODELS if e.default or args.all]
    exporters = [x for x in args.exporters.split(",") if x in EXPORTERS]
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    drive(
        entries,
        exporters,
        args.out,
        args.timeout,
        args.mem_gb,
        args.retry_failed,
        args.methods,
        args.method_timeout,
        args.rerun,
    )
    if args.readme:
        update_readme(args.readme, args.out / "coverage.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
