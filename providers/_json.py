"""Compact JSON for the provider adapters (stdlib).

Deliberately not orjson even where it is installed: the daemon's install has no orjson
(it comes with the gateway extra), its idle memory is budgeted (orjson alone is ~1.9 MB
of RSS), and provider messages are small. One code path is what users run and what the
tests and benchmarks measure.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(data: bytes | str) -> Any:
    return json.loads(data)


def dumps_str(value: Any) -> str:
    """Compact JSON text (tool-call ``arguments`` are JSON strings in OpenAI shapes)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
