"""Fewer glibc malloc arenas for the serve process.

glibc gives each thread that finds the main arena busy an arena of its own, up
to 8 per core, and memory freed in one arena is not reused by another. The
serve process has many threads (pynetdicom's two per association, the fsync
pool, two decode pools, the inference and eager-embedding loops), so freed
buffers pile up across arenas. Two arenas took the peak RSS of ``serve`` over
``ftl-bench perf --only ingest`` from ~272 MB to ~245 MB. It must be set before
the service starts its threads; ``MALLOC_ARENA_MAX`` in the environment wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

M_ARENA_MAX = -8  # glibc's mallopt parameter number
SERVE_ARENAS = 2


def limit_malloc_arenas(count: int = SERVE_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``count``; False where not glibc or the environment sets it."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, count))
    except (OSError, AttributeError):
        return False
