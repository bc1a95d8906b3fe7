"""Credentials and scopes: API keys and OAuth access tokens for apps, daemon tokens for daemons.

Apps send ``x-api-key: sk_...`` or ``Authorization: Bearer <api key or access token>`` (the
official openai clients send the Bearer form). Lookups go through the store's short-TTL
cache, so authenticating a chat request normally costs one hash and a dict lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lattice_protocol import ErrorCode, LatticeError

from . import metrics
from .services import Principal, Runtime, Store, services_of

if TYPE_CHECKING:
    from starlette.requests import Request

_MISSING_MESSAGE = ("missing credentials: send `x-api-key: sk_...` or "
                    "`Authorization: Bearer <api key or access token>`")


def presented_secret(request: Request) -> str | None:
    """The credential in ``x-api-key`` or ``Authorization: Bearer``, if any."""
    headers = request.headers
    api_key = headers.get("x-api-key")
    if api_key:
        return api_key.strip()
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


def _scope_error(required: tuple[str, ...]) -> LatticeError:
    if len(required) == 1:
        message = f"this credential lacks the required scope {required[0]}"
    else:
        message = "this credential lacks a required scope: one of " + ", ".join(required)
    return LatticeError(ErrorCode.INSUFFICIENT_SCOPES, message)


class CredentialAuthenticator:
    """Implements ``services.Authenticator`` on the store's credential records."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def authenticate(self, request: Request, scope: str | tuple[str, ...]) -> Principal:
        secret = presented_secret(request)
        if secret is None:
            metrics.auth_failure("missing")
            raise LatticeError(ErrorCode.INVALID_API_KEY, _MISSING_MESSAGE)
        record = await self._store.credential(secret)
        # The message never echoes the presented secret.
        if record is None:
            metrics.auth_failure("unknown")
            raise LatticeError(ErrorCode.INVALID_API_KEY, "invalid API key or access token")
        if record.revoked:
            metrics.auth_failure("revoked")
            raise LatticeError(ErrorCode.INVALID_API_KEY,
                               "this API key or access token has been revoked")
        if record.expires_ms is not None and self._store.clock() * 1000 >= record.expires_ms:
            metrics.auth_failure("expired")
            raise LatticeError(ErrorCode.INVALID_API_KEY, "this access token has expired")
        required = (scope,) if isinstance(scope, str) else scope
        if not any(s in record.scopes for s in required):
            metrics.auth_failure("scope")
            raise _scope_error(required)
        return Principal(account_id=record.account_id, scopes=record.scopes,
                         credential_kind=record.kind, credential_id=record.credential_id,
                         credential_name=record.name)


async def authenticate_daemon(request: Request) -> Runtime:
    """The runtime whose daemon token is presented as Bearer, for the relay routes.

    401 ``invalid_api_key`` when unknown (deleted or re-paired: the daemon must pair
    again), 403 ``runtime_revoked`` when the runtime was revoked. Both are final.
    """
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        metrics.auth_failure("daemon_missing")
        raise LatticeError(ErrorCode.INVALID_API_KEY,
                           "missing daemon token: send `Authorization: Bearer lrdt_v1_...`")
    runtime = await services_of(request).store.runtime_for_daemon_token(token.strip())
    if runtime is None:
        metrics.auth_failure("daemon_unknown")
        raise LatticeError(ErrorCode.INVALID_API_KEY,
                           "unknown daemon token (the runtime was deleted or paired again); "
                           "re-pair required")
    if runtime.status == "revoked":
        metrics.auth_failure("daemon_revoked")
        raise LatticeError(ErrorCode.RUNTIME_REVOKED,
                           "this runtime has been revoked; re-pair required")
    return runtime
