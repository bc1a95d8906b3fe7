"""Request-body reading shared by all routes: size bound and JSON-object parsing."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from lattice_protocol import ErrorCode, LatticeError


async def read_json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, or ApiError request_too_large / invalid_request.

    Reads at most ``max_bytes`` + 1 bytes: a huge body is refused without buffering it.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise LatticeError(ErrorCode.REQUEST_TOO_LARGE,
                                   f"request body exceeds {max_bytes} bytes")
        except ValueError:
            raise LatticeError(ErrorCode.INVALID_REQUEST, "invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise LatticeError(ErrorCode.REQUEST_TOO_LARGE,
                               f"request body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise LatticeError(ErrorCode.INVALID_REQUEST, "request body must be a JSON object")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LatticeError(ErrorCode.INVALID_REQUEST, f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise LatticeError(ErrorCode.INVALID_REQUEST, "request body must be a JSON object")
    return value
