"""CPU memory allocator settings: large tensors reuse heap pages instead of fresh mmap pages.

glibc's malloc serves every block above its mmap threshold (128 KiB at start, raised dynamically only
after such a block is freed) with a fresh mmap, and returns the pages on free; the next tensor of that
size then page-faults its way in again, the kernel zeroing every page. A decode step allocates and frees
several vocabulary-sized tensors (the logits in float32, the probabilities, their float64 CDF: 6–12 MB
each for 32 rows × 49,152 tokens), which made the sampler ~4× slower than the same arithmetic on warm
memory (docs/performance.md). `tune_cpu_allocator` raises the mmap threshold to glibc's maximum (32 MiB on
64-bit) and keeps freed heap memory instead of trimming it — what jemalloc/tcmalloc, which CPU PyTorch
guides recommend preloading, do by design. Only glibc (Linux) is touched; elsewhere it does nothing.
`AWARE_MALLOC_TUNING=0` in the environment turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20))

_done: Optional[bool] = None


def _glibc():
    """The C library if it is glibc (it has mallopt and gnu_get_libc_version), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (AttributeError where the C library is not glibc)
        return libc
    except (OSError, AttributeError):
        return None


def tune_cpu_allocator() -> bool:
    """Apply `SETTINGS` with mallopt once per process; True when they are in effect."""
    global _done
    if _done is None:
        libc = None if os.environ.get("AWARE_MALLOC_TUNING", "1") == "0" else _glibc()
        _done = bool(libc) and all(libc.mallopt(option, value) == 1 for option, value in SETTINGS)
    return _done
