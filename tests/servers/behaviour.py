"""Behaviour knobs shared by the fake providers, and helpers to read them.

Keys (set with ``handle.configure(**keys)`` or ``POST /__control``):

- ``reply``: the assistant text; split into word chunks unless ``chunks`` is given.
- ``chunks``: explicit list of content pieces (one stream chunk each).
- ``chunk_delay``: seconds between chunks (after the first).
- ``first_byte_delay``: seconds before the response headers (a model that is loading).
- ``models``: the models the server has; any other model is a 404.
- ``error``: fail before streaming: ``not_found`` / ``bad_request`` / ``busy`` /
  ``internal`` (404 / 400 / 503 / 500); ``error_message`` overrides the text.
- ``stream_error_after``: after N content chunks, send the provider's in-stream error.
- ``drop_after``: after N content chunks, drop the connection (no terminator).
- ``tool_calls``: ``[{"name": ..., "arguments": {...}, "id": optional}]`` to call tools.
- ``thinking``: reasoning text sent before the content.
- ``done_reason``: ``stop`` or ``length``.
- ``prompt_tokens`` / ``completion_tokens``: usage (None: omitted / number of chunks).
- ``close_after_response``: close the connection after each complete answer while its
  headers promised keep-alive (a server's idle timeout or restart, unannounced).
"""

from __future__ import annotations

import re
from typing import Any

ERROR_STATUS = {"not_found": 404, "bad_request": 400, "busy": 503, "internal": 500}

COMMON_DEFAULTS: dict[str, Any] = {
    "reply": "Hello from the test server!",
    "chunks": None,
    "chunk_delay": 0.0,
    "first_byte_delay": 0.0,
    "error": None,
    "error_message": None,
    "stream_error_after": None,
    "drop_after": None,
    "tool_calls": None,
    "thinking": None,
    "done_reason": "stop",
    "prompt_tokens": 12,
    "completion_tokens": None,
    "close_after_response": False,
}

_WORDS = re.compile(r"\s*\S+")


def content_pieces(behaviour: dict[str, Any]) -> list[str]:
    if behaviour["chunks"] is not None:
        return [str(piece) for piece in behaviour["chunks"]]
    return _WORDS.findall(behaviour["reply"]) or [behaviour["reply"]]


def completion_tokens(behaviour: dict[str, Any], pieces: list[str]) -> int:
    value = behaviour["completion_tokens"]
    return len(pieces) if value is None else int(value)
