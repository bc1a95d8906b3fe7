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
from lattice_gateway.store import schema as t
from lattice_protocol import hash_secret
from tests.e2e.harness import create_runtime
from tests.support.gateway import run_coroutine_blocking, run_gateway

pytestmark = pytest.mark.e2e


async def _write_as_an_earlier_gateway(database: str, legacy_token: str,
                                       legacy_id: str) -> str:
    store = await SqlStore.open(database)
    try:
        account_id = await store.ensure_account("acme")
        now = int(time.time() * 1000)
        await store.execute(sa.insert(t.credentials).values(
            secret_hash=hash_secret(legacy_token), kind="access_token", account_id=account_id,
            scopes=" ".join(ALL_SCOPES), created_ms=now, expires_ms=now + 3_600_000))
        await store.execute(sa.insert(t.runtimes).values(
            lattice_id=legacy_id, account_id=account_id, display_name="Old laptop",
            execution_backend="local-model", status="unpaired", created_ms=now,
            updated_ms=now))
        return account_id
    finally:
        await store.close()


def test_old_ids_and_access_tokens_keep_working(tmp_path: Path, lattice_home: Path) -> None:
    legacy_token = "lat_v1_" + secrets.token_urlsafe(32)
    legacy_id = "prt_" + secrets.token_hex(10)
    account_id = run_coroutine_blocking(_write_as_an_earlier_gateway(
        str(tmp_path / "gateway.db"), legacy_token, legacy_id))
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
