"""glibc's allocator thresholds for the CLI's process.

A pass of a 224×224 network (a few images, by :func:`xplain.images_per_pass`) makes activations
of 5–20 MB. glibc's dynamic mmap threshold starts at 128 KB and only rises when a mapped block
is freed, and its heap is trimmed back to the kernel whenever 128 KB is free at the top. Which
blocks get mapped and which heap pages get trimmed therefore depends on the process's
allocation history, and when they are, every pass faults zeroed pages in again: the same
perturbation-metric run measured 1.00× and 1.25× one forward pass per image in two processes
(EfficientNet-Lite0, `xplain bench --metrics`), with 0.92–0.96× whenever the thresholds were
fixed (``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``).

:func:`tune_allocator` fixes them with ``mallopt`` at start-up: blocks up to 32 MB (glibc's
largest mmap threshold on 64-bit) come from the heap and are reused, and up to
:data:`TRIM_THRESHOLD` of free heap is kept rather than handed back. Only the CLI calls it; a
library user's process keeps its own settings. A threshold the user set through glibc's
environment variables is left alone, and elsewhere (musl, macOS, Windows) nothing happens.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: mallopt parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's ceiling for the mmap threshold on 64-bit (HEAP_MAX / 2)
MMAP_THRESHOLD = 32 * 2**20
#: free heap kept for the next pass: above the CPU pass budget (256 MB) with room to spare
TRIM_THRESHOLD = 512 * 2**20


def tune_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module docstring); True when set."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: no ldconfig subprocess at start-up
        if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
            return False
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        return bool(ok and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError):
        return False
