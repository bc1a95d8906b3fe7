"""Credentials and scopes: API keys and OAuth access tokens for apps, daemon tokens for daemons.

Apps send ``x-api-key: sk_...`` or ``Authorization: Bearer <api key or access token>`` (the
official openai clients send the Bearer form); a JWT from the operator's identity provider
is verified by ``oauth.JwtVerifier``. Lookups go through the store's short-TTL
cache, so authenticating a chat request normally costs one hash and a dict lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lattice_protocol import ErrorCode, LatticeError

from . import metrics
from .oauth import JwtVerifier, looks_like_jwt
from .services import Principal, Runtime, Store, services_of

if TYPE_CHECKING:
    from starlette.requests import Request

# docs/protocol.md "Keys and credentials": the daemon recognises this text.
RELAY_KEY_ROTATED = "the gateway's relay key was rotated; re-pair required"
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
    """Implements ``services.Authenticator`` on the store's credential records, and on
    JWT access tokens of the operator's identity provider when ``oauth`` is given."""

    _MAX_ACCOUNTS = 10_000

    def __init__(self, store: Store, oauth: JwtVerifier | None = None) -> None:
        self._store = store
        self._oauth = oauth
        # account name (from a JWT) -> account id: an account is never renamed or deleted
        self._accounts: dict[str, str] = {}

    async def authenticate(self, request: Request, scope: str | tuple[str, ...]) -> Principal:
        secret = presented_secret(request)
        if secret is None:
            metrics.auth_failure("missing")
            raise LatticeError(ErrorCode.INVALID_API_KEY, _MISSING_MESSAGE)
        required = (scope,) if isinstance(scope, str) else scope
        if looks_like_jwt(secret):
            return await self._authenticate_jwt(secret, required)
        record = await self._store.credential(secret)
        # The message never echoes the presented secret.
        if record is None:
            metrics.auth_failure("unknown")
            raise LatticeError(ErrorCode.INVALID_API_KEY, "invalid API key or access token")
        if record.revoked:
            metrics.auth_failure("revoked")
            raise LatticeError(ErrorCode.INVALID_API_KEY,
                               "this API key or access token has been revoked")
        now_ms = self._store.clock() * 1000
        if record.expires_ms is not None and now_ms >= record.expires_ms:
            metrics.auth_failure("expired")
            raise LatticeError(ErrorCode.INVALID_API_KEY, "this access token has expired")
        if record.grace_until_ms is not None and now_ms >= record.grace_until_ms:
            metrics.auth_failure("rotated")
            raise LatticeError(ErrorCode.INVALID_API_KEY,
                               "this API key was rotated and its grace period has ended; "
                               "use the new key")
        if not any(s in record.scopes for s in required):
            metrics.auth_failure("scope")
            raise _scope_error(required)
        self._store.note_credential_used(record.credential_id)
        return Principal(account_id=record.account_id, scopes=record.scopes,
                         credential_kind=record.kind, credential_id=record.credential_id,
                         credential_name=record.name)

    async def _authenticate_jwt(self, token: str, required: tuple[str, ...]) -> Principal:
        if self._oauth is None:
            metrics.auth_failure("jwt")
            raise LatticeError(ErrorCode.INVALID_API_KEY,
                               "JWT access tokens are not accepted here: this gateway "
                               "trusts no identity provider (--oauth-issuer)")
        try:
            verified = await self._oauth.verify(token)
        except LatticeError:
            metrics.auth_failure("jwt")
            raise
        if not any(s in verified.scopes for s in required):
            metrics.auth_failure("scope")
            raise _scope_error(required)
        account_id = self._accounts.get(verified.account_name)
        if account_id is None:
            # The account claim names a Lattice account; the first token creates it.
            account_id = await self._store.ensure_account(verified.account_name)
            if len(self._accounts) >= self._MAX_ACCOUNTS:
                self._accounts.clear()
            self._accounts[verified.account_name] = account_id
        return Principal(account_id=account_id, scopes=verified.scopes,
                         credential_kind="access_token", credential_id=verified.client_id,
                         credential_name=verified.client_id)


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
    if runtime.status != "paired":
        metrics.auth_failure("daemon_unpaired")
        # Only `keys rotate-relay-key` leaves a token on an un-paired runtime: its daemon
        # holds the old gateway key and could open no job. The daemon shows this text.
        raise LatticeError(ErrorCode.INVALID_API_KEY, RELAY_KEY_ROTATED)
    return runtime
