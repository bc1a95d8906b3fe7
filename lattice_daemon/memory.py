"""Give the heap that start-up used and freed back to the operating system.

Imports and the first registration allocate and drop a few MB; glibc keeps freed pages
mapped, so they would count against the idle RSS budget (benchmarks/README.md) for the daemon's
whole life. ``malloc_trim(0)`` returns them. glibc only: elsewhere this does nothing.
"""

from __future__ import annotations

import gc
import logging
import sys

log = logging.getLogger("lattice_daemon")


def trim_heap() -> None:
    if not sys.platform.startswith("linux"):
        return
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl): nothing to do
        log.debug("malloc_trim unavailable")
