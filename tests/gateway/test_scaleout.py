"""Two gateway processes sharing PostgreSQL (records) and Redis (relay): the app's request
enters replica A while the daemon polls replica B."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
import redis

from tests.support.fake_daemon import FakeDaemon, Reply, paired_daemon
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import async_wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

REDIS_URL = "redis://127.0.0.1:6379/0"
PRESENCE_WINDOW = 1.0
MESSAGES = [{"role": "user", "content": "across replicas"}]


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    prefix = f"lattice-test:{secrets.token_hex(6)}:"
    settings = {"redis_url": REDIS_URL, "poll_window_seconds": 2,
                "presence_window_seconds": PRESENCE_WINDOW, "sse_keepalive_seconds": 0.2}
    env = {"LATTICE_GATEWAY_REDIS_PREFIX": prefix}
    try:
        with run_gateway(postgres_url, env=env, **settings) as a, \
                run_gateway(postgres_url, env=env, **settings) as b:
            yield a, b
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
async def setup(replicas: tuple[GatewayProcess, GatewayProcess]
                ) -> AsyncIterator[tuple[GatewayProcess, FakeDaemon, str]]:
    a, b = replicas
    key = a.create_key("acme")
    daemon = await paired_daemon(b.url, key, reply=Reply(echo=True, chunk_delay=0.01))
    yield a, daemon, key
    await daemon.kill()


async def test_request_on_a_is_served_by_the_daemon_polling_b(
        setup: tuple[GatewayProcess, FakeDaemon, str]) -> None:
    a, daemon, key = setup
    model = f"lattice:personal:{daemon.lattice_id}"
    async with openai.AsyncOpenAI(base_url=a.url + "/v1", api_key=key, max_retries=0,
                                  timeout=10) as client:
        runtime = await client.get(f"/personal-runtimes/{daemon.lattice_id}",
                                   cast_to=httpx.Response)
        assert runtime.json()["runtime"]["status"] == "reachable"  # presence seen on A
        started = time.monotonic()
        completion = await client.chat.completions.create(model=model, messages=MESSAGES)
        assert completion.choices[0].message.content == "across replicas"
        assert time.monotonic() - started < 1.0  # woken by pub/sub, not by the poll window
        stream = await client.chat.completions.create(model=model, messages=MESSAGES,
                                                      stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "across replicas"
    assert len(daemon.jobs) == 2  # each job ran once


async def test_disconnect_on_a_cancels_on_b_and_crash_turns_offline(
        setup: tuple[GatewayProcess, FakeDaemon, str]) -> None:
    a, daemon, key = setup
    daemon.reply = Reply(never=True)
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        request = asyncio.create_task(http.post(
            a.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
            json={"model": f"lattice:personal:{daemon.lattice_id}", "messages": MESSAGES}))

        async def has_job() -> bool:
            return bool(daemon.jobs)

        await async_wait_until(has_job, timeout=5, what="the job to reach the daemon on B")
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    job_id = daemon.jobs[-1].job_id

    async def cancelled() -> bool:
        return any(c.job_id == job_id for c in daemon.cancels)

    await async_wait_until(cancelled, timeout=5, what="the CancelNotice to reach B's daemon")

    await daemon.kill()
    async with httpx.AsyncClient(base_url=a.url, headers={"x-api-key": key},
                                 trust_env=False, timeout=10) as api:
        async def offline() -> bool:
            got = await api.get(f"/v1/personal-runtimes/{daemon.lattice_id}")
            return bool(got.json()["runtime"]["status"] == "offline")

        await async_wait_until(offline, timeout=PRESENCE_WINDOW + 4,
                               what="offline on A after the daemon crashed on B")
