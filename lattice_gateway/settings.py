"""Gateway settings: one frozen object, from CLI options and LATTICE_GATEWAY_* variables.

The only place the gateway reads its environment: every other part gets this object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Settings:
    # Where records live: SQLite path/URL (default: file in the platform data dir) or a
    # postgresql:// URL.
    database: str | None = None
    # The relay private key's file (0600); replicas share one (a mounted secret). None:
    # relay.key beside the SQLite database, or in the gateway's data dir for PostgreSQL.
    key_file: str | None = None
    # What goes into bootstrap `command` strings and `relayUrl`.
    public_url: str = "http://127.0.0.1:8080"
    # Redis URL: when set, the relay queue and presence live in Redis (scale-out).
    redis_url: str | None = None
    # Key prefix in that Redis (replicas of one gateway share it; empty: this default).
    redis_prefix: str = "lattice:relay:"

    # Relay timing (docs/protocol.md).
    poll_window_seconds: float = 25.0  # how long a poll is held (bounded 1..50)
    presence_window_seconds: float = 15.0  # reachable if polled within this
    pickup_timeout_seconds: float = 30.0  # queued job not leased by then -> runtime_timeout
    first_token_timeout_seconds: float = 300.0  # model loading allowance
    idle_timeout_seconds: float = 120.0  # max silence between chunks once started
    job_start_deadline_seconds: float = 60.0  # JobSpec.deadline = enqueue time + this
    sse_keepalive_seconds: float = 10.0  # SSE comment while nothing else is sent

    # Input bounds.
    max_body_bytes: int = 4 * 1024 * 1024
    # Jobs waiting for a runtime's daemon; beyond it chat answers 429 rate_limited
    # (bounds the memory one caller can hold; Ollama's own queue default is 512).
    max_queued_jobs: int = 512
    bootstrap_ttl_default: int = 600
    bootstrap_ttl_min: int = 60
    bootstrap_ttl_max: int = 3600
    # JWT access tokens from the operator's identity provider (oauth.py): trusted issuers
    # (LATTICE_GATEWAY_OAUTH_ISSUERS: space-separated), the audience tokens must name, and
    # the claim that names the Lattice account.
    oauth_issuers: tuple[str, ...] = ()
    oauth_audience: str | None = None
    oauth_account_claim: str = "sub"
    # At most one JWKS fetch per issuer this often when tokens name an unknown key id.
    oauth_jwks_min_refresh_seconds: float = 30.0
    # Credentials' "last used" is kept in memory and written this often (and at shutdown).
    credential_usage_flush_seconds: float = 30.0

    # GET /metrics answers only when set, and only to `Authorization: Bearer <this>`
    # (docs/operations.md). A secret: from the environment or a file, never argv.
    metrics_token: str | None = None

    # The front door (lattice_gateway/frontdoor.py, docs/operations.md): bounds on what a
    # client without credentials can hold. A parked poll has sent its whole request, so
    # neither read timeout applies to it.
    max_header_bytes: int = 16 * 1024  # request line + headers; beyond it 431
    header_timeout_seconds: float = 10.0  # from a connection's (or request's) first byte
    body_timeout_seconds: float = 30.0  # from the end of the headers to the end of the body
    # Open connections (parked polls count); beyond it a fast 503. 0: from the file
    # descriptor limit, keeping a reserve for the database, Redis and logs.
    max_connections: int = 0
    max_connections_per_ip: int = 0  # 0: no per-address limit (e.g. behind a proxy)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults <- LATTICE_GATEWAY_<FIELD> variables <- explicit overrides (non-None)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            variable = "LATTICE_GATEWAY_" + f.name.upper()
            raw = os.environ.get(variable)
            if raw is None:
                continue
            try:
                if f.type in ("float", float):
                    values[f.name] = float(raw)
                elif f.type in ("int", int):
                    values[f.name] = int(raw)
                elif f.type == "tuple[str, ...]":
                    values[f.name] = tuple(raw.replace(",", " ").split())
                else:
                    values[f.name] = raw
            except ValueError:
                raise ValueError(f"{variable} must be a number, got {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)
