"""Every error the gateway answers with: the OpenAI envelope and the contract's code."""

from __future__ import annotations

import math
from typing import Any

from starlette.responses import JSONResponse

from lattice_protocol import ErrorCode, LatticeError

ApiError = LatticeError  # the one exception type route code raises


def error_response(
    code: ErrorCode, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The envelope, with ``x-should-retry: false`` where a retry cannot succeed."""
    all_headers: dict[str, str] = {"x-should-retry": "true" if code.retryable else "false"}
    if headers:
        all_headers.update(headers)
    return JSONResponse(LatticeError(code, message, param).body(), status_code=code.status,
                        headers=all_headers)


def api_error_response(exc: LatticeError, headers: dict[str, Any] | None = None) -> JSONResponse:
    if exc.retry_after is not None:
        headers = {"retry-after": str(math.ceil(exc.retry_after)), **(headers or {})}
    return error_response(exc.code, exc.message, exc.param, headers)
