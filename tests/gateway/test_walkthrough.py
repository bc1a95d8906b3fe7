"""The user's documented walkthrough, over HTTP against a real gateway process:
create -> unpaired -> mint -> redeem + poll -> reachable -> chat -> stop -> offline ->
revoke -> revoked (cannot mint, the old daemon token is refused). And a crash."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.fake_daemon import FakeDaemon, Reply
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import async_wait_until

pytestmark = pytest.mark.e2e

PRESENCE_WINDOW = 1.0
PROMPT = "ping through the relay: a private prompt 7f3a9c"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(Path(tmp_path_factory.mktemp("gw")), poll_window_seconds=2,
                     presence_window_seconds=PRESENCE_WINDOW) as gw:
        yield gw


@pytest.fixture
async def api(gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    key = gateway.create_key("acme")
    async with httpx.AsyncClient(base_url=gateway.url, headers={"x-api-key": key},
                                 trust_env=False, timeout=10) as client:
        yield client


async def status_of(api: httpx.AsyncClient, lattice_id: str) -> str:
    listed = await api.get("/v1/personal-runtimes")
    assert listed.status_code == 200
    by_id = {r["latticeId"]: r for r in listed.json()["runtimes"]}
    return str(by_id[lattice_id]["status"])


async def wait_for_status(api: httpx.AsyncClient, lattice_id: str, wanted: str,
                          timeout: float) -> float:
    started = time.monotonic()

    async def reached() -> bool:
        return await status_of(api, lattice_id) == wanted

    await async_wait_until(reached, timeout=timeout, what=f"status {wanted!r}")
    return time.monotonic() - started


async def create_and_mint(api: httpx.AsyncClient) -> tuple[str, str]:
    created = await api.post("/v1/personal-runtimes",
                             json={"displayName": "Ada's laptop",
                                   "executionBackend": "local-model"})
    assert created.status_code == 201
    lattice_id = created.json()["runtime"]["latticeId"]
    minted = await api.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                            json={"ttlSeconds": 600})
    assert minted.status_code == 201
    return lattice_id, minted.json()["bootstrapToken"]


async def test_walkthrough(gateway: GatewayProcess, api: httpx.AsyncClient) -> None:
    lattice_id, token = await create_and_mint(api)
    assert await status_of(api, lattice_id) == "unpaired"

    daemon = FakeDaemon(gateway.url, reply=Reply(echo=True))
    redeemed = await daemon.redeem(token)
    assert redeemed["latticeId"] == lattice_id
    await daemon.start()
    assert await status_of(api, lattice_id) == "reachable"

    key = api.headers["x-api-key"]
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key,
                                  max_retries=0) as client:
        completion = await client.chat.completions.create(
            model=f"lattice:personal:{lattice_id}",
            messages=[{"role": "user", "content": PROMPT}])
    assert completion.choices[0].message.content == PROMPT

    await daemon.stop()  # graceful: deregisters, offline at once
    assert await status_of(api, lattice_id) == "offline"

    revoked = await api.delete(f"/v1/personal-runtimes/{lattice_id}")
    assert revoked.status_code == 200
    assert revoked.json()["runtime"]["status"] == "revoked"
    assert await status_of(api, lattice_id) == "revoked"
    minted = await api.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                            json={"ttlSeconds": 600})
    assert minted.status_code == 403
    assert minted.json()["error"]["code"] == "runtime_revoked"
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False, timeout=10) as http:
        refused = await http.post("/v1/relay/sessions", headers=daemon.headers, json={
            "daemonVersion": "1", "provider": {"kind": "ollama"}})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "runtime_revoked"

    # Nothing of the conversation or of the secrets is kept: not in the SQLite files
    # (main file, WAL and shared memory: read as the gateway left them), not in its log.
    database = Path(gateway.database)
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    assert b"Ada's laptop" in stored  # the check reads the real records
    for text in (PROMPT, key, token, redeemed["daemonToken"]):
        assert text.encode() not in stored
        assert text not in gateway.log_text()


async def test_killed_daemon_turns_offline_within_the_presence_window(
        gateway: GatewayProcess, api: httpx.AsyncClient) -> None:
    lattice_id, token = await create_and_mint(api)
    daemon = FakeDaemon(gateway.url)
    await daemon.redeem(token)
    await daemon.start()
    assert await status_of(api, lattice_id) == "reachable"
    await daemon.kill()  # its held poll's connection drops; nothing is deregistered
    elapsed = await wait_for_status(api, lattice_id, "offline", timeout=PRESENCE_WINDOW + 3)
    assert elapsed <= PRESENCE_WINDOW + 1.0


async def test_revoke_fails_a_held_request_and_stops_the_daemon(
        gateway: GatewayProcess, api: httpx.AsyncClient) -> None:
    lattice_id, token = await create_and_mint(api)
    daemon = FakeDaemon(gateway.url, reply=Reply(never=True))
    await daemon.redeem(token)
    await daemon.start()
    key = api.headers["x-api-key"]
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key,
                                  max_retries=0) as client:
        request = asyncio.create_task(client.chat.completions.create(
            model=f"lattice:personal:{lattice_id}", messages=[{"role": "user", "content": "x"}]))

        async def has_job() -> bool:
            return bool(daemon.jobs)

        await async_wait_until(has_job, timeout=5, what="the job to reach the daemon")
        assert (await api.delete(f"/v1/personal-runtimes/{lattice_id}")).status_code == 200
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await request
        assert caught.value.code == "runtime_revoked"

    async def stopped() -> bool:
        return daemon.final_error is not None

    await async_wait_until(stopped, timeout=5, what="the daemon to learn it was revoked")
    assert daemon.final_error is not None and daemon.final_error.status_code == 403
    await daemon.kill()
