"""The gateway's durable records on SQLAlchemy Core (async): SQLite or PostgreSQL.

Hot paths (every daemon poll authenticates its token, every chat request looks up its
runtime and credential) are served from short-TTL in-memory caches; anything this process
changes (revoke, redeem, session register) invalidates the affected entries at once.
Credentials are cached for at most ``CREDENTIAL_CACHE_SECONDS``: a key revoked by the CLI
or another replica fails on every replica within that bound.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lattice_protocol import (
    ErrorCode,
    KeyPair,
    LatticeError,
    TokenKind,
    hash_secret,
    new_access_token,
    new_account_id,
    new_api_key,
    new_bootstrap_token,
    new_daemon_token,
    new_lattice_id,
    token_kind,
)

from ..relay_key import create_key_file, read_key_file, resolve_key_file
from ..relay_key import mismatch as key_mismatch
from ..services import Runtime
from . import schema as t
from .cache import TtlCache
from .migrations import KEY_FILE_INFO, migrate, new_credential_id
from .records import (
    CredentialInfo,
    CredentialKind,
    CredentialRecord,
    IssuedCredential,
    MintedBootstrapToken,
    RedeemedRuntime,
    iso_from_ms,
)
from .url import DatabaseTarget, gateway_data_dir, resolve_database

log = logging.getLogger("lattice_gateway.store")

# How long a credential lookup is reused. Revocation promises "fails within one second on
# every replica"; 0.5 s leaves the other half for the request that notices it. A miss costs
# one primary-key query, so a busy credential costs each replica two queries a second.
CREDENTIAL_CACHE_SECONDS = 0.5
# gateway_meta rows: the relay public key (the private key lives in the key file,
# lattice_gateway/relay_key.py); earlier gateways kept the private key here.
_GATEWAY_PUBLIC_KEY = "gateway_public_key"
_LEGACY_PRIVATE_KEY = "gateway_private_key"
_SQLITE_BUSY_TIMEOUT_MS = 10_000
# PostgreSQL: seconds to connect, and for one statement (the gateway's are all short).
PG_CONNECT_TIMEOUT = 5.0
PG_COMMAND_TIMEOUT = 10.0


def _install_sqlite_pragmas(engine: AsyncEngine) -> None:
    """WAL, busy timeout, foreign keys; write transactions take the lock up front.

    ``BEGIN IMMEDIATE`` for writes: a deferred transaction that reads and then writes can
    fail with SQLITE_BUSY when another writer committed in between; taking the write lock
    first makes concurrent writers queue on the busy timeout instead.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("lattice_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _private_sqlite_files(path: Path) -> None:
    """The database and its -wal/-shm: 0600 (SQLite gives the -wal/-shm files the
    database file's mode), in a 0700 directory when the gateway makes it."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
    elif directory == gateway_data_dir():  # ours (an earlier gateway made it 0755)
        os.chmod(directory, 0o700)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(file.stat().st_mode) & 0o077:
                os.chmod(file, 0o600)


class SqlStore:
    """Accounts, credentials, runtimes, bootstrap tokens and the gateway keypair."""

    def __init__(self, engine: AsyncEngine, target: DatabaseTarget, *,
                 clock: Callable[[], float] = time.time, cache_ttl: float = 2.0,
                 key_file: str | None = None) -> None:
        self._engine = engine
        self._writer = engine.execution_options(lattice_write=True)
        self.target = target
        self.key_file = resolve_key_file(key_file, target)
        # Wall clock for expiry decisions; tests replace it to move time without sleeping.
        self.clock = clock
        self._credentials: TtlCache[str, CredentialRecord | None] = TtlCache(
            min(cache_ttl, CREDENTIAL_CACHE_SECONDS))
        # credential_id -> when it was last used, since the last flush (see note_used).
        self._used_since_flush: dict[str, int] = {}
        self._runtimes: TtlCache[str, Runtime | None] = TtlCache(cache_ttl)
        self._daemon_tokens: TtlCache[str, Runtime] = TtlCache(cache_ttl)
        # Whether opening this store created the schema (a database nobody used before).
        self.created_now = False

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, database: str | None, *, clock: Callable[[], float] = time.time,
                   cache_ttl: float = 2.0, key_file: str | None = None) -> SqlStore:
        """Connect and bring the schema up to date (runs pending migrations).

        ``key_file``: the relay key file setting (None: the default place, see
        ``relay_key.resolve_key_file``); a migration may move the key there.
        """
        target = resolve_database(database)
        if target.dialect == "sqlite":
            assert target.sqlite_path is not None
            _private_sqlite_files(target.sqlite_path)
            engine = create_async_engine(target.url, pool_size=8, max_overflow=16)
            _install_sqlite_pragmas(engine)
        else:
            # Bounded waits: a PostgreSQL that stops answering (host gone, network
            # blackholed) fails requests with an error within seconds instead of holding
            # them, and their connections, until TCP gives up (hours).
            connect_args: dict[str, Any] = {"timeout": PG_CONNECT_TIMEOUT,
                                            "command_timeout": PG_COMMAND_TIMEOUT}
            if target.pg_schema:
                connect_args["server_settings"] = {"search_path": target.pg_schema}
            engine = create_async_engine(target.url, pool_size=10, max_overflow=20,
                                         pool_pre_ping=True, pool_timeout=PG_COMMAND_TIMEOUT,
                                         connect_args=connect_args)
        store = cls(engine, target, clock=clock, cache_ttl=cache_ttl, key_file=key_file)
        try:
            await store._migrate()
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def _migrate(self) -> None:
        async with self._writer.begin() as conn:
            if self.target.pg_schema:  # validated in url.py: [A-Za-z][A-Za-z0-9_]*
                schema = self.target.pg_schema
                await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            ran = await conn.run_sync(self._migrate_with_key_file)
        self.created_now = 1 in ran
        if ran:
            log.info("database %s migrated to version %s", self.target.display(), ran[-1])

    def _migrate_with_key_file(self, conn: Connection) -> list[int]:
        # The step that moves the relay key out of the database needs to know where to.
        conn.info[KEY_FILE_INFO] = self.key_file
        try:
            return migrate(conn)
        finally:
            conn.info.pop(KEY_FILE_INFO, None)

    async def close(self) -> None:
        await self._engine.dispose()

    async def ping(self) -> None:
        """One round trip to the database (``/readyz``); raises when it is unreachable."""
        async with self._engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- gateway keypair -------------------------------------------------------------------

    async def gateway_keypair(self) -> KeyPair:
        """The relay keypair from the key file, checked against the public key this
        database recorded. On a database's first start the key file is created (or an
        existing one adopted: replicas sharing a mounted secret) and its public key
        recorded; after that, a missing or different key file is a ``GatewayKeyError``."""
        recorded = await self.gateway_public_key()
        keys = read_key_file(self.key_file)
        if recorded is None:
            if keys is None:
                keys = create_key_file(self.key_file, KeyPair.generate())
            recorded = await self._record_gateway_public_key(keys.public_text())
        if keys is None or keys.public_text() != recorded:
            raise key_mismatch(self.key_file, keys, recorded)
        return keys

    async def gateway_public_key(self) -> str | None:
        query = sa.select(t.gateway_meta.c.value).where(
            t.gateway_meta.c.key == _GATEWAY_PUBLIC_KEY)
        async with self._engine.connect() as conn:
            value: str | None = (await conn.execute(query)).scalar_one_or_none()
        return value

    async def _record_gateway_public_key(self, public_text: str) -> str:
        """Record the public key unless one is; the recorded one (another replica may
        have been first)."""
        try:
            async with self._writer.begin() as conn:
                await conn.execute(sa.insert(t.gateway_meta).values(
                    key=_GATEWAY_PUBLIC_KEY, value=public_text))
            return public_text
        except IntegrityError:
            recorded = await self.gateway_public_key()
            assert recorded is not None
            return recorded

    async def rotate_gateway_public_key(self, old: str, new: str) -> int:
        """Record ``new`` in place of ``old`` and un-pair every paired runtime: their
        daemons hold ``old``. The daemon token hash stays, so a daemon that presents it is
        told the key was rotated (``auth.authenticate_daemon``); no route serves an
        un-paired runtime's daemon, and a redeem replaces the token. The number un-paired."""
        meta, c = t.gateway_meta.c, t.runtimes.c
        async with self._writer.begin() as conn:
            changed = await conn.execute(sa.update(t.gateway_meta).where(
                meta.key == _GATEWAY_PUBLIC_KEY, meta.value == old).values(value=new))
            if changed.rowcount != 1:
                raise ValueError("the database's relay key changed meanwhile; run the "
                                 "command again")
            unpaired = await conn.execute(sa.update(t.runtimes).where(
                c.status == "paired").values(
                status="unpaired", daemon_public_key=None, updated_ms=self._now_ms()))
        self._runtimes.clear()
        self._daemon_tokens.clear()
        return int(unpaired.rowcount)

    async def served_by_a_gateway(self) -> bool:
        """Whether a gateway has ever served this database.

        The relay key is recorded by the first gateway that starts on a database (its
        lifespan), and by nothing else: the admin commands never create it.
        """
        query = sa.select(t.gateway_meta.c.key).where(
            t.gateway_meta.c.key.in_([_GATEWAY_PUBLIC_KEY, _LEGACY_PRIVATE_KEY]))
        async with self._engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    # -- accounts and credentials ----------------------------------------------------------

    async def ensure_account(self, name: str) -> str:
        """The id of the account called ``name``, created if needed."""
        name = name.strip()
        if not name or len(name) > 200:
            raise ValueError("account name must be 1..200 characters")
        query = sa.select(t.accounts.c.account_id).where(t.accounts.c.name == name)
        async with self._engine.connect() as conn:
            found = (await conn.execute(query)).scalar_one_or_none()
        if found is not None:
            return str(found)
        account_id = new_account_id()
        try:
            async with self._writer.begin() as conn:
                await conn.execute(sa.insert(t.accounts).values(
                    account_id=account_id, name=name, created_ms=self._now_ms()))
            return account_id
        except IntegrityError:
            async with self._engine.connect() as conn:
                return str((await conn.execute(query)).scalar_one())

    async def create_api_key(self, account_name: str, scopes: Iterable[str], *,
                             name: str | None = None) -> IssuedCredential:
        return await self._issue("api_key", new_api_key(), account_name, scopes, None, name)

    async def create_access_token(self, account_name: str, scopes: Iterable[str],
                                  ttl_seconds: int, *,
                                  name: str | None = None) -> IssuedCredential:
        if ttl_seconds <= 0:
            raise ValueError("ttl must be positive")
        return await self._issue("access_token", new_access_token(), account_name, scopes,
                                 ttl_seconds, name)

    async def _issue(self, kind: CredentialKind, secret: str, account_name: str,
                     scopes: Iterable[str], ttl_seconds: int | None,
                     name: str | None) -> IssuedCredential:
        scope_list = tuple(dict.fromkeys(scopes))
        if not scope_list:
            raise ValueError("at least one scope is required")
        account_id = await self.ensure_account(account_name)
        now = self._now_ms()
        expires = now + ttl_seconds * 1000 if ttl_seconds is not None else None
        credential_id = new_credential_id(kind, secrets.token_hex(8))
        name = name or credential_id
        async with self._writer.begin() as conn:
            await conn.execute(sa.insert(t.credentials).values(
                secret_hash=hash_secret(secret), credential_id=credential_id, name=name,
                kind=kind, account_id=account_id, scopes=" ".join(scope_list),
                created_ms=now, expires_ms=expires))
        return IssuedCredential(secret, credential_id, name, account_id, scope_list, expires)

    async def credential(self, secret: str) -> CredentialRecord | None:
        """What a presented API key / access token grants (cached), or None if unknown.

        Expiry and revocation are left to the caller, which answers 401 for both.
        """
        digest = hash_secret(secret)
        hit, record = self._credentials.get(digest)
        if hit:  # only well-formed, known secrets are ever cached
            return record
        if token_kind(secret) not in (TokenKind.API_KEY, TokenKind.ACCESS):
            return None
        c = t.credentials.c
        # Lookup by the hash (primary key, or the unique index of a rotation's replaced
        # secret): the hash is what is secret-equivalent here, and finding a row by it
        # leaks nothing about other rows' hashes.
        query = sa.select(c.credential_id, c.name, c.account_id, c.kind, c.scopes,
                          c.expires_ms, c.revoked_ms, c.secret_hash,
                          c.previous_valid_until_ms).where(
            sa.or_(c.secret_hash == digest, c.previous_secret_hash == digest))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        record = None if row is None else CredentialRecord(
            credential_id=row.credential_id, name=row.name, account_id=row.account_id,
            kind=row.kind, scopes=frozenset(row.scopes.split()),
            expires_ms=row.expires_ms, revoked=row.revoked_ms is not None,
            grace_until_ms=None if row.secret_hash == digest
            else row.previous_valid_until_ms or 0)
        if record is not None:  # unknown secrets are not cached: the CLI may create them
            self._credentials.put(digest, record)
        return record

    async def revoke_credential(self, secret: str) -> bool:
        """Revoke the credential this secret (current, or replaced in a rotation's grace
        period) belongs to."""
        digest = hash_secret(secret)
        c = t.credentials.c
        async with self._writer.begin() as conn:
            result = await conn.execute(sa.update(t.credentials).where(
                sa.or_(c.secret_hash == digest, c.previous_secret_hash == digest),
                c.revoked_ms.is_(None)).values(revoked_ms=self._now_ms()))
        self._credentials.pop(digest)
        return result.rowcount == 1

    async def revoke_credential_by_id(self, credential_id: str) -> bool:
        """Revoke by public id (both secrets, if in a rotation's grace period). False when
        there is no such credential or it was already revoked."""
        c = t.credentials.c
        async with self._writer.begin() as conn:
            result = await conn.execute(sa.update(t.credentials).where(
                c.credential_id == credential_id, c.revoked_ms.is_(None)).values(
                revoked_ms=self._now_ms()))
        self._credentials.drop_where(
            lambda record: record is not None and record.credential_id == credential_id)
        return result.rowcount == 1

    async def rotate_api_key(self, credential_id: str, grace_seconds: int) -> IssuedCredential:
        """A new secret for this API key (same id, name, scopes); the current secret stays
        valid for ``grace_seconds`` more (0: it fails at once). A secret replaced by an
        earlier rotation stops working now: only the latest one has a grace period.

        ValueError when there is no such active API key.
        """
        if grace_seconds < 0:
            raise ValueError("the grace period cannot be negative")
        c = t.credentials.c
        secret = new_api_key()
        now = self._now_ms()
        async with self._writer.begin() as conn:
            row = (await conn.execute(sa.select(
                c.secret_hash, c.name, c.account_id, c.scopes, c.kind, c.revoked_ms).where(
                c.credential_id == credential_id))).first()
            if row is None or row.kind != "api_key":
                raise ValueError(f"no API key with id {credential_id}")
            if row.revoked_ms is not None:
                raise ValueError(f"the API key {credential_id} is revoked; create a new one")
            await conn.execute(sa.update(t.credentials).where(
                c.credential_id == credential_id, c.secret_hash == row.secret_hash).values(
                secret_hash=hash_secret(secret), previous_secret_hash=row.secret_hash,
                previous_valid_until_ms=now + grace_seconds * 1000))
        self._credentials.drop_where(
            lambda record: record is not None and record.credential_id == credential_id)
        scopes = tuple(row.scopes.split())
        return IssuedCredential(secret, credential_id, row.name, row.account_id, scopes, None)

    async def list_credentials(self, kind: CredentialKind,
                               account_name: str | None = None) -> list[CredentialInfo]:
        """API keys or access tokens, oldest first, optionally of one account (by name)."""
        c, a = t.credentials.c, t.accounts.c
        query = sa.select(
            c.credential_id, c.name, c.kind, c.account_id, a.name.label("account_name"),
            c.scopes, c.created_ms, c.expires_ms, c.revoked_ms, c.last_used_ms,
            c.previous_valid_until_ms,
        ).join_from(t.credentials, t.accounts, c.account_id == a.account_id).where(
            c.kind == kind).order_by(c.created_ms, c.credential_id)
        if account_name is not None:
            query = query.where(a.name == account_name.strip())
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [CredentialInfo(
            credential_id=r.credential_id, name=r.name, kind=r.kind, account_id=r.account_id,
            account_name=r.account_name, scopes=tuple(r.scopes.split()),
            created_ms=r.created_ms, expires_ms=r.expires_ms, revoked_ms=r.revoked_ms,
            last_used_ms=r.last_used_ms, previous_valid_until_ms=r.previous_valid_until_ms,
        ) for r in rows]

    def note_credential_used(self, credential_id: str) -> None:
        """Remember that a credential was just used; ``flush_credential_usage`` writes it.

        Memory only (no write per request): at most one entry per credential between
        flushes, so the batch is bounded by the number of credentials in use.
        """
        self._used_since_flush[credential_id] = self._now_ms()

    async def flush_credential_usage(self) -> int:
        """Write the remembered last-used times: one UPDATE statement for the batch (at
        most one row write per credential), never moving a time backwards (another replica
        may have written a later one). The number of credentials written."""
        batch, self._used_since_flush = self._used_since_flush, {}
        if not batch:
            return 0
        c = t.credentials.c
        statement = sa.update(t.credentials).where(
            c.credential_id == sa.bindparam("id"),
            sa.or_(c.last_used_ms.is_(None), c.last_used_ms < sa.bindparam("used"))).values(
            last_used_ms=sa.bindparam("used"))
        try:
            async with self._writer.begin() as conn:
                await conn.execute(statement, [{"id": credential_id, "used": used}
                                               for credential_id, used in batch.items()])
        except Exception:
            # Keep them for the next flush (unless newer uses replaced them meanwhile).
            for credential_id, used in batch.items():
                self._used_since_flush.setdefault(credential_id, used)
            raise
        return len(batch)

    # -- runtimes --------------------------------------------------------------------------

    @staticmethod
    def _runtime(row: Any) -> Runtime:
        models: tuple[str, ...] = ()
        if row.models:
            try:
                models = tuple(str(m) for m in json.loads(row.models))
            except (ValueError, TypeError):
                models = ()
        return Runtime(
            lattice_id=row.lattice_id, account_id=row.account_id,
            display_name=row.display_name, execution_backend=row.execution_backend,
            status=row.status, created_at=iso_from_ms(row.created_ms),
            updated_at=iso_from_ms(row.updated_ms), daemon_public_key=row.daemon_public_key,
            default_model=row.default_model, models=models, daemon_version=row.daemon_version,
            last_seen_at=iso_from_ms(row.last_seen_ms) if row.last_seen_ms else None)

    def _forget_runtime(self, lattice_id: str) -> None:
        self._runtimes.pop(lattice_id)
        self._daemon_tokens.drop_where(lambda rt: rt.lattice_id == lattice_id)

    async def create_runtime(self, account_id: str, display_name: str,
                             execution_backend: str) -> Runtime:
        now = self._now_ms()
        lattice_id = new_lattice_id()
        async with self._writer.begin() as conn:
            await conn.execute(sa.insert(t.runtimes).values(
                lattice_id=lattice_id, account_id=account_id, display_name=display_name,
                execution_backend=execution_backend, status="unpaired", created_ms=now,
                updated_ms=now))
            row = (await conn.execute(
                sa.select(t.runtimes).where(t.runtimes.c.lattice_id == lattice_id))).one()
        self._runtimes.pop(lattice_id)
        return self._runtime(row)

    async def list_runtimes(self, account_id: str) -> list[Runtime]:
        c = t.runtimes.c
        query = sa.select(t.runtimes).where(c.account_id == account_id).order_by(
            c.created_ms, c.lattice_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._runtime(r) for r in rows]

    async def get_runtime(self, lattice_id: str) -> Runtime | None:
        hit, cached = self._runtimes.get(lattice_id)
        if hit:
            return cached
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                sa.select(t.runtimes).where(t.runtimes.c.lattice_id == lattice_id))).first()
        runtime = None if row is None else self._runtime(row)
        self._runtimes.put(lattice_id, runtime)
        return runtime

    async def revoke_runtime(self, lattice_id: str, *,
                             last_seen_ms: int | None = None) -> Runtime | None:
        """Mark revoked (idempotent). The daemon token hash is kept so the daemon gets 403.

        ``last_seen_ms``: the daemon's last accepted contact (from the broker), kept as the
        record's final ``lastSeenAt``.
        """
        c = t.runtimes.c
        values: dict[str, Any] = {"status": "revoked", "updated_ms": self._now_ms()}
        if last_seen_ms is not None:
            values["last_seen_ms"] = last_seen_ms
        async with self._writer.begin() as conn:
            await conn.execute(sa.update(t.runtimes).where(
                c.lattice_id == lattice_id, c.status != "revoked").values(**values))
            row = (await conn.execute(
                sa.select(t.runtimes).where(c.lattice_id == lattice_id))).first()
        self._forget_runtime(lattice_id)
        return None if row is None else self._runtime(row)

    async def runtime_for_daemon_token(self, token: str) -> Runtime | None:
        """The runtime holding this daemon token (revoked ones too), or None."""
        digest = hash_secret(token)
        hit, cached = self._daemon_tokens.get(digest)
        if hit:  # only well-formed, known tokens are ever cached
            return cached
        if token_kind(token) is not TokenKind.DAEMON:
            return None
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(t.runtimes).where(
                t.runtimes.c.daemon_token_hash == digest))).first()
        if row is None:
            return None
        runtime = self._runtime(row)
        self._daemon_tokens.put(digest, runtime)
        return runtime

    async def record_daemon_session(self, lattice_id: str, *, daemon_version: str,
                                    models: list[str], default_model: str | None) -> None:
        """What a daemon reported at session register: shown as the runtime's models."""
        c = t.runtimes.c
        now = self._now_ms()
        async with self._writer.begin() as conn:
            await conn.execute(sa.update(t.runtimes).where(
                c.lattice_id == lattice_id, c.status == "paired").values(
                daemon_version=daemon_version[:64], models=json.dumps(list(models)),
                default_model=default_model, last_seen_ms=now, updated_ms=now))
        self._forget_runtime(lattice_id)

    # -- bootstrap tokens ------------------------------------------------------------------

    async def mint_bootstrap_token(self, lattice_id: str, ttl_seconds: int) -> MintedBootstrapToken:
        token = new_bootstrap_token()
        now = self._now_ms()
        expires = now + ttl_seconds * 1000
        async with self._writer.begin() as conn:
            await conn.execute(sa.insert(t.bootstrap_tokens).values(
                token_hash=hash_secret(token), lattice_id=lattice_id, created_ms=now,
                expires_ms=expires))
        return MintedBootstrapToken(token, lattice_id, expires)

    async def redeem_bootstrap_token(self, token: str, *, daemon_public_key: str,
                                     daemon_version: str | None) -> RedeemedRuntime:
        """Spend a bootstrap token once and pair the runtime to this daemon key.

        One conditional UPDATE (``used_ms IS NULL`` and not expired) decides the winner of
        concurrent redeems; losers then learn why from a read. A new daemon token replaces
        any earlier one. Raises LatticeError with the contract's distinct codes.
        """
        if token_kind(token) is not TokenKind.BOOTSTRAP:
            raise LatticeError(ErrorCode.INVALID_BOOTSTRAP_TOKEN, "unknown bootstrap token")
        digest = hash_secret(token)
        bt, rt = t.bootstrap_tokens.c, t.runtimes.c
        now = self._now_ms()
        daemon_token = new_daemon_token()
        async with self._writer.begin() as conn:
            spent = await conn.execute(sa.update(t.bootstrap_tokens).where(
                bt.token_hash == digest, bt.used_ms.is_(None), bt.expires_ms > now).values(
                used_ms=now))
            if spent.rowcount == 1:
                lattice_id = (await conn.execute(sa.select(bt.lattice_id).where(
                    bt.token_hash == digest))).scalar_one()
                paired = await conn.execute(sa.update(t.runtimes).where(
                    rt.lattice_id == lattice_id, rt.status != "revoked").values(
                    status="paired", daemon_public_key=daemon_public_key,
                    daemon_token_hash=hash_secret(daemon_token),
                    daemon_version=(daemon_version or None) and daemon_version[:64],
                    updated_ms=now))
                if paired.rowcount == 1:
                    row = (await conn.execute(
                        sa.select(t.runtimes).where(rt.lattice_id == lattice_id))).one()
                    redeemed = RedeemedRuntime(self._runtime(row), daemon_token)
                else:
                    redeemed = None
                    await conn.rollback()  # leave the token unspent; the runtime is revoked
            else:
                redeemed = None
                lattice_id = None
        if redeemed is not None:
            self._forget_runtime(redeemed.runtime.lattice_id)
            return redeemed
        if lattice_id is not None:
            raise LatticeError(ErrorCode.RUNTIME_REVOKED, "this runtime has been revoked")
        raise await self._why_not_redeemable(digest, now)

    async def _why_not_redeemable(self, digest: str, now: int) -> LatticeError:
        bt, rt = t.bootstrap_tokens.c, t.runtimes.c
        query = sa.select(bt.used_ms, bt.expires_ms, rt.status).join_from(
            t.bootstrap_tokens, t.runtimes, bt.lattice_id == rt.lattice_id).where(
            bt.token_hash == digest)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return LatticeError(ErrorCode.INVALID_BOOTSTRAP_TOKEN, "unknown bootstrap token")
        if row.status == "revoked":
            return LatticeError(ErrorCode.RUNTIME_REVOKED, "this runtime has been revoked")
        if row.used_ms is not None:
            return LatticeError(ErrorCode.BOOTSTRAP_TOKEN_USED,
                                "this bootstrap token has already been used; mint a new one")
        return LatticeError(ErrorCode.BOOTSTRAP_TOKEN_EXPIRED,
                            f"this bootstrap token expired at {iso_from_ms(row.expires_ms)}; "
                            "mint a new one")

    # -- test support ----------------------------------------------------------------------

    async def execute(self, statement: Any) -> None:
        """Run one write statement (tests use it to age tokens without sleeping)."""
        async with self._writer.begin() as conn:
            await conn.execute(statement)
        self._credentials.clear()
        self._runtimes.clear()
        self._daemon_tokens.clear()
