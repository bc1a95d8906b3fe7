"""Plain values the store hands out, and the time format of the public API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from ..services import Runtime

CredentialKind = Literal["api_key", "access_token"]


def iso_from_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and ``Z`` (e.g. ``2026-01-02T03:04:05.678Z``)."""
    seconds, millis = divmod(int(ms), 1000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{millis:03d}Z"


@dataclass(frozen=True)
class CredentialRecord:
    """What a stored API key or access token grants (looked up by the secret's hash)."""

    account_id: str
    kind: CredentialKind
    scopes: frozenset[str]
    expires_ms: int | None
    revoked: bool


@dataclass(frozen=True)
class IssuedCredential:
    """A newly created secret: the plaintext exists only in this value."""

    secret: str
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
