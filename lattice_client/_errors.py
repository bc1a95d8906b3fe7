"""Typed exceptions for the gateway's error envelope ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from typing import Any


class LatticeClientError(Exception):
    """Base of everything this SDK raises."""


class LatticeConfigurationError(LatticeClientError, ValueError):
    """The client cannot be built: no gateway URL or no credential."""


class LatticeConnectionError(LatticeClientError):
    """The gateway could not be reached (after any safe retries)."""


class LatticeTimeoutError(LatticeConnectionError):
    """The gateway did not answer within the client's timeout."""


class LatticeAPIError(LatticeClientError):
    """The gateway answered with an error envelope (or an in-stream error event).

    ``code`` is the contract's stable code; unknown codes keep this base class.
    """

    default_status: int = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        param: str | None = None,
        error_type: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status if status is not None else self.default_status
        self.param = param
        self.type = error_type
        self.body = body

    def __str__(self) -> str:
        return f"{self.code or 'error'} ({self.status}): {self.message}"


class InvalidApiKeyError(LatticeAPIError):
    default_status = 401


class InsufficientScopesError(LatticeAPIError):
    default_status = 403


class RuntimeNotFoundError(LatticeAPIError):
    default_status = 404


class RuntimeRevokedError(LatticeAPIError):
    default_status = 403


class RuntimeUnreachableError(LatticeAPIError):
    default_status = 503


class InvalidRequestError(LatticeAPIError):
    default_status = 400


class RequestTooLargeError(LatticeAPIError):
    default_status = 413


class ProviderError(LatticeAPIError):
    default_status = 502


class RuntimeTimeoutError(LatticeAPIError):
    default_status = 504


class BootstrapTokenExpiredError(LatticeAPIError):
    default_status = 401


class BootstrapTokenUsedError(LatticeAPIError):
    default_status = 409


class InvalidBootstrapTokenError(LatticeAPIError):
    default_status = 401


class RateLimitedError(LatticeAPIError):
    default_status = 429

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


ERROR_CLASSES: dict[str, type[LatticeAPIError]] = {
    "invalid_api_key": InvalidApiKeyError,
    "insufficient_scopes": InsufficientScopesError,
    "runtime_not_found": RuntimeNotFoundError,
    "runtime_revoked": RuntimeRevokedError,
    "runtime_unreachable": RuntimeUnreachableError,
    "invalid_request": InvalidRequestError,
    "request_too_large": RequestTooLargeError,
    "provider_error": ProviderError,
    "runtime_timeout": RuntimeTimeoutError,
    "bootstrap_token_expired": BootstrapTokenExpiredError,
    "bootstrap_token_used": BootstrapTokenUsedError,
    "invalid_bootstrap_token": InvalidBootstrapTokenError,
    "rate_limited": RateLimitedError,
}


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the gateway sends delta-seconds; dates are not used)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_from_body(
    body: Any, status: int | None, retry_after: float | None = None
) -> LatticeAPIError:
    """Build the typed exception for an envelope; tolerate bodies that are not one."""
    envelope = body.get("error") if isinstance(body, dict) else None
    if not isinstance(envelope, dict):
        text = body if isinstance(body, str) else "the gateway answered without an error envelope"
        return LatticeAPIError(str(text)[:500] or f"HTTP {status}", status=status, body=body)
    code = envelope.get("code")
    code = code if isinstance(code, str) else None
    message = envelope.get("message")
    message = message if isinstance(message, str) and message else (code or f"HTTP {status}")
    param = envelope.get("param") if isinstance(envelope.get("param"), str) else None
    error_type = envelope.get("type") if isinstance(envelope.get("type"), str) else None
    cls = ERROR_CLASSES.get(code or "", LatticeAPIError)
    kwargs: dict[str, Any] = {
        "code": code, "status": status, "param": param, "error_type": error_type, "body": body,
    }
    if cls is RateLimitedError:
        return RateLimitedError(message, retry_after=retry_after, **kwargs)
    return cls(message, **kwargs)
