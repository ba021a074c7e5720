"""Export the 224×224 benchmark networks (issue 14) into ``bench/models/`` (gitignored).

A thin shell over :mod:`xplain.run.reference_networks` (what ``xplain bench NAME`` uses, cached under
``~/.cache/xplain/bench-models``): ``resnet50`` and ``efficientnet_b0`` are torchvision
architectures with random weights and calibrated BatchNorm statistics, ``efficientnet_lite0`` the
ImageNet-trained network the ``bench`` extra ships. Nothing is downloaded.

    python bench/real_models.py [NAME ...] [--size 224]   # prints the .onnx paths
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xplain.run.reference_networks import BENCH_MODELS, SIZE, bench_model_path

ROOT = Path(__file__).resolve().parent / "models"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "models", nargs="*", help=f"any of {', '.join(BENCH_MODELS)} (default: all)"
    )
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--out", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    for name in args.models or BENCH_MODELS:
        if name not in BENCH_MODELS:
            parser.error(f"unknown model {name!r}: choose from {', '.join(BENCH_MODELS)}")
        print(bench_model_path(name, 224 if name == "efficientnet_lite0" else args.size, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
