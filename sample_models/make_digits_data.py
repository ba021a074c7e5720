#!/usr/bin/env python
"""Write ``digits_data/<digit>/NNN.png``: the 360 held-out digits, for fitting MIP-IN.

Runs alone (needs scikit-learn, the ``samples`` extra), in seconds::

    .venv/bin/python sample_models/make_digits_data.py [--out sample_models/digits_data]

The images are the held-out 20 % split of ``make_samples.py`` (same seed, same stratified
split, same 8x8 -> 28x28 bilinear upscaling and uint8 quantisation), so the ``unit`` preset
gives back exactly the tensors the digits models were tested on. ``NNN`` is the image's index
in that split, so ``images/digit_*.png`` appear here too. None of them was used for training.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_samples import SEED, load_digits_28  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "digits_data")
    args = ap.parse_args(argv)
    _, _, _, yte, u8te = load_digits_28(SEED)
    for d in range(10):
        if (args.out / str(d)).is_dir():
            shutil.rmtree(args.out / str(d))
        (args.out / str(d)).mkdir(parents=True)
    for i in range(len(yte)):
        Image.fromarray(u8te[i, 0].numpy(), "L").save(args.out / str(int(yte[i])) / f"{i:03d}.png", optimize=True)
    print(f"wrote {len(yte)} images to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
