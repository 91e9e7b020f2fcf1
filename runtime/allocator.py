"""Keep freed memory in the process, so that a new KV cache buffer does not page-fault.

A batch cache rebuild or a prefill (kv_cache.py) allocates a fresh buffer per KV tensor (~10 MB
each for 32 rows of GPT-2 small, 24 of them) and frees the old ones. glibc serves blocks that
large with mmap and hands them back to the kernel on free, so every new buffer is brand-new
pages that fault in one by one (a second 20 MB block: ~500 minor faults, tests/test_runtime.py).
Raising glibc's mmap threshold to its maximum (32 MB) and never trimming the heap lets freed
buffers be reused: the process keeps its peak memory (as jemalloc or tcmalloc would), in
exchange for no faults. The scheduler bench's 28 rebuilds took 0.80 s instead of 0.91-0.94 s
(bench/engine.md, step 6).

Only glibc has mallopt; elsewhere this does nothing. An operator's own MALLOC_MMAP_THRESHOLD_
or MALLOC_TRIM_THRESHOLD_ environment setting wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
NEVER_TRIM = 2**31 - 1


def retain_freed_memory() -> bool:
    """Tell glibc to keep freed blocks up to 32 MB for reuse from now on, after handing back
    what is free now. True where it took effect."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    # What was freed before (start-up: loading and rewriting graphs, runtime/custom_ops.py)
    # goes back to the system once; from here on freed blocks are kept.
    libc.malloc_trim(0)
    log.debug("allocator keeps freed memory", extra={"retained": done})
    return done
