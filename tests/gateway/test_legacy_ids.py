"""A database written by an earlier gateway keeps working: ``prt_...`` runtime ids and
``lat_v1_...`` access tokens are accepted as they are (no migration rewrites them);
everything new gets ``lat_...`` ids and ``loat_v1_...`` tokens."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from lattice_gateway.services import ALL_SCOPES
from lattice_gateway.store import SqlStore
from lattice_gateway.store.migrations import MIGRATIONS, migrate
from lattice_gateway.store.records import CredentialRecord
from lattice_protocol import hash_secret
from tests.e2e.harness import create_runtime
from tests.support.gateway import run_coroutine_blocking, run_gateway

pytestmark = pytest.mark.e2e


def _write_as_an_earlier_gateway(database: Path, legacy_token: str, legacy_id: str) -> str:
    """The schema and rows as a gateway of migration 2 left them: credentials without
    ids or names (migration 3 gives them both)."""
    engine = sa.create_engine(f"sqlite:///{database}")
    account_id = "acct_" + secrets.token_hex(10)
    now = int(time.time() * 1000)
    with engine.begin() as conn:
        migrate(conn, MIGRATIONS[:2])
        conn.execute(sa.text("INSERT INTO accounts VALUES (:id, 'acme', :now)"),
                     {"id": account_id, "now": now})
        conn.execute(sa.text(
            "INSERT INTO credentials (secret_hash, kind, account_id, scopes, created_ms, "
            "expires_ms) VALUES (:hash, 'access_token', :account, :scopes, :now, :expires)"),
            {"hash": hash_secret(legacy_token), "account": account_id,
             "scopes": " ".join(ALL_SCOPES), "now": now, "expires": now + 3_600_000})
        conn.execute(sa.text(
            "INSERT INTO runtimes (lattice_id, account_id, display_name, execution_backend, "
            "status, created_ms, updated_ms) VALUES (:id, :account, 'Old laptop', "
            "'local-model', 'unpaired', :now, :now)"),
            {"id": legacy_id, "account": account_id, "now": now})
    engine.dispose()
    return account_id


async def _stored_credential(database: Path, secret: str) -> CredentialRecord | None:
    store = await SqlStore.open(str(database))
    try:
        return await store.credential(secret)
    finally:
        await store.close()


def test_old_ids_and_access_tokens_keep_working(tmp_path: Path, lattice_home: Path) -> None:
    legacy_token = "lat_v1_" + secrets.token_urlsafe(32)
    legacy_id = "prt_" + secrets.token_hex(10)
    account_id = _write_as_an_earlier_gateway(tmp_path / "gateway.db", legacy_token, legacy_id)
    with run_gateway(tmp_path) as gw:
        bearer = {"authorization": f"Bearer {legacy_token}"}
        old = httpx.get(f"{gw.url}/v1/personal-runtimes/{legacy_id}", headers=bearer, timeout=10)
        assert old.status_code == 200, old.text
        assert old.json()["runtime"]["accountId"] == account_id
        minted = httpx.post(f"{gw.url}/v1/personal-runtimes/{legacy_id}/bootstrap-tokens",
                            headers=bearer, json={}, timeout=10)
        assert minted.status_code == 201, minted.text
        assert f"--bootstrap-token '{minted.json()['bootstrapToken']}'" in minted.json()["command"]

        new = create_runtime(gw.url, gw.create_key("acme"))
        assert new["latticeId"].startswith("lat_") and new["accountId"] == account_id
        fresh_token = gw.create_token("acme")
        assert fresh_token.startswith("loat_v1_")
        listed = httpx.get(f"{gw.url}/v1/personal-runtimes",
                           headers={"authorization": f"Bearer {fresh_token}"}, timeout=10)
        assert [r["latticeId"] for r in listed.json()["runtimes"]] == [legacy_id,
                                                                       new["latticeId"]]

    # Migration 3 named the old credential by a new public id.
    record = run_coroutine_blocking(_stored_credential(tmp_path / "gateway.db", legacy_token))
    assert record is not None and record.credential_id.startswith("tok_")
    assert record.name == record.credential_id
