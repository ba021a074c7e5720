"""torch.compile (inductor, CPU) on the converted graph, for the gradient family and TR-GBP (issue 21).

    python bench/compile.py [--model efficientnet_lite0] [--methods gradient,...] [--batch 2]
                            [--repeats 3] [--out DIR]

The model's forward (``Model.__call__``, which every method's ``model(x)`` goes through) is
replaced by ``torch.compile(model.graph)`` for the "compiled" runs; the methods are unchanged. For
each method: the compile time (first call minus a steady call), the steady-state time compiled and
eager in interleaved rounds (CPU time of the process), and the largest difference of the maps
(relative to the largest |map|). TR-GBP changes the graph's modules (its rules swap the
rectifiers), so dynamo sees new modules and recompiles, or gives up after its recompile limit:
the recompile count is reported. Nothing here is used by xplain unless the numbers justify it
(``docs/engines.md`` has the measurement and the decision).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import xplain
from xplain.run.reference_networks import bench_model_path

PARAMS = {
    "gradient": {},
    "integrated-gradients": {"steps": 8},
    "smoothgrad": {"samples": 8},
    "tr-gbp": {},
}


def log(*args) -> None:
    print(*args, flush=True)


def cpu_timed(fn) -> tuple[float, object]:
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


class _Compiled:
    """Swaps ``type(model).__call__`` for the compiled graph while active."""

    def __init__(self, model, compiled):
        self.model, self.compiled = model, compiled
        self.eager = type(model)

    def __enter__(self):
        compiled = self.compiled

        def call(_self, x):
            return compiled(x)

        self.model.__class__ = type("CompiledModel", (self.eager,), {"__call__": call})

    def __exit__(self, *exc):
        self.model.__class__ = self.eager


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--methods", default=",".join(PARAMS))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    out = a.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="xplain-compile-"))
    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    model = xplain.load_model(bench_model_path(a.model), engine="torch")
    x = model.example_input(a.batch, seed=0)
    with torch.no_grad():
        targets = model(x).argmax(1)
    report: dict = {"model": a.model, "batch": a.batch, "torch": torch.__version__, "rows": {}}
    from torch._dynamo.utils import counters

    for name in [m for m in a.methods.split(",") if m]:
        torch._dynamo.reset()
        counters.clear()
        params = PARAMS.get(name, {})

        def run(name=name, params=params):
            return xplain.explain(model, x, targets, name, params).maps

        compiled = torch.compile(model.graph, backend="inductor")
        row: dict = {"params": params}
        try:
            with _Compiled(model, compiled):
                first, maps_c = cpu_timed(run)
                steady_c = [cpu_timed(run)[0] for _ in range(1)]
            eager, compiled_t = [], steady_c
            for _ in range(a.repeats):
                eager.append(cpu_timed(run)[0])
                with _Compiled(model, compiled):
                    compiled_t.append(cpu_timed(run)[0])
            maps_e = run()
            e, c = statistics.median(eager), statistics.median(compiled_t)
            row.update(
                compile_seconds=first - c,
                eager_seconds=e,
                compiled_seconds=c,
                speedup=e / c,
                maps_max_rel_diff=float(
                    (maps_c - maps_e).abs().max() / maps_e.abs().max().clamp_min(1e-30)
                ),
                recompiles=int(sum(counters["stats"].get(k, 0) for k in ("unique_graphs",))),
                graph_breaks=int(sum(counters["graph_break"].values())),
            )
            log(
                f"{name}: eager {e:.2f} s, compiled {c:.2f} s ({row['speedup']:.2f}x), compile "
                f"{row['compile_seconds']:.1f} s, maps rel diff {row['maps_max_rel_diff']:.1e}, "
                f"graphs {row['recompiles']}, breaks {row['graph_breaks']}; load "
                + " ".join(f"{v:.1f}" for v in os.getloadavg())
            )
        except Exception as err:  # noqa: BLE001 - a failed compile is a result too
            row["error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:600]}"
            log(f"{name}: compile failed: {row['error']}")
        report["rows"][name] = row
        (out / "compile.json").write_text(json.dumps(report, indent=2))
    log(f"wrote {out / 'compile.json'}")


if __name__ == "__main__":
    main()
