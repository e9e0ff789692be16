"""Give the heap memory a forward pass frees back to the operating system.

glibc keeps freed memory for reuse, and batches of ever-different shapes (the planner cuts texts by length)
fragment it: a worker's resident memory kept rising under load over bench/corpus.jsonl. ``malloc_trim`` after
a batch keeps it flat for a little more CPU a text (`python bench/run.py` prints each worker's memory after
every shape); the compute thread calls it when it runs out of work and at most once a second under load.
Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable


def trimmer() -> Callable[[], None]:
    """A function that returns free heap pages to the OS (glibc's ``malloc_trim(0)``), or does nothing."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    try:
        malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no glibc (musl has no malloc_trim)
        return lambda: None
    malloc_trim.argtypes = [ctypes.c_size_t]
    return lambda: malloc_trim(0)
