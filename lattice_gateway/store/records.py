"""Plain values the store hands out, and the time format of the public API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lattice_protocol import iso_from_ms as iso_from_ms  # the public API's time format

from ..services import Runtime

CredentialKind = Literal["api_key", "access_token"]


@dataclass(frozen=True)
class CredentialRecord:
    """What a stored API key or access token grants (looked up by the secret's hash)."""

    credential_id: str  # public: what lists and the owners' activity logs show
    name: str  # the app it was made for; its id unless named
    account_id: str
    kind: CredentialKind
    scopes: frozenset[str]
    expires_ms: int | None
    revoked: bool
    # Set when the presented secret is the one a rotation replaced: accepted until then.
    grace_until_ms: int | None = None


@dataclass(frozen=True)
class CredentialInfo:
    """A credential as ``keys list`` / ``tokens list`` show it (never its secret)."""

    credential_id: str
    name: str
    kind: CredentialKind
    account_id: str
    account_name: str
    scopes: tuple[str, ...]
    created_ms: int
    expires_ms: int | None
    revoked_ms: int | None
    last_used_ms: int | None
    previous_valid_until_ms: int | None  # a rotation's grace period for the old secret


@dataclass(frozen=True)
class IssuedCredential:
    """A newly created secret: the plaintext exists only in this value."""

    secret: str
    credential_id: str
    name: str
    account_id: str
    scopes: tuple[str, ...]
    expires_ms: int | None


@dataclass(frozen=True)
class MintedBootstrapToken:
    token: str
    lattice_id: str
    expires_ms: int


@dataclass(frozen=True)
class RedeemedRuntime:
    runtime: Runtime
    daemon_token: str
