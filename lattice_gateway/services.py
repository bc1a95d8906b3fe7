"""The seam between the gateway's parts: what routes get from ``services_of(request)``.

``store`` keeps durable records (SQL); ``broker`` keeps jobs, leases and presence (in
memory, or Redis when scaled out: ``relay.base.RelayBroker``); ``auth`` turns
credentials into principals; ``sealers`` seal jobs to daemon keys. Routes depend on
these interfaces only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from lattice_protocol import KeyPair, Sealer

if TYPE_CHECKING:
    from starlette.requests import Request

    from .relay.base import RelayBroker
    from .settings import Settings
    from .store.records import CredentialRecord, MintedBootstrapToken, RedeemedRuntime

SCOPE_INFERENCE = "lattice:compute:inference"
SCOPE_MANAGE = "lattice:compute:personal_runtime:manage"
ALL_SCOPES = (SCOPE_INFERENCE, SCOPE_MANAGE)

# What the store records. The public status overlays live presence on top of this:
# "paired" becomes "reachable" or "offline" depending on the broker.
StoredStatus = Literal["unpaired", "paired", "revoked"]


@dataclass(frozen=True)
class Principal:
    """An authenticated app: its account, and the credential it acts with."""

    account_id: str
    scopes: frozenset[str]
    credential_kind: Literal["api_key", "access_token"]
    credential_id: str  # public id (key_... / tok_...), never the secret
    credential_name: str  # the app's name as the operator gave it; the id if none


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
    """Durable records, as routes and ``auth`` use them (``store.SqlStore`` on SQLite
    and PostgreSQL)."""

    clock: Callable[[], float]  # unix seconds; what expiry is decided by

    async def credential(self, secret: str) -> CredentialRecord | None:
        """What an API key / access token grants, found by its hash (as daemon tokens
        below), or None."""
        ...

    async def ensure_account(self, name: str) -> str:
        """The id of the account called ``name``, created if needed."""
        ...

    def note_credential_used(self, credential_id: str) -> None:
        """Remember a use for the credential's ``last used`` (written in batches)."""
        ...

    async def get_runtime(self, lattice_id: str) -> Runtime | None: ...

    async def list_runtimes(self, account_id: str) -> list[Runtime]: ...

    async def create_runtime(self, account_id: str, display_name: str,
                             execution_backend: str) -> Runtime: ...

    async def revoke_runtime(self, lattice_id: str, *,
                             last_seen_ms: int | None = None) -> Runtime | None: ...

    async def mint_bootstrap_token(self, lattice_id: str,
                                   ttl_seconds: int) -> MintedBootstrapToken: ...

    async def redeem_bootstrap_token(self, token: str, *, daemon_public_key: str,
                                     daemon_version: str | None) -> RedeemedRuntime: ...

    async def runtime_for_daemon_token(self, token: str) -> Runtime | None:
        """The runtime a daemon token belongs to, found by the token's hash, or None.

        No constant-time compare is needed for a lookup by hash: the token is
        high-entropy, so whatever the lookup's timing tells about stored hashes does
        not help anyone guess a token."""
        ...

    async def record_daemon_session(
        self, lattice_id: str, *, daemon_version: str, models: list[str],
        default_model: str | None,
    ) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raises when the database cannot be reached (readiness)."""
        ...


class Authenticator(Protocol):
    async def authenticate(self, request: Request, scope: str | tuple[str, ...]) -> Principal:
        """The caller, or LatticeError invalid_api_key / insufficient_scopes.

        With a tuple, any one of the scopes suffices.
        """
        ...


class Sealers:
    """One ``Sealer`` per daemon key: the Box key agreement is the expensive part."""

    MAX_KEYS = 10_000  # then start over: bounded memory, re-agreeing is cheap enough

    def __init__(self, gateway_keys: KeyPair) -> None:
        self._gateway_keys = gateway_keys
        self._by_key: dict[str, Sealer] = {}

    def for_daemon(self, daemon_key: str) -> Sealer:
        sealer = self._by_key.get(daemon_key)
        if sealer is None:
            if len(self._by_key) >= self.MAX_KEYS:
                self._by_key.clear()
            sealer = self._by_key[daemon_key] = Sealer(self._gateway_keys, daemon_key)
        return sealer


@dataclass
class Services:
    settings: Settings
    store: Store
    broker: RelayBroker
    auth: Authenticator
    gateway_keys: KeyPair
    sealers: Sealers = field(init=False)

    def __post_init__(self) -> None:
        self.sealers = Sealers(self.gateway_keys)


def services_of(request: Request) -> Services:
    """What the app's lifespan published for the routes."""
    services: Services = request.app.state.services
    return services
