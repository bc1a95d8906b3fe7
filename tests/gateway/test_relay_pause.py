"""A paused runtime, as the gateway sees it: the relay's ``/state`` and ``paused`` fields,
the brokers keeping the pause with presence (in-process and Redis), the record
(``status: offline`` + ``paused``), chats failing at once with ``runtime_paused``, and
the owner's refusals (with ``retryAfter``) passed on to the app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lattice_gateway.relay import SessionNotFound
from lattice_gateway.relay.base import Pause
from lattice_gateway.relay.memory import MemoryBroker
from lattice_protocol import ResultEvent, SealedEvent, iso_from_seconds
from tests.gateway import test_broker_contract as contract
from tests.gateway.test_broker_contract import RUNTIME, Maker, ManualClock
from tests.gateway.test_relay_routes import MESSAGES, Paired, chat_and_lease, pair, register
from tests.support.gateway import InProcessGateway, inprocess_gateway
from tests.support.net import async_wait_until

# -- the brokers (the contract's fixtures: both brokers, a ManualClock) -------------------

kind, clock, make_broker = contract.kind, contract.clock, contract.make_broker


async def test_a_pause_is_kept_until_cleared(make_broker: Maker, clock: ManualClock) -> None:
    broker = make_broker(poll_window_seconds=30, presence_window_seconds=30, clock=clock)
    session = await broker.register_session(RUNTIME, 1)
    assert await broker.pauses([RUNTIME, "lat_other"]) == {RUNTIME: None, "lat_other": None}
    await broker.set_pause(RUNTIME, session, Pause("owner"))
    assert await broker.pauses([RUNTIME]) == {RUNTIME: Pause("owner")}
    await broker.set_pause(RUNTIME, session, None)
    assert await broker.pauses([RUNTIME]) == {RUNTIME: None}
    await broker.close()


async def test_a_pause_with_an_end_is_over_at_its_end(make_broker: Maker,
                                                       clock: ManualClock) -> None:
    broker = make_broker(poll_window_seconds=30, presence_window_seconds=30, clock=clock)
    session = await broker.register_session(RUNTIME, 1)
    until = clock.time() + 5
    await broker.set_pause(RUNTIME, session, Pause("schedule", until))
    assert await broker.pauses([RUNTIME]) == {RUNTIME: Pause("schedule", until)}
    await clock.advance(5.1)  # the daemon never said "resumed": the end is enough
    assert await broker.pauses([RUNTIME]) == {RUNTIME: None}
    await broker.close()


async def test_a_pause_its_daemon_stops_repeating_lapses(make_broker: Maker,
                                                         clock: ManualClock) -> None:
    # poll window + presence window = 0.4 s after the daemon last said it
    broker = make_broker(poll_window_seconds=0.2, presence_window_seconds=0.2, clock=clock)
    session = await broker.register_session(RUNTIME, 1)
    await broker.set_pause(RUNTIME, session, Pause("battery"))
    assert (await broker.pauses([RUNTIME]))[RUNTIME] == Pause("battery")
    await clock.advance(0.5)

    async def lapsed() -> bool:
        # Redis expires the key on its own (real) clock; broker time moves on too, past
        # what a replica remembers of it
        await clock.advance(0.3)
        return (await broker.pauses([RUNTIME]))[RUNTIME] is None

    await async_wait_until(lapsed, timeout=5, interval=0.02, what="the pause to lapse")
    await broker.close()


async def test_a_pause_set_through_another_replica_shows_within_moments(
        make_broker: Maker, clock: ManualClock) -> None:
    first = make_broker(poll_window_seconds=30, presence_window_seconds=30, clock=clock)
    session = await first.register_session(RUNTIME, 1)
    second = first if isinstance(first, MemoryBroker) else make_broker(
        poll_window_seconds=30, presence_window_seconds=30, clock=clock)
    assert (await second.pauses([RUNTIME]))[RUNTIME] is None
    await first.set_pause(RUNTIME, session, Pause("owner"))
    await clock.advance(0.3)  # a replica may remember what it read for a quarter second
    assert (await second.pauses([RUNTIME]))[RUNTIME] == Pause("owner")
    await first.close()
    await second.close()


async def test_only_the_runtimes_own_session_sets_its_pause(make_broker: Maker) -> None:
    broker = make_broker()
    session = await broker.register_session(RUNTIME, 1)
    other = await broker.register_session("lat_other", 1)
    with pytest.raises(SessionNotFound):
        await broker.set_pause(RUNTIME, other, Pause("owner"))
    with pytest.raises(SessionNotFound):
        await broker.set_pause(RUNTIME, "rs_unknown", Pause("owner"))
    assert (await broker.pauses([RUNTIME]))[RUNTIME] is None
    await broker.set_pause(RUNTIME, session, Pause("owner"))
    assert (await broker.pauses(["lat_other"]))["lat_other"] is None
    await broker.close()


# -- the routes ---------------------------------------------------------------------------


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with inprocess_gateway(tmp_path, poll_window_seconds=1,
                                 presence_window_seconds=5) as gw:
        yield gw


async def record(gw: InProcessGateway, paired: Paired) -> dict[str, Any]:
    response = await gw.client.get(f"/v1/personal-runtimes/{paired.lattice_id}",
                                   headers={"x-api-key": paired.key})
    return response.json()["runtime"]  # type: ignore[no-any-return]


async def chat(gw: InProcessGateway, paired: Paired) -> Any:
    return await gw.client.post(
        "/v1/chat/completions", headers={"x-api-key": paired.key},
        json={"model": f"lattice:personal:{paired.lattice_id}", "messages": MESSAGES})


async def test_a_paused_runtime_is_offline_and_refuses_chats_at_once(
        gateway: InProcessGateway) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    assert (await record(gateway, paired))["status"] == "reachable"
    until = time.time() + 120
    posted = await gateway.client.post(
        f"/v1/relay/sessions/{session}/state", headers=paired.headers,
        json={"paused": {"reason": "owner", "until": iso_from_seconds(until)}})
    assert posted.status_code == 204, posted.text

    shown = await record(gateway, paired)
    assert shown["status"] == "offline"  # still one of the four statuses
    assert shown["paused"] == {"reason": "owner", "until": iso_from_seconds(until)}
    started = time.monotonic()
    refused = await chat(gateway, paired)
    assert time.monotonic() - started < 1.0  # no pickup timeout: nothing was queued
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "runtime_paused"
    assert iso_from_seconds(until) in refused.json()["error"]["message"]
    assert 110 <= int(refused.headers["retry-after"]) <= 120
    listed = await gateway.client.get("/v1/models", headers={"x-api-key": paired.key})
    assert listed.json()["data"] == []  # only reachable runtimes are listed

    resumed = await gateway.client.post(f"/v1/relay/sessions/{session}/state",
                                        headers=paired.headers, json={"paused": None})
    assert resumed.status_code == 204
    shown = await record(gateway, paired)
    assert shown["status"] == "reachable" and shown["paused"] is None


async def test_register_and_poll_carry_the_pause(gateway: InProcessGateway) -> None:
    paired = await pair(gateway)
    from tests.gateway.test_relay_routes import REGISTER

    response = await gateway.client.post(
        "/v1/relay/sessions", headers=paired.headers,
        json={**REGISTER, "paused": {"reason": "battery", "until": None}})
    assert response.status_code == 201
    session = response.json()["sessionId"]
    assert (await record(gateway, paired))["paused"] == {"reason": "battery", "until": None}
    await gateway.client.post(f"/v1/relay/sessions/{session}/state",
                              headers=paired.headers, json={"paused": None})
    poll = asyncio.create_task(gateway.client.post(
        f"/v1/relay/sessions/{session}/poll", headers=paired.headers,
        json={"capacity": 1, "paused": {"reason": "schedule", "until": None}}))
    await async_wait_until(lambda: _paused_as(gateway, paired, "schedule"), timeout=5,
                           interval=0.01, what="the poll's pause")
    await poll


async def _paused_as(gw: InProcessGateway, paired: Paired, reason: str) -> bool:
    return bool(((await record(gw, paired))["paused"] or {}).get("reason") == reason)


@pytest.mark.parametrize("body", [
    {},
    {"paused": "yes"},
    {"paused": {"reason": "bored"}},
    {"paused": {"reason": "owner", "until": "tomorrow"}},
    {"paused": {"reason": "owner", "until": "2026-12-07T10:00:00"}},  # no zone
    {"paused": {"reason": "owner", "until": 12}},
])
async def test_a_bad_state_is_400_and_changes_nothing(gateway: InProcessGateway,
                                                     body: dict[str, Any]) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    response = await gateway.client.post(f"/v1/relay/sessions/{session}/state",
                                         headers=paired.headers, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert (await record(gateway, paired))["status"] == "reachable"


async def test_another_runtimes_session_cannot_pause_this_one(
        gateway: InProcessGateway) -> None:
    mine, theirs = await pair(gateway), await pair(gateway, "other-account")
    session = await register(gateway, mine)
    response = await gateway.client.post(f"/v1/relay/sessions/{session}/state",
                                         headers=theirs.headers,
                                         json={"paused": {"reason": "owner"}})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "session_not_found"
    assert (await record(gateway, mine))["paused"] is None


@pytest.mark.parametrize(("code", "status", "retry_after"), [
    ("budget_exceeded", 429, 3600.0),
    ("app_not_allowed", 403, None),
    ("model_not_allowed", 403, None),
    ("prompt_too_long", 400, None),
    ("runtime_paused", 503, 60.0),
    ("invalid_api_key", 502, None),  # a daemon cannot make the app think its key is bad
])
async def test_the_owners_refusals_reach_the_app_with_their_code(
        gateway: InProcessGateway, code: str, status: int, retry_after: float | None
        ) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    chat_task, job_id = await chat_and_lease(gateway, paired, session)
    event = ResultEvent(kind="error", job_id=job_id, seq=0, code=code, message="refused",
                        retry_after=retry_after)
    await gateway.client.post(
        f"/v1/relay/sessions/{session}/events", headers=paired.headers,
        json={"events": [SealedEvent(job_id, 0, paired.sealer.seal_json(
            event.to_dict())).to_dict()]})
    response = await chat_task
    assert response.status_code == status
    assert response.json()["error"]["code"] == (code if status != 502 else "provider_error")
    if retry_after is None:
        assert "retry-after" not in response.headers
    else:
        assert int(response.headers["retry-after"]) == int(retry_after)
