"""How the operator's process uses glibc's allocator, so its RSS follows what it holds.

A burst (300 objects created at once) passes thousands of JSON answers through 8 worker threads.
By default glibc gives each thread its own heap (up to 8 per core), raises its mmap threshold
after the first large free (so later large answers stay in the heap), and keeps freed pages
resident: after a burst the process would hold ~50 MB more than it uses. Not glibc: nothing
to do.
"""

from __future__ import annotations

import ctypes
import threading
import time

#: mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
#: Allocations above this come from mmap and go back to the system when freed (a fixed value
#: also stops glibc from raising it).
MMAP_THRESHOLD = 128 * 1024
ARENAS = 2
#: How often free heap pages are handed back (malloc_trim): cheap when there is nothing to give.
TRIM_SECONDS = 30.0


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune() -> None:
    """Before the worker threads start: two heaps, large blocks mmapped, freed pages trimmed."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return
    libc.mallopt(_M_ARENA_MAX, ARENAS)
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    threading.Thread(target=_trim_forever, args=(libc,), name="malloc-trim", daemon=True).start()


def _trim_forever(libc) -> None:
    while True:
        time.sleep(TRIM_SECONDS)
        libc.malloc_trim(0)
