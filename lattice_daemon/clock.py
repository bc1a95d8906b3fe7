"""Timestamps as the control API shows them: ISO-8601 UTC with milliseconds and ``Z``."""

from __future__ import annotations

from datetime import datetime, timezone


def iso_utc(unix_seconds: float | None) -> str | None:
    if unix_seconds is None:
        return None
    moment = datetime.fromtimestamp(unix_seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
