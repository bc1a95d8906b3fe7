"""Loaded by Python at start-up when this directory is on PYTHONPATH (a test's daemon
only): the wall clock reads ``LATTICE_TEST_CLOCK_OFFSET_FILE`` (seconds, may be negative)
and adds it, so a test can jump a running daemon's clock without root or libfaketime.

Only ``time.time``/``time.time_ns`` move (what the daemon judges job deadlines by);
``time.monotonic`` stays, as it does when an operator or NTP steps the wall clock.
"""

from __future__ import annotations

import os
import time

_OFFSET_FILE = os.environ.get("LATTICE_TEST_CLOCK_OFFSET_FILE")

if _OFFSET_FILE:
    _real_time = time.time
    _real_time_ns = time.time_ns

    def _offset() -> float:
        try:
            with open(_OFFSET_FILE, encoding="ascii") as f:
                return float(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def _shifted_time() -> float:
        return _real_time() + _offset()

    def _shifted_time_ns() -> int:
        return _real_time_ns() + int(_offset() * 1e9)

    time.time = _shifted_time
    time.time_ns = _shifted_time_ns
