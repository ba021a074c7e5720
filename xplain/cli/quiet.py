"""Which warnings a user sees: xplain's and plugins', never the libraries' (without ``--debug``).

Why a module of its own: torch, onnx2torch, onnx and onnxruntime warn about their own internals
(deprecated indexing, tracer notes, shape-inference hints) on every call; nothing a user of
xplain can act on, and it reads like a failure (issue 26.5).  Warnings raised from inside those
packages are dropped here unless ``--debug`` (or ``XPLAIN_DEBUG=1``) is given; xplain's own and
third-party plugins' warnings still print, one line each.
"""

from __future__ import annotations

from pathlib import PurePath

__all__ = ["LIBRARIES", "from_library"]

#: top-level packages whose warnings are about their internals
LIBRARIES = frozenset(
    {
        "torch",
        "torchvision",
        "onnx",
        "onnx2torch",
        "onnxruntime",
        "onnxscript",
        "numpy",
        "PIL",
        "matplotlib",
        "captum",
        "zennit",
        "timm",
        "ray",
    }
)


def from_library(filename: str | None) -> bool:
    """True if a warning raised in ``filename`` comes from one of :data:`LIBRARIES` (a path
    under ``site-packages``/``dist-packages`` whose first package is one of them)."""
    if not filename:
        return False
    parts = PurePath(str(filename)).parts
    for i, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages"):
            return parts[i + 1] in LIBRARIES
    return False
