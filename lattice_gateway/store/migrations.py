"""Versioned schema migrations: an ordered list of steps and a table of applied versions.

At start the store applies, in one transaction, every step whose version is not recorded
yet, each together with its row in ``schema_migrations``. Steps are append-only: a
released step is never edited; a schema change is a new step. On PostgreSQL an advisory
lock serialises replicas that start at the same time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_MIGRATIONS_TABLE = sa.Table(
    "schema_migrations", sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("applied_ms", sa.BigInteger, nullable=False),
)

_PG_LOCK_KEY = 0x1A771CE  # arbitrary, constant: "lattice gateway migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    # The schema as first released. Defined here (not imported from schema.py) so this
    # step keeps creating exactly the v1 tables however schema.py evolves.
    md = sa.MetaData()
    sa.Table("gateway_meta", md,
             sa.Column("key", sa.String(64), primary_key=True),
             sa.Column("value", sa.Text, nullable=False))
    sa.Table("accounts", md,
             sa.Column("account_id", sa.String(64), primary_key=True),
             sa.Column("name", sa.String(200), nullable=False, unique=True),
             sa.Column("created_ms", sa.BigInteger, nullable=False))
    sa.Table("credentials", md,
             sa.Column("secret_hash", sa.String(64), primary_key=True),
             sa.Column("kind", sa.String(16), nullable=False),
             sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.account_id"),
                       nullable=False),
             sa.Column("scopes", sa.Text, nullable=False),
             sa.Column("created_ms", sa.BigInteger, nullable=False),
             sa.Column("expires_ms", sa.BigInteger, nullable=True),
             sa.Column("revoked_ms", sa.BigInteger, nullable=True))
    sa.Table("runtimes", md,
             sa.Column("lattice_id", sa.String(64), primary_key=True),
             sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.account_id"),
                       nullable=False, index=True),
             sa.Column("display_name", sa.String(200), nullable=False),
             sa.Column("execution_backend", sa.String(32), nullable=False),
             sa.Column("status", sa.String(16), nullable=False),
             sa.Column("created_ms", sa.BigInteger, nullable=False),
             sa.Column("updated_ms", sa.BigInteger, nullable=False),
             sa.Column("daemon_public_key", sa.String(64), nullable=True),
             sa.Column("daemon_token_hash", sa.String(64), nullable=True, unique=True),
             sa.Column("daemon_version", sa.String(64), nullable=True),
             sa.Column("models", sa.Text, nullable=True),
             sa.Column("default_model", sa.String(200), nullable=True),
             sa.Column("last_seen_ms", sa.BigInteger, nullable=True))
    sa.Table("bootstrap_tokens", md,
             sa.Column("token_hash", sa.String(64), primary_key=True),
             sa.Column("lattice_id", sa.String(64), sa.ForeignKey("runtimes.lattice_id"),
                       nullable=False, index=True),
             sa.Column("created_ms", sa.BigInteger, nullable=False),
             sa.Column("expires_ms", sa.BigInteger, nullable=False),
             sa.Column("used_ms", sa.BigInteger, nullable=True))
    md.create_all(conn)


def _v2_default_model_256(conn: Connection) -> None:
    # Daemons report model names of up to 256 characters (the relay's text bound), and
    # the chat route's local model may be as long. SQLite does not enforce VARCHAR
    # lengths; PostgreSQL refused longer default models at session register.
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(
            "ALTER TABLE runtimes ALTER COLUMN default_model TYPE VARCHAR(256)"))


def _v3_credential_ids(conn: Connection) -> None:
    # Credentials get a public id (what lists, revocation and the owner's activity log
    # name), a human name (the app), and when they were last used. Rows from before get
    # an id, and their id as their name.
    import secrets

    for column in ("credential_id VARCHAR(40)", "name VARCHAR(200)",
                   "last_used_ms BIGINT"):
        conn.execute(sa.text(f"ALTER TABLE credentials ADD COLUMN {column}"))
    rows = conn.execute(sa.text("SELECT secret_hash, kind FROM credentials")).all()
    for secret_hash, kind in rows:
        credential_id = new_credential_id(kind, secrets.token_hex(8))
        conn.execute(sa.text("UPDATE credentials SET credential_id = :id, name = :id "
                             "WHERE secret_hash = :hash"),
                     {"id": credential_id, "hash": secret_hash})
    conn.execute(sa.text(
        "CREATE UNIQUE INDEX ix_credentials_credential_id ON credentials (credential_id)"))


def _v4_credential_rotation(conn: Connection) -> None:
    # Rotation keeps a credential's id, name and scopes and gives it a new secret; the
    # secret it replaced stays valid until ``previous_valid_until_ms`` (the grace period),
    # found by its own hash through the index.
    for column in ("previous_secret_hash VARCHAR(64)", "previous_valid_until_ms BIGINT"):
        conn.execute(sa.text(f"ALTER TABLE credentials ADD COLUMN {column}"))
    conn.execute(sa.text("CREATE UNIQUE INDEX ix_credentials_previous_secret_hash "
                         "ON credentials (previous_secret_hash)"))


def new_credential_id(kind: str, random_hex: str) -> str:
    """``key_<hex>`` for API keys, ``tok_<hex>`` for access tokens: public, not secret."""
    return ("key_" if kind == "api_key" else "tok_") + random_hex


# The store puts the relay key file's path here (Connection.info) while migrating.
KEY_FILE_INFO = "lattice_relay_key_file"


def _v5_relay_key_out_of_the_database(conn: Connection) -> None:
    # Earlier gateways kept the relay private key in gateway_meta, so a database dump
    # plus the relay queue opened every sealed job. Move it to the key file (0600,
    # fsynced before this transaction commits) and keep only the public key here.
    from lattice_protocol import KeyPair

    from ..relay_key import create_key_file
    from ..relay_key import mismatch as key_mismatch

    meta = sa.table("gateway_meta", sa.column("key"), sa.column("value"))
    private = conn.execute(sa.select(meta.c.value).where(
        meta.c.key == "gateway_private_key")).scalar_one_or_none()
    if private is None:
        return
    key_file = conn.info[KEY_FILE_INFO]
    keys = KeyPair.from_private_text(private)
    written = create_key_file(key_file, keys)  # an existing file is kept, never replaced
    if written.public_text() != keys.public_text():
        raise key_mismatch(key_file, written, keys.public_text())
    conn.execute(sa.delete(meta).where(meta.c.key == "gateway_private_key"))
    conn.execute(sa.insert(meta).values(key="gateway_public_key", value=keys.public_text()))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _v1_initial),
    Migration(2, "runtimes.default_model up to 256 characters", _v2_default_model_256),
    Migration(3, "credentials: public id, name, last used", _v3_credential_ids),
    Migration(4, "credentials: previous secret during a rotation's grace period",
              _v4_credential_rotation),
    Migration(5, "relay private key moved to the key file", _v5_relay_key_out_of_the_database),
)


def applied_versions(conn: Connection) -> set[int]:
    _MIGRATIONS_TABLE.create(conn, checkfirst=True)
    return set(conn.execute(sa.select(_MIGRATIONS_TABLE.c.version)).scalars())


def migrate(conn: Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply pending migrations in order inside the caller's transaction; the versions run."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    done = applied_versions(conn)
    ran: list[int] = []
    for step in sorted(migrations, key=lambda m: m.version):
        if step.version in done:
            continue
        step.apply(conn)
        conn.execute(sa.insert(_MIGRATIONS_TABLE).values(
            version=step.version, name=step.name, applied_ms=int(time.time() * 1000)))
        ran.append(step.version)
    return ran


def latest_version(migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    return max(m.version for m in migrations)
