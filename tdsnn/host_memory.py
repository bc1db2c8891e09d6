"""How the process's C allocator treats the large tensors of a CPU run.

glibc's ``malloc`` maps every block above its mmap threshold (at most 32 MiB) afresh and unmaps
it when freed, so each such tensor pays one page fault per 4 KiB page the first time it is
written: for the ``[T, B, C, H, W]`` tensors of a default-sized V1 (37 MiB), about as long as
the convolution or LIF that fills it. :func:`keep_freed_memory` has ``malloc`` serve blocks up
to 1 GiB from its heap and keep freed memory there for the next tensor. Numbers are unchanged
(only where memory comes from); the resident size stays near the run's peak instead of falling
back between steps.

Applied once per process by the ``tdsnn`` command and the experiment workers, not by
``import tdsnn`` (a library does not change its host's allocator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["HEAP_LIMIT", "OPT_OUT", "keep_freed_memory"]

HEAP_LIMIT = 1 << 30
"""Bytes: blocks up to this size come from the heap, and the heap keeps this much freed."""

OPT_OUT = "TDSNN_SYSTEM_MALLOC"
"""Environment variable: ``1`` leaves glibc's defaults as they are."""

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory(limit: int = HEAP_LIMIT) -> bool:
    """Set glibc's mmap and trim thresholds to ``limit`` bytes; whether they were set.

    Nothing is set off Linux/glibc, where ``TDSNN_SYSTEM_MALLOC=1``, or where the environment
    already sets glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``.
    """
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT) == "1":
        return False
    if any(name in os.environ for name in _GLIBC_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    limit = min(limit, 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
