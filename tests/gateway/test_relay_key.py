"""The gateway's relay private key stays out of the database (lattice_gateway/relay_key.py):
a 0600 key file, the database holding only the public key; a mismatched key file stops
the gateway; a database of an earlier gateway has its key moved out; rotation."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from lattice_daemon.paths import get_paths
from lattice_gateway.relay_key import GatewayKeyError, fingerprint
from lattice_gateway.store import SqlStore
from lattice_gateway.store.migrations import MIGRATIONS, migrate
from lattice_protocol import KeyPair
from tests.daemon.support import DaemonProcess, pair_runtime, ping, write_config
from tests.e2e.harness import create_runtime, mint_bootstrap
from tests.servers import run_ollama_server
from tests.support.gateway import run_coroutine_blocking, run_gateway
from tests.support.net import wait_until


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _meta(database: str) -> dict[str, str]:
    store = await SqlStore.open(database)
    try:
        async with store._engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT key, value FROM gateway_meta"))).all()
        return {row.key: row.value for row in rows}
    finally:
        await store.close()


async def test_the_key_is_a_0600_file_and_the_database_holds_only_the_public_key(
        tmp_path: Path) -> None:
    database = tmp_path / "data" / "gateway.db"  # a directory the gateway makes
    store = await SqlStore.open(str(database))
    try:
        keys = await store.gateway_keypair()
        await store.create_api_key("acme", ["lattice:compute:inference"])  # -wal exists now
        key_file = database.parent / "relay.key"
        assert store.key_file == key_file
        assert KeyPair.from_private_text(key_file.read_text()).public_text() \
            == keys.public_text()
        assert _mode(key_file) == 0o600
        assert _mode(database.parent) == 0o700
        for name in ("gateway.db", "gateway.db-wal", "gateway.db-shm"):
            assert _mode(database.parent / name) == 0o600, name
    finally:
        await store.close()
    assert await _meta(str(database)) == {"gateway_public_key": keys.public_text()}
    private = keys.private_text().encode()
    for name in ("gateway.db", "gateway.db-wal"):
        path = database.parent / name
        assert not path.exists() or private not in path.read_bytes()


async def test_a_key_file_that_does_not_match_the_database_is_refused(tmp_path: Path) -> None:
    database = str(tmp_path / "gateway.db")
    store = await SqlStore.open(database)
    try:
        keys = await store.gateway_keypair()
        key_file = store.key_file
        key_file.write_text(KeyPair.generate().private_text())
        with pytest.raises(GatewayKeyError) as wrong:
            await store.gateway_keypair()
        assert fingerprint(keys.public_text()) in str(wrong.value)
        assert str(key_file) in str(wrong.value)
        key_file.unlink()  # and none at all: never a fresh key for a database in use
        with pytest.raises(GatewayKeyError, match="holds no key file"):
            await store.gateway_keypair()
        assert not key_file.exists()
    finally:
        await store.close()


def test_a_replica_with_another_key_does_not_start(tmp_path: Path) -> None:
    database = str(tmp_path / "gateway.db")
    run_coroutine_blocking(_first_start(database))
    other = tmp_path / "other.key"
    other.write_text(KeyPair.generate().private_text())
    other.chmod(0o600)
    result = subprocess.run(
        [sys.executable, "-m", "lattice_gateway", "serve", "--port", "0",
         "--database", database],
        env={**os.environ, "LATTICE_GATEWAY_KEY_FILE": str(other)},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "does not match its database" in result.stderr
    assert str(other) in result.stderr and "Traceback" not in result.stderr


async def _first_start(database: str) -> str:
    store = await SqlStore.open(database)
    try:
        return (await store.gateway_keypair()).public_text()
    finally:
        await store.close()


async def _write_as_an_earlier_gateway(database: str, keys: KeyPair) -> None:
    """The schema and key row an earlier gateway left: versions 1-2, private key in
    gateway_meta."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{database}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: migrate(c, MIGRATIONS[:2]))
            await conn.execute(sa.text(
                "INSERT INTO gateway_meta (key, value) VALUES ('gateway_private_key', :v)"),
                {"v": keys.private_text()})
    finally:
        await engine.dispose()


@pytest.mark.e2e
def test_an_earlier_gateways_key_moves_out_of_the_database(tmp_path: Path,
                                                           lattice_home: Path) -> None:
    old_keys = KeyPair.generate()
    database = tmp_path / "gateway.db"
    run_coroutine_blocking(_write_as_an_earlier_gateway(str(database), old_keys))
    with run_gateway(tmp_path) as gw:
        key = gw.create_key("acme")
        runtime = create_runtime(gw.url, key)
        token = mint_bootstrap(gw.url, key, runtime["latticeId"])["bootstrapToken"]
        redeemed = httpx.post(f"{gw.url}/v1/relay/redeem", timeout=10, json={
            "bootstrapToken": token, "daemonPublicKey": KeyPair.generate().public_text(),
            "daemonVersion": "test"})
        assert redeemed.status_code == 201, redeemed.text
        # Daemons paired before the upgrade hold this public key: it did not change.
        assert redeemed.json()["gatewayPublicKey"] == old_keys.public_text()
    key_file = tmp_path / "relay.key"
    assert key_file.read_text().strip() == old_keys.private_text()
    assert _mode(key_file) == 0o600
    assert run_coroutine_blocking(_meta(str(database))) == {
        "gateway_public_key": old_keys.public_text()}


def _rotate(database: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lattice_gateway", "keys", "rotate-relay-key",
         "--database", database, *extra], capture_output=True, text=True, timeout=60)


@pytest.mark.e2e
def test_rotation_unpairs_daemons_which_say_re_pair_required(tmp_path: Path,
                                                             lattice_home: Path) -> None:
    paths = get_paths()
    database = str(tmp_path / "gateway.db")
    with run_ollama_server(models=["llama3.2:3b"]) as ollama, \
            run_gateway(tmp_path, poll_window_seconds=2) as gw:
        runtime = pair_runtime(gw, paths)
        old_public = runtime.relay.gateway_public_key
        write_config(paths, relay=runtime.relay, provider_url=ollama.url)
        with DaemonProcess(paths).start():
            wait_until(lambda: ping(paths.socket)["relay"]["state"] == "connected",
                       timeout=10)

            refused = _rotate(database)  # without --yes: nothing changes
            assert refused.returncode == 1 and "--yes" in refused.stderr
            gw.stop()
            rotated = _rotate(database, "--yes", "--json")
            assert rotated.returncode == 0, rotated.stderr
            answer = json.loads(rotated.stdout)
            assert answer["previousKey"] == fingerprint(old_public)
            assert answer["unpairedRuntimes"] == 1
            new_keys = KeyPair.from_private_text((tmp_path / "relay.key").read_text())
            assert answer["newKey"] == fingerprint(new_keys.public_text())
            assert _mode(tmp_path / "relay.key") == 0o600
            gw.start()

            wait_until(lambda: ping(paths.socket)["relay"]["state"] == "repair_required",
                       timeout=20)
            assert "relay key was rotated since this machine paired" \
                in ping(paths.socket)["relay"]["lastError"]
        listed = httpx.get(f"{gw.url}/v1/personal-runtimes/{runtime.lattice_id}",
                           headers={"x-api-key": runtime.api_key}, timeout=10)
        assert listed.json()["runtime"]["status"] == "unpaired"
        # Pairing again hands out the new public key.
        again = pair_runtime(gw, paths)
        assert again.relay.gateway_public_key == new_keys.public_text()
    assert run_coroutine_blocking(_meta(database)) == {
        "gateway_public_key": new_keys.public_text()}
