"""Server-sent events framing, exactly as OpenAI streams chat completions."""

from __future__ import annotations

from typing import Any

import orjson

from lattice_protocol import ErrorCode, error_body

SSE_DONE = b"data: [DONE]\n\n"
# A comment line: clients ignore it, proxies and idle timers see traffic.
SSE_KEEPALIVE = b": keep-alive\n\n"

SSE_MEDIA_TYPE = "text/event-stream"  # with "; charset=utf-8" (Starlette adds it)
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse_frame(json_bytes: bytes) -> bytes:
    """One ``data:`` event carrying encoded JSON (orjson never emits raw newlines)."""
    return b"data: " + json_bytes + b"\n\n"


def sse_data(value: Any) -> bytes:
    """One ``data:`` event carrying a JSON value."""
    return sse_frame(orjson.dumps(value))


def sse_error(code: ErrorCode, message: str, param: str | None = None) -> bytes:
    """The in-stream error event the openai clients raise as ``APIError``."""
    return sse_data(error_body(code, message, param))
