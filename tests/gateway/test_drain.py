"""SIGTERM drains a real gateway process: chats in flight finish (their daemon still posts
results), new chats are refused 503 with ``x-should-retry: true``, parked polls end at
once, what cannot finish within the drain time ends with the JSON envelope or an SSE
error event (never a bare 500), and ``/readyz`` fails meanwhile. With two replicas behind
a load balancer, the daemon moves to the other replica within a second."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.e2e.harness import pair_machine, provider_process, stop_daemon
from tests.support.balancer import Balancer, ThreadedBalancer
from tests.support.fake_daemon import FakeDaemon, Reply, paired_daemon
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import async_wait_until, wait_until
from tests.support.redis_keys import REDIS_URL, redis_prefix

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "drain"}]


def chat_body(daemon: FakeDaemon, stream: bool = False) -> dict[str, Any]:
    return {"model": f"lattice:personal:{daemon.lattice_id}", "messages": MESSAGES,
            "stream": stream}


async def eventually(condition: Callable[[], object], timeout: float, what: str) -> None:
    async def check() -> object:
        return condition()

    await async_wait_until(check, timeout=timeout, what=what)


def sigterm(gw: GatewayProcess) -> float:
    assert gw.process is not None
    gw.process.send_signal(signal.SIGTERM)
    return time.monotonic()


def exit_code(gw: GatewayProcess, timeout: float = 15.0) -> int:
    assert gw.process is not None
    try:
        return gw.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("the gateway did not exit after its drain") from None


async def assert_refused_while_draining(url: str, key: str, daemon: FakeDaemon) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(url + "/v1/chat/completions", json=chat_body(daemon),
                                    headers={"x-api-key": key})
        ready = await client.get(url + "/readyz")
    assert refused.status_code == 503, refused.text
    assert refused.headers["x-should-retry"] == "true"
    assert refused.json()["error"]["code"] == "service_unavailable"
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "service_unavailable"


@pytest.fixture
async def single() -> AsyncIterator[tuple[GatewayProcess, str]]:
    with run_gateway(shutdown_timeout=5, sse_keepalive_seconds=0.2) as gw:
        yield gw, gw.create_key("acme")


async def test_one_gateway_drains_a_leased_job_to_its_answer_and_refuses_new_chats(
        single: tuple[GatewayProcess, str]) -> None:
    gw, key = single
    daemon = await paired_daemon(gw.url, key, reply=Reply(text="finished", first_delay=1.5))
    async with httpx.AsyncClient(timeout=20) as client:
        assert (await client.get(gw.url + "/readyz")).status_code == 200
        chat = asyncio.ensure_future(client.post(gw.url + "/v1/chat/completions",
                                                 json=chat_body(daemon),
                                                 headers={"x-api-key": key}))
        await eventually(lambda: daemon.jobs, timeout=10, what="the job leased")
        sigterm(gw)
        # The parked poll is answered at once; the next one, here again (no other
        # replica), is told to come back later (503, retry).
        await eventually(lambda: daemon.retried_polls, timeout=1.0,
                         what="the parked poll answered and the next one refused")
        await assert_refused_while_draining(gw.url, key, daemon)
        answered = await chat
    # The daemon posted its result to the draining gateway, which answered the app.
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"] == "finished"
    assert exit_code(gw) == 0
    await daemon.kill()


async def test_chats_open_at_the_drain_time_end_in_the_envelope_or_an_sse_error() -> None:
    with run_gateway(shutdown_timeout=1, sse_keepalive_seconds=0.2) as gw:
        key = gw.create_key("acme")
        daemon = await paired_daemon(gw.url, key, reply=Reply(never=True))
        async with httpx.AsyncClient(timeout=20, headers={"x-api-key": key}) as client:
            plain = asyncio.ensure_future(client.post(gw.url + "/v1/chat/completions",
                                                      json=chat_body(daemon)))
            async with client.stream("POST", gw.url + "/v1/chat/completions",
                                     json=chat_body(daemon, stream=True)) as stream:
                assert stream.status_code == 200
                lines = stream.aiter_lines()
                assert await anext(lines) == ": keep-alive"  # the stream has started
                await eventually(lambda: len(daemon.jobs) == 2, timeout=10,
                                       what="both jobs leased")
                sigterm(gw)
                rest = [line async for line in lines]
            answered = await plain
        assert exit_code(gw) == 0
        await daemon.kill()
    assert answered.status_code == 503, answered.text
    assert answered.headers["content-type"] == "application/json"
    # The job had reached the daemon: the SDKs must not send it again by themselves.
    assert answered.headers["x-should-retry"] == "false"
    assert answered.json()["error"]["code"] == "service_unavailable"
    assert "shut down before" in answered.json()["error"]["message"]
    errors = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
    assert errors and errors[-1]["error"]["code"] == "service_unavailable", rest


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    with redis_prefix() as prefix:
        settings = {"redis_url": REDIS_URL, "poll_window_seconds": 20,
                    "presence_window_seconds": 2}
        env = {"LATTICE_GATEWAY_REDIS_PREFIX": prefix}
        with run_gateway(postgres_url, env=env, shutdown_timeout=5, **settings) as a, \
                run_gateway(postgres_url, env=env, **settings) as b:
            yield a, b


@pytest.mark.postgres
@pytest.mark.redis
async def test_a_replica_draining_sends_its_daemon_to_the_other_within_a_second(
        replicas: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = replicas
    key = a.create_key("acme")
    async with Balancer([a.url, b.url], enabled=[True, False]) as balancer:
        # Paired and polling through the balancer while only a takes connections.
        daemon = await paired_daemon(balancer.url, key,
                                     reply=Reply(text="finished", first_delay=1.5))
        balancer.enable(1)  # b is there too; the daemon's open connections stay with a
        async with httpx.AsyncClient(timeout=20, headers={"x-api-key": key}) as client:
            in_flight = asyncio.ensure_future(client.post(a.url + "/v1/chat/completions",
                                                          json=chat_body(daemon)))
            await eventually(lambda: daemon.jobs, timeout=10, what="the job leased")
            terminated = sigterm(a)
            await eventually(lambda: balancer.first_connection_to(1, terminated, "/poll"),
                             timeout=1.0, what="the daemon's poll to reach replica b")
            moved_after = balancer.first_connection_to(1, terminated, "/poll")
            assert moved_after is not None and moved_after - terminated < 1.0
            await assert_refused_while_draining(a.url, key, daemon)
            answered = await in_flight
            assert answered.status_code == 200, answered.text
            assert answered.json()["choices"][0]["message"]["content"] == "finished"
            assert exit_code(a) == 0
            # a is gone: the daemon, now polling b, serves b's chats.
            served = await client.post(b.url + "/v1/chat/completions", json=chat_body(daemon))
            assert served.status_code == 200, served.text
            assert served.json()["choices"][0]["message"]["content"] == "finished"
        await daemon.kill()


@pytest.mark.postgres
@pytest.mark.redis
def test_the_real_daemon_moves_to_the_other_replica_and_finishes_its_job(
        postgres_url: str, lattice_home: Path) -> None:
    """The same with ``lattice-daemon`` (paired by its bootstrap command, through the
    balancer) and a model server that takes 1.5 s: the daemon's own backoff and
    reconnection, not the test daemon's."""
    with redis_prefix() as prefix:
        env = {"LATTICE_GATEWAY_REDIS_PREFIX": prefix}
        settings = {"redis_url": REDIS_URL, "presence_window_seconds": 2}
        with ThreadedBalancer() as balancer, \
                provider_process("ollama", reply="still here", first_byte_delay=1.5) as model, \
                run_gateway(postgres_url, env=env, public_url=balancer.url,
                            shutdown_timeout=5, **settings) as a, \
                run_gateway(postgres_url, env=env, public_url=balancer.url, **settings) as b:
            balancer.set_backends([a.url, b.url], enabled=[True, False])
            wait_until(lambda: balancer.ready[0], timeout=5, what="a ready")
            machine = pair_machine(lattice_home, balancer.url, a.create_key("acme"),
                                   model)
            try:
                balancer.enable(1)
                app_on_a = OpenAI(base_url=a.url + "/v1", api_key=machine.key,
                                  max_retries=0, timeout=20)
                with ThreadPoolExecutor(1) as pool:
                    in_flight = pool.submit(
                        app_on_a.chat.completions.create, model=machine.model,
                        messages=MESSAGES)
                    wait_until(lambda: model.control.stats()["request_count"] >= 1,
                               timeout=10, what="the job at the model server")
                    terminated = sigterm(a)
                    wait_until(lambda: balancer.first_connection_to(1, terminated, "/poll"),
                               timeout=2.0, what="the daemon's poll at replica b")
                    moved = balancer.first_connection_to(1, terminated, "/poll")
                    assert moved is not None and moved - terminated < 1.0
                    answer = in_flight.result(timeout=20)
                assert answer.choices[0].message.content == "still here"
                assert exit_code(a) == 0
                app_on_b = OpenAI(base_url=b.url + "/v1", api_key=machine.key,
                                  max_retries=0, timeout=20)
                again = app_on_b.chat.completions.create(model=machine.model,
                                                         messages=MESSAGES)
                assert again.choices[0].message.content == "still here"
            finally:
                stop_daemon(lattice_home)


async def test_a_second_sigint_ends_the_drain_at_once() -> None:
    with run_gateway(shutdown_timeout=60) as gw:
        key = gw.create_key("acme")
        daemon = await paired_daemon(gw.url, key, reply=Reply(never=True))
        async with httpx.AsyncClient(timeout=20, headers={"x-api-key": key}) as client:
            stuck = asyncio.ensure_future(client.post(gw.url + "/v1/chat/completions",
                                                      json=chat_body(daemon)))
            await eventually(lambda: daemon.jobs, timeout=10, what="the job leased")
            assert gw.process is not None
            gw.process.send_signal(signal.SIGINT)
            await async_wait_until(
                lambda: _status(client, gw.url + "/readyz", 503), timeout=5,
                what="the drain to start")
            started = time.monotonic()
            gw.process.send_signal(signal.SIGINT)  # the operator insists
            assert exit_code(gw) is not None
            assert time.monotonic() - started < 5  # not the 60 s drain time
            stuck.cancel()
        await daemon.kill()


async def _status(client: httpx.AsyncClient, url: str, status: int) -> bool:
    return (await client.get(url)).status_code == status
