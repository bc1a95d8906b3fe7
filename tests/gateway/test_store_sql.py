"""The SQL store on SQLite and on the real PostgreSQL (a private schema per test)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from lattice_gateway.services import SCOPE_INFERENCE, SCOPE_MANAGE
from lattice_gateway.store import SqlStore
from lattice_gateway.store.migrations import MIGRATIONS, latest_version
from lattice_protocol import ErrorCode, KeyPair, LatticeError, hash_secret
from tests.gateway.conftest import _drop_schema

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path, lattice_home: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "gateway.db")
    return str(request.getfixturevalue("postgres_url"))


async def _paired_runtime(store: SqlStore) -> tuple[str, str]:
    issued = await store.create_api_key("acme", [SCOPE_MANAGE])
    runtime = await store.create_runtime(issued.account_id, "Mac", "local-model")
    minted = await store.mint_bootstrap_token(runtime.lattice_id, 600)
    redeemed = await store.redeem_bootstrap_token(
        minted.token, daemon_public_key=KeyPair.generate().public_text(), daemon_version="1")
    return runtime.lattice_id, redeemed.daemon_token


async def test_migrations_are_versioned_and_run_once(database: str) -> None:
    store = await SqlStore.open(database)
    try:
        keys = await store.gateway_keypair()
        async with store._engine.connect() as conn:
            versions = (await conn.execute(sa.text(
                "SELECT version FROM schema_migrations ORDER BY version"))).scalars().all()
        assert versions == [m.version for m in MIGRATIONS]
        assert versions[-1] == latest_version()
    finally:
        await store.close()
    reopened = await SqlStore.open(database)  # nothing pending: no error, same records
    try:
        assert (await reopened.gateway_keypair()).public_text() == keys.public_text()
        async with reopened._engine.connect() as conn:
            count = (await conn.execute(sa.text("SELECT count(*) FROM schema_migrations"))
                     ).scalar_one()
        assert count == len(MIGRATIONS)
    finally:
        await reopened.close()


async def test_twenty_concurrent_redeems_one_winner(database: str) -> None:
    store = await SqlStore.open(database)
    try:
        issued = await store.create_api_key("acme", [SCOPE_MANAGE])
        runtime = await store.create_runtime(issued.account_id, "Mac", "local-model")
        minted = await store.mint_bootstrap_token(runtime.lattice_id, 600)
        keys = [KeyPair.generate().public_text() for _ in range(20)]
        outcomes = await asyncio.gather(*(
            store.redeem_bootstrap_token(minted.token, daemon_public_key=k, daemon_version="1")
            for k in keys), return_exceptions=True)
        winners = [o for o in outcomes if not isinstance(o, BaseException)]
        losers = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(winners) == 1
        assert all(isinstance(e, LatticeError) and e.code is ErrorCode.BOOTSTRAP_TOKEN_USED
                   for e in losers), losers
        # The stored pairing is the winner's: its key, its daemon token.
        stored = await store.get_runtime(runtime.lattice_id)
        assert stored is not None and stored.status == "paired"
        assert stored.daemon_public_key == winners[0].runtime.daemon_public_key
        found = await store.runtime_for_daemon_token(winners[0].daemon_token)
        assert found is not None and found.lattice_id == runtime.lattice_id
    finally:
        await store.close()


async def test_revoke_is_seen_at_once_through_the_caches(database: str) -> None:
    store = await SqlStore.open(database, cache_ttl=60.0)
    try:
        lattice_id, daemon_token = await _paired_runtime(store)
        assert (await store.runtime_for_daemon_token(daemon_token)).status == "paired"
        assert (await store.get_runtime(lattice_id)).status == "paired"  # both cached now
        await store.revoke_runtime(lattice_id)
        by_token = await store.runtime_for_daemon_token(daemon_token)
        assert by_token is not None and by_token.status == "revoked"  # still found: 403
        assert (await store.get_runtime(lattice_id)).status == "revoked"
    finally:
        await store.close()


async def test_session_report_updates_models(database: str) -> None:
    store = await SqlStore.open(database, cache_ttl=60.0)
    try:
        lattice_id, _ = await _paired_runtime(store)
        await store.get_runtime(lattice_id)
        await store.record_daemon_session(lattice_id, daemon_version="0.2.0",
                                          models=["llama3.2:3b", "qwen2.5:7b"],
                                          default_model="llama3.2:3b")
        runtime = await store.get_runtime(lattice_id)
        assert runtime is not None
        assert runtime.models == ("llama3.2:3b", "qwen2.5:7b")
        assert runtime.default_model == "llama3.2:3b"
        assert runtime.daemon_version == "0.2.0"
        assert runtime.last_seen_at is not None
    finally:
        await store.close()


async def test_credentials_hashed_scoped_revocable(database: str) -> None:
    store = await SqlStore.open(database)
    try:
        key = await store.create_api_key("acme", [SCOPE_INFERENCE, SCOPE_INFERENCE])
        assert key.scopes == (SCOPE_INFERENCE,)
        record = await store.credential(key.secret)
        assert record is not None and record.scopes == frozenset({SCOPE_INFERENCE})
        assert record.kind == "api_key" and record.expires_ms is None and not record.revoked
        token = await store.create_access_token("acme", [SCOPE_MANAGE], ttl_seconds=30)
        token_record = await store.credential(token.secret)
        assert token_record is not None and token_record.kind == "access_token"
        assert token_record.account_id == key.account_id  # same account by name
        assert token_record.expires_ms is not None
        async with store._engine.connect() as conn:
            hashes = set((await conn.execute(sa.text("SELECT secret_hash FROM credentials"))
                          ).scalars())
        assert hashes == {hash_secret(key.secret), hash_secret(token.secret)}
        assert await store.revoke_credential(key.secret)
        assert (await store.credential(key.secret)).revoked
        assert not await store.revoke_credential(key.secret)  # already revoked
        assert await store.credential("sk_" + "x" * 43) is None
        with pytest.raises(ValueError):
            await store.create_api_key("acme", [])
    finally:
        await store.close()


async def test_concurrent_account_creation_converges(database: str) -> None:
    store = await SqlStore.open(database)
    try:
        ids = await asyncio.gather(*(store.ensure_account("shared") for _ in range(8)))
        assert len(set(ids)) == 1
    finally:
        await store.close()


async def test_expired_and_used_are_distinct(database: str) -> None:
    store = await SqlStore.open(database)
    try:
        issued = await store.create_api_key("acme", [SCOPE_MANAGE])
        runtime = await store.create_runtime(issued.account_id, "Mac", "local-model")
        expiring = await store.mint_bootstrap_token(runtime.lattice_id, 60)
        key = KeyPair.generate().public_text()
        store.clock = lambda: expiring.expires_ms / 1000 + 1  # one second past expiry
        with pytest.raises(LatticeError) as expired:
            await store.redeem_bootstrap_token(expiring.token, daemon_public_key=key,
                                               daemon_version=None)
        assert expired.value.code is ErrorCode.BOOTSTRAP_TOKEN_EXPIRED
        with pytest.raises(LatticeError) as unknown:
            await store.redeem_bootstrap_token("plrt_v1_" + "q" * 43, daemon_public_key=key,
                                               daemon_version=None)
        assert unknown.value.code is ErrorCode.INVALID_BOOTSTRAP_TOKEN
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_schemas_isolate_parallel_tests(postgres_url: str) -> None:
    other_url = postgres_url.rsplit("=", 1)[0] + "=" + postgres_url.rsplit("=", 1)[1] + "_b"
    first = await SqlStore.open(postgres_url)
    second = await SqlStore.open(other_url)
    try:
        issued = await first.create_api_key("acme", [SCOPE_MANAGE])
        assert await second.credential(issued.secret) is None
        assert (await first.credential(issued.secret)) is not None
    finally:
        await first.close()
        await second.close()
        await _drop_schema(other_url.rsplit("=", 1)[1])


async def test_a_new_migration_step_runs_once_on_an_existing_database(database: str) -> None:
    from lattice_gateway.store.migrations import Migration, migrate

    store = await SqlStore.open(database)
    try:
        await store.create_api_key("acme", [SCOPE_MANAGE])
        calls: list[int] = []

        def add_notes(conn: sa.Connection) -> None:
            calls.append(1)
            conn.execute(sa.text("CREATE TABLE runtime_notes (lattice_id VARCHAR(64))"))

        upgraded = (*MIGRATIONS, Migration(latest_version() + 1, "notes", add_notes))
        async with store._writer.begin() as conn:
            ran = await conn.run_sync(lambda c: migrate(c, upgraded))
        assert ran == [latest_version() + 1]
        async with store._writer.begin() as conn:
            assert await conn.run_sync(lambda c: migrate(c, upgraded)) == []
        assert calls == [1]
        async with store._engine.connect() as conn:  # earlier data untouched
            assert (await conn.execute(sa.text("SELECT count(*) FROM credentials"))
                    ).scalar_one() == 1
            assert (await conn.execute(sa.text("SELECT count(*) FROM runtime_notes"))
                    ).scalar_one() == 0
    finally:
        await store.close()
