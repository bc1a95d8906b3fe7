"""Error codes of the public contract, their HTTP status, and the OpenAI envelope."""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(str, enum.Enum):
    INVALID_API_KEY = "invalid_api_key"
    INSUFFICIENT_SCOPES = "insufficient_scopes"
    RUNTIME_NOT_FOUND = "runtime_not_found"
    RUNTIME_REVOKED = "runtime_revoked"
    RUNTIME_UNREACHABLE = "runtime_unreachable"
    INVALID_REQUEST = "invalid_request"
    REQUEST_TOO_LARGE = "request_too_large"
    PROVIDER_ERROR = "provider_error"
    RUNTIME_TIMEOUT = "runtime_timeout"
    BOOTSTRAP_TOKEN_EXPIRED = "bootstrap_token_expired"
    BOOTSTRAP_TOKEN_USED = "bootstrap_token_used"
    INVALID_BOOTSTRAP_TOKEN = "invalid_bootstrap_token"
    RATE_LIMITED = "rate_limited"
    # The runtime owner's controls (the daemon decides; docs/api.md).
    RUNTIME_PAUSED = "runtime_paused"
    APP_NOT_ALLOWED = "app_not_allowed"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    BUDGET_EXCEEDED = "budget_exceeded"
    PROMPT_TOO_LONG = "prompt_too_long"
    # Beyond the table in docs/api.md: routing, relay and last-resort codes.
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    LEASE_NOT_HELD = "lease_not_held"
    SESSION_NOT_FOUND = "session_not_found"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"
    # The gateway's front door: slow or oversized requests, no room, shutting down.
    REQUEST_TIMEOUT = "request_timeout"
    HEADERS_TOO_LARGE = "headers_too_large"
    SERVICE_UNAVAILABLE = "service_unavailable"

    @property
    def status(self) -> int:
        return _STATUS[self]

    @property
    def error_type(self) -> str:
        """The OpenAI ``type`` field for this code."""
        status = self.status
        if status >= 500:
            return "api_error"
        return _TYPE_BY_STATUS.get(status, "invalid_request_error")

    @property
    def retryable(self) -> bool:
        """Whether a client retry can succeed (drives ``x-should-retry``)."""
        return self in _RETRYABLE


_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_API_KEY: 401,
    ErrorCode.INSUFFICIENT_SCOPES: 403,
    ErrorCode.RUNTIME_NOT_FOUND: 404,
    ErrorCode.RUNTIME_REVOKED: 403,
    ErrorCode.RUNTIME_UNREACHABLE: 503,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.PROVIDER_ERROR: 502,
    ErrorCode.RUNTIME_TIMEOUT: 504,
    ErrorCode.BOOTSTRAP_TOKEN_EXPIRED: 401,
    ErrorCode.BOOTSTRAP_TOKEN_USED: 409,
    ErrorCode.INVALID_BOOTSTRAP_TOKEN: 401,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.RUNTIME_PAUSED: 503,
    ErrorCode.APP_NOT_ALLOWED: 403,
    ErrorCode.MODEL_NOT_ALLOWED: 403,
    ErrorCode.BUDGET_EXCEEDED: 429,
    ErrorCode.PROMPT_TOO_LONG: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.LEASE_NOT_HELD: 409,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.CANCELLED: 499,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
}

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
}

# A daemon that is reconnecting comes back within seconds, a rate limit lifts, a
# gateway replica that is full or shutting down has a sibling (or comes back), and a
# request that arrived too slowly may arrive in time over a better network; everything
# else fails the same way again, so clients are told not to retry. A paused runtime or a
# spent budget comes back too, but later (their Retry-After says when): an SDK's short
# automatic retries would only fail again, so they are not retryable here.
_RETRYABLE = frozenset(
    {ErrorCode.RATE_LIMITED, ErrorCode.RUNTIME_UNREACHABLE, ErrorCode.INTERNAL_ERROR,
     ErrorCode.SERVICE_UNAVAILABLE, ErrorCode.REQUEST_TIMEOUT}
)


def error_body(code: ErrorCode, message: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope."""
    return {
        "error": {"message": message, "type": code.error_type, "param": param, "code": code.value}
    }


class LatticeError(Exception):
    """An error that maps to the contract's envelope. Messages never contain secrets."""

    def __init__(self, code: ErrorCode, message: str, param: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.retry_after = retry_after  # seconds, for the Retry-After header

    @property
    def status(self) -> int:
        return self.code.status

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.param)
