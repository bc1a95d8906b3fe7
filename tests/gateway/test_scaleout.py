"""Two gateway processes sharing PostgreSQL (records) and Redis (relay): the app's request
enters replica A while the daemon polls replica B."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest

from tests.support.fake_daemon import FakeDaemon, Reply, paired_daemon
from tests.support.faultproxy import run_fault_proxy
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import async_wait_until
from tests.support.redis_keys import REDIS_URL, redis_prefix

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

PRESENCE_WINDOW = 1.0
MESSAGES = [{"role": "user", "content": "across replicas"}]


@contextmanager
def two_replicas(postgres_url: str, a_redis_url: str = REDIS_URL, **extra: object
                 ) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Replicas A and B on one PostgreSQL and one Redis (A's path to it: ``a_redis_url``)."""
    with redis_prefix() as prefix:
        settings = {"poll_window_seconds": 2, "presence_window_seconds": PRESENCE_WINDOW,
                    "sse_keepalive_seconds": 0.2, **extra}
        env = {"LATTICE_GATEWAY_REDIS_PREFIX": prefix}
        with run_gateway(postgres_url, env=env, redis_url=a_redis_url, **settings) as a, \
                run_gateway(postgres_url, env=env, redis_url=REDIS_URL, **settings) as b:
            yield a, b


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    with two_replicas(postgres_url) as pair:
        yield pair


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


async def test_a_stream_on_a_survives_a_cut_of_as_redis_connection_mid_stream(
        postgres_url: str) -> None:
    # The app streams from A; the daemon polls and posts to B. Mid-stream, A's path to
    # Redis is cut (every connection reset, reconnects refused) until the daemon has
    # posted the rest of the answer to B: every chunk and the final event still reach the
    # app, in order and once each, as soon as A's path is back (with pub/sub they were
    # lost and the app waited for the idle timeout: 120 s by default, 30 s here so that
    # the old code fails in reasonable time).
    words = [f"w{n} " for n in range(12)]
    with run_fault_proxy(6379) as proxy, \
            two_replicas(postgres_url, a_redis_url=proxy.redis_url,
                         idle_timeout_seconds=30) as (a, b):
        key = a.create_key("acme")
        daemon = await paired_daemon(b.url, key, reply=Reply(chunks=words, chunk_delay=0.05))
        contents: list[str] = []
        finishes: list[str] = []
        errors: list[object] = []
        done = 0
        restored_at = None
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=20) as http, http.stream(
                    "POST", a.url + "/v1/chat/completions",
                    headers={"authorization": f"Bearer {key}"},
                    json={"model": f"lattice:personal:{daemon.lattice_id}",
                          "messages": MESSAGES, "stream": True}) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done += 1
                        continue
                    payload = json.loads(line[len("data: "):])
                    if "error" in payload:
                        errors.append(payload["error"])
                        continue
                    choice = payload["choices"][0]
                    if choice["delta"].get("content"):
                        contents.append(choice["delta"]["content"])
                    if choice.get("finish_reason"):
                        finishes.append(choice["finish_reason"])
                    if len(contents) == 1 and restored_at is None:
                        proxy.cut()

                        async def answered_on_b() -> bool:
                            return bool(daemon.completed)

                        await async_wait_until(answered_on_b, timeout=10,
                                               what="the daemon to post the rest to B")
                        proxy.heal()
                        restored_at = time.monotonic()
            assert restored_at is not None
            elapsed = time.monotonic() - restored_at
        finally:
            await daemon.kill()
    assert errors == []
    assert contents == words  # every chunk, in order, none twice
    assert finishes == ["stop"] and done == 1
    assert elapsed < 10  # read on after the reconnect, far inside the idle timeout
    assert len(daemon.jobs) == 1
