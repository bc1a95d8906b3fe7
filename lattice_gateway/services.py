"""The seam between the gateway's parts: what routes get from ``request.app.state.services``.

``store`` keeps durable records (SQL); ``broker`` keeps jobs, leases and presence (in
memory, or Redis when scaled out); ``auth`` turns credentials into principals. Routes
depend on these interfaces only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from starlette.requests import Request

    from lattice_protocol import KeyPair

    from .settings import Settings

SCOPE_INFERENCE = "lattice:compute:inference"
SCOPE_MANAGE = "lattice:compute:personal_runtime:manage"
ALL_SCOPES = (SCOPE_INFERENCE, SCOPE_MANAGE)

# What the store records. The public status overlays live presence on top of this:
# "paired" becomes "reachable" or "offline" depending on the broker.
StoredStatus = Literal["unpaired", "paired", "revoked"]


@dataclass(frozen=True)
class Principal:
    account_id: str
    scopes: frozenset[str]
    credential_kind: Literal["api_key", "access_token"]


@dataclass(frozen=True)
class Runtime:
    lattice_id: str
    account_id: str
    display_name: str
    execution_backend: str
    status: StoredStatus
    created_at: str  # ISO-8601 UTC with milliseconds and "Z"
    updated_at: str
    daemon_public_key: str | None = None  # set at redeem
    default_model: str | None = None  # reported by the daemon at session register
    models: tuple[str, ...] = ()
    daemon_version: str | None = None
    last_seen_at: str | None = None


class Store(Protocol):
    """Durable records. Implemented in ``store/`` on SQLite and PostgreSQL."""

    async def get_runtime(self, lattice_id: str) -> Runtime | None: ...

    async def runtime_for_daemon_token(self, token: str) -> Runtime | None:
        """The runtime a daemon token belongs to (constant-time checked), or None."""
        ...

    async def record_daemon_session(
        self, lattice_id: str, *, daemon_version: str, models: list[str],
        default_model: str | None,
    ) -> None: ...

    async def close(self) -> None: ...

    # What the core routes use besides (implemented by store.SqlStore).
    async def create_runtime(self, account_id: str, display_name: str,
                             execution_backend: str) -> Runtime: ...

    async def list_runtimes(self, account_id: str) -> list[Runtime]: ...

    async def revoke_runtime(self, lattice_id: str, *,
                             last_seen_ms: int | None = None) -> Runtime | None: ...

    async def mint_bootstrap_token(self, lattice_id: str, ttl_seconds: int) -> Any: ...

    async def redeem_bootstrap_token(self, token: str, *, daemon_public_key: str,
                                     daemon_version: str | None) -> Any: ...


class Broker(Protocol):
    """Jobs, leases and presence. Implemented in ``relay/`` (in-process; Redis)."""

    async def reachable(self, lattice_ids: list[str]) -> dict[str, bool]:
        """Which of these runtimes have a live daemon session (presence window)."""
        ...

    async def last_seen(self, lattice_ids: list[str]) -> dict[str, float | None]: ...

    async def revoke_runtime(self, lattice_id: str) -> None:
        """Fail queued and in-flight jobs with runtime_revoked, end the sessions."""
        ...

    async def release_polls(self) -> None:
        """Shutting down: answer held polls now and hold no new ones."""
        ...

    async def close(self) -> None: ...


class Authenticator(Protocol):
    async def authenticate(self, request: Request, scope: str | tuple[str, ...]) -> Principal:
        """The caller, or ApiError invalid_api_key / insufficient_scopes.

        With a tuple, any one of the scopes suffices.
        """
        ...


@dataclass
class Services:
    settings: Settings
    store: Store
    broker: Broker
    auth: Authenticator
    gateway_keys: KeyPair
    extras: dict[str, object] = field(default_factory=dict)
