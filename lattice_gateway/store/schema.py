"""The current tables, as the queries see them. Migrations (``migrations.py``) build them.

Times are integer milliseconds since the epoch (UTC): exact, portable between SQLite and
PostgreSQL, and cheap to compare. Secrets appear only as ``hash_secret`` hex digests.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Key/value facts about this gateway installation (e.g. its keypair).
gateway_meta = sa.Table(
    "gateway_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

accounts = sa.Table(
    "accounts", metadata,
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

# API keys (kind "api_key", no expiry) and OAuth-style access tokens (kind
# "access_token", expiring), found by the hash of the presented secret; named in lists,
# revocation and the owners' activity logs by their public ``credential_id``.
credentials = sa.Table(
    "credentials", metadata,
    sa.Column("secret_hash", sa.String(64), primary_key=True),
    sa.Column("credential_id", sa.String(40), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.account_id"), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),  # space-separated
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=True),
    sa.Column("revoked_ms", sa.BigInteger, nullable=True),
    sa.Column("last_used_ms", sa.BigInteger, nullable=True),
    # After `keys rotate`: the replaced secret's hash, accepted until previous_valid_until_ms.
    sa.Column("previous_secret_hash", sa.String(64), nullable=True, unique=True),
    sa.Column("previous_valid_until_ms", sa.BigInteger, nullable=True),
)

runtimes = sa.Table(
    "runtimes", metadata,
    sa.Column("lattice_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.account_id"), nullable=False,
              index=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("execution_backend", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # unpaired | paired | revoked
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Column("daemon_public_key", sa.String(64), nullable=True),
    sa.Column("daemon_token_hash", sa.String(64), nullable=True, unique=True),
    sa.Column("daemon_version", sa.String(64), nullable=True),
    sa.Column("models", sa.Text, nullable=True),  # JSON list
    sa.Column("default_model", sa.String(256), nullable=True),
    sa.Column("last_seen_ms", sa.BigInteger, nullable=True),
)

bootstrap_tokens = sa.Table(
    "bootstrap_tokens", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("lattice_id", sa.String(64), sa.ForeignKey("runtimes.lattice_id"), nullable=False,
              index=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    sa.Column("used_ms", sa.BigInteger, nullable=True),
)
