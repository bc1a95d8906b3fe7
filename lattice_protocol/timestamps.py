"""The one time format of the public and control APIs."""

from __future__ import annotations

from datetime import datetime, timezone


def iso_from_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and ``Z`` (e.g. ``2026-01-02T03:04:05.678Z``)."""
    seconds, millis = divmod(int(ms), 1000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{millis:03d}Z"


def iso_from_seconds(seconds: float) -> str:
    """The same format for a Unix time in seconds (``time.time()``)."""
    return iso_from_ms(int(seconds * 1000))
