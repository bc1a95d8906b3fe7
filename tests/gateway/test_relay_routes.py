"""Relay session routes (docs/protocol.md §2-§5) against the in-process gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lattice_protocol import KeyPair, ResultEvent, Sealer
from tests.support.gateway import InProcessGateway, inprocess_gateway
from tests.support.net import async_wait_until

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with inprocess_gateway(tmp_path, poll_window_seconds=1,
                                 presence_window_seconds=5) as gw:
        yield gw


@dataclass
class Paired:
    key: str
    lattice_id: str
    daemon_token: str
    sealer: Sealer

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.daemon_token}"}


async def pair(gw: InProcessGateway, account: str = "acme") -> Paired:
    key = await gw.create_key(account)
    created = await gw.client.post("/v1/personal-runtimes", headers={"x-api-key": key},
                                   json={"displayName": "laptop",
                                         "executionBackend": "local-model"})
    lattice_id = created.json()["runtime"]["latticeId"]
    minted = await gw.client.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                                  headers={"x-api-key": key}, json={"ttlSeconds": 600})
    keys = KeyPair.generate()
    redeemed = await gw.client.post("/v1/relay/redeem", json={
        "bootstrapToken": minted.json()["bootstrapToken"],
        "daemonPublicKey": keys.public_text(), "daemonVersion": "test"})
    body = redeemed.json()
    return Paired(key, lattice_id, body["daemonToken"],
                  Sealer(keys, body["gatewayPublicKey"]))


REGISTER = {"daemonVersion": "0.1.0", "maxConcurrency": 2,
            "provider": {"kind": "ollama", "models": ["llama3.2:3b", "qwen2.5:7b"],
                         "defaultModel": "llama3.2:3b"}}


async def register(gw: InProcessGateway, paired: Paired) -> str:
    response = await gw.client.post("/v1/relay/sessions", headers=paired.headers, json=REGISTER)
    assert response.status_code == 201, response.text
    return str(response.json()["sessionId"])


async def chat_and_lease(gw: InProcessGateway, paired: Paired, session: str,
                         stream: bool = False) -> tuple[asyncio.Task[Any], str]:
    """An app's chat request, still waiting, whose job this session has just leased."""
    chat = asyncio.create_task(gw.client.post(
        "/v1/chat/completions", headers={"x-api-key": paired.key},
        json={"model": f"lattice:personal:{paired.lattice_id}", "messages": MESSAGES,
              "stream": stream}))
    polled = await gw.client.post(f"/v1/relay/sessions/{session}/poll",
                                  headers=paired.headers, json={"capacity": 1})
    return chat, str(polled.json()["jobs"][0]["jobId"])


async def shown_status(gw: InProcessGateway, paired: Paired) -> str:
    """The runtime's status as the app sees it (GET /v1/personal-runtimes/{id})."""
    shown = await gw.client.get(f"/v1/personal-runtimes/{paired.lattice_id}",
                                headers={"x-api-key": paired.key})
    return str(shown.json()["runtime"]["status"])


async def test_register_answers_windows_and_records_models(gateway: InProcessGateway) -> None:
    paired = await pair(gateway)
    response = await gateway.client.post("/v1/relay/sessions", headers=paired.headers,
                                         json=REGISTER)
    assert response.status_code == 201
    body = response.json()
    assert body["latticeId"] == paired.lattice_id
    assert body["pollWindowSeconds"] == 1
    assert body["presenceWindowSeconds"] == 5
    assert body["sessionId"].startswith("rs_")
    runtime = await gateway.client.get(f"/v1/personal-runtimes/{paired.lattice_id}",
                                       headers={"x-api-key": paired.key})
    record = runtime.json()["runtime"]
    assert record["status"] == "reachable"
    assert record.get("models") == ["llama3.2:3b", "qwen2.5:7b"]


async def test_daemon_credentials_are_required(gateway: InProcessGateway) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    for headers in ({}, {"authorization": "Bearer lrdt_v1_" + "x" * 43},
                    {"authorization": f"Bearer {paired.key}"}):
        response = await gateway.client.post(f"/v1/relay/sessions/{session}/poll",
                                             headers=headers, json={"capacity": 1})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


async def test_a_session_is_only_usable_with_its_runtimes_token(
        gateway: InProcessGateway) -> None:
    mine = await pair(gateway)
    other = await pair(gateway, "globex")
    session = await register(gateway, mine)
    for method, path, payload in (
            ("POST", f"/v1/relay/sessions/{session}/poll", {"capacity": 1}),
            ("POST", f"/v1/relay/sessions/{session}/events", {"events": []}),
            ("DELETE", f"/v1/relay/sessions/{session}", None)):
        response = await gateway.client.request(method, path, headers=other.headers,
                                                json=payload)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "session_not_found"
    unknown = await gateway.client.post("/v1/relay/sessions/rs_unknown/poll",
                                        headers=mine.headers, json={"capacity": 1})
    assert unknown.json()["error"]["code"] == "session_not_found"


BAD_BODIES: list[tuple[str, str, Any]] = [
    ("register without provider", "/v1/relay/sessions", {"daemonVersion": "1"}),
    ("register bad models", "/v1/relay/sessions",
     {"daemonVersion": "1", "provider": {"kind": "ollama", "models": [1]}}),
    ("register bad concurrency", "/v1/relay/sessions",
     {"daemonVersion": "1", "provider": {"kind": "ollama"}, "maxConcurrency": 0}),
    ("poll negative capacity", "poll", {"capacity": -1}),
    ("poll capacity string", "poll", {"capacity": "2"}),
    ("poll capacity huge", "poll", {"capacity": 10**6}),
    ("events not a list", "events", {"events": {}}),
    ("event missing seq", "events", {"events": [{"jobId": "job_1", "sealed": "v1.x"}]}),
    ("event bad seq", "events", {"events": [{"jobId": "job_1", "seq": -1, "sealed": "v1.x"}]}),
    ("not json", "poll", b"{oops"),
]


@pytest.mark.parametrize(("case", "where", "payload"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_bodies_are_400_and_the_session_survives(
        gateway: InProcessGateway, case: str, where: str, payload: Any) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    path = where if where.startswith("/") else f"/v1/relay/sessions/{session}/{where}"
    if isinstance(payload, bytes):
        response = await gateway.client.post(path, headers=paired.headers, content=payload)
    else:
        response = await gateway.client.post(path, headers=paired.headers, json=payload)
    assert response.status_code == 400, (case, response.text)
    assert response.json()["error"]["code"] == "invalid_request"
    ok = await gateway.client.post(f"/v1/relay/sessions/{session}/events",
                                   headers=paired.headers, json={"events": []})
    assert ok.json() == {"refused": [], "cancels": []}


async def test_job_poll_events_result_and_lease_refusal(gateway: InProcessGateway) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    other_session = await register(gateway, paired)
    chat = asyncio.create_task(gateway.client.post(
        "/v1/chat/completions", headers={"x-api-key": paired.key},
        json={"model": f"lattice:personal:{paired.lattice_id}", "messages": MESSAGES}))
    started = time.monotonic()
    polled = await gateway.client.post(f"/v1/relay/sessions/{session}/poll",
                                       headers=paired.headers, json={"capacity": 2})
    assert time.monotonic() - started < 0.5  # the job comes at once, not after the window
    jobs = polled.json()["jobs"]
    assert len(jobs) == 1
    spec = paired.sealer.open_json(jobs[0]["sealed"])
    assert spec["jobId"] == jobs[0]["jobId"] and spec["model"] == "llama3.2:3b"
    job_id = jobs[0]["jobId"]

    def sealed(seq: int) -> dict[str, Any]:
        event = ResultEvent("result", job_id, seq, data={
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}]})
        return {"jobId": job_id, "seq": seq, "sealed": paired.sealer.seal_json(event.to_dict())}

    # The job is leased to `session`: the other session's result is refused per job.
    refused = await gateway.client.post(f"/v1/relay/sessions/{other_session}/events",
                                        headers=paired.headers, json={"events": [sealed(0)]})
    assert refused.json()["refused"][0]["jobId"] == job_id
    assert refused.json()["refused"][0]["code"] == "lease_not_held"
    accepted = await gateway.client.post(f"/v1/relay/sessions/{session}/events",
                                         headers=paired.headers, json={"events": [sealed(0)]})
    assert accepted.json()["refused"] == []
    answer = await chat
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "ok"
    assert answer.json()["model"] == f"lattice:personal:{paired.lattice_id}"
    # Finished: the lease is released, later events are refused.
    late = await gateway.client.post(f"/v1/relay/sessions/{session}/events",
                                     headers=paired.headers, json={"events": [sealed(1)]})
    assert late.json()["refused"][0]["code"] == "lease_not_held"


async def test_tampered_result_is_a_502_not_a_crash(gateway: InProcessGateway) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    chat, job_id = await chat_and_lease(gateway, paired, session)
    forged = Sealer(KeyPair.generate(), KeyPair.generate().public).seal_json({"v": 1})
    await gateway.client.post(f"/v1/relay/sessions/{session}/events", headers=paired.headers,
                              json={"events": [{"jobId": job_id, "seq": 0, "sealed": forged}]})
    answer = await chat
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "provider_error"


async def test_empty_poll_waits_the_window(gateway: InProcessGateway) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    started = time.monotonic()
    response = await gateway.client.post(f"/v1/relay/sessions/{session}/poll",
                                         headers=paired.headers, json={"capacity": 1})
    elapsed = time.monotonic() - started
    assert response.json() == {"jobs": [], "cancels": []}
    assert 0.9 <= elapsed < 2.0


async def test_deregister_is_final_for_the_session_and_turns_offline(
        gateway: InProcessGateway) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    response = await gateway.client.delete(f"/v1/relay/sessions/{session}",
                                           headers=paired.headers)
    assert response.status_code == 204
    again = await gateway.client.post(f"/v1/relay/sessions/{session}/poll",
                                      headers=paired.headers, json={"capacity": 1})
    assert again.status_code == 404
    assert await shown_status(gateway, paired) == "offline"


async def test_revoke_ends_a_parked_poll_and_the_next_request_is_403(
        gateway: InProcessGateway) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    poll = asyncio.create_task(gateway.client.post(
        f"/v1/relay/sessions/{session}/poll", headers=paired.headers, json={"capacity": 1}))

    async def parked_now() -> bool:
        return gateway.services.broker.parked_polls(paired.lattice_id) == 1

    await async_wait_until(parked_now, timeout=2, what="the poll to park")
    started = time.monotonic()
    revoked = await gateway.client.delete(f"/v1/personal-runtimes/{paired.lattice_id}",
                                          headers={"x-api-key": paired.key})
    assert revoked.status_code == 200
    parked = await poll
    assert parked.status_code == 200 and time.monotonic() - started < 0.5
    after = await gateway.client.post(f"/v1/relay/sessions/{session}/poll",
                                      headers=paired.headers, json={"capacity": 1})
    assert after.status_code == 403
    assert after.json()["error"]["code"] == "runtime_revoked"


def test_poll_window_is_bounded_1_to_50() -> None:
    from lattice_gateway.relay import poll_window
    from lattice_gateway.settings import Settings

    assert poll_window(Settings(poll_window_seconds=0.2)) == 1
    assert poll_window(Settings(poll_window_seconds=100)) == 50
    assert poll_window(Settings(poll_window_seconds=25)) == 25


async def test_job_not_picked_up_in_time_is_504_runtime_timeout(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path, pickup_timeout_seconds=0.3,
                                 presence_window_seconds=5) as gw:
        paired = await pair(gw)
        await register(gw, paired)  # present, but never polls
        started = time.monotonic()
        answer = await gw.client.post(
            "/v1/chat/completions", headers={"x-api-key": paired.key},
            json={"model": f"lattice:personal:{paired.lattice_id}", "messages": MESSAGES})
        assert answer.status_code == 504
        assert answer.json()["error"]["code"] == "runtime_timeout"
        assert time.monotonic() - started < 2.0


async def test_too_many_busy_sessions_is_429_with_retry_after(
        gateway: InProcessGateway) -> None:
    from lattice_gateway.relay.memory import MAX_SESSIONS_PER_RUNTIME

    paired = await pair(gateway)
    sessions = [await register(gateway, paired) for _ in range(MAX_SESSIONS_PER_RUNTIME)]
    polls = [asyncio.create_task(gateway.client.post(
        f"/v1/relay/sessions/{session}/poll", headers=paired.headers, json={"capacity": 1}))
        for session in sessions]

    async def all_parked() -> bool:
        return bool(gateway.services.broker.parked_polls(paired.lattice_id)
                    == MAX_SESSIONS_PER_RUNTIME)

    await async_wait_until(all_parked, timeout=5, what="every session to hold a poll")
    refused = await gateway.client.post("/v1/relay/sessions", headers=paired.headers,
                                        json=REGISTER)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) > 0
    for poll in polls:
        assert (await poll).status_code == 200


def _result_payload(job_id: str, data_json: bytes) -> bytes:
    return (b'{"v":1,"type":"result","jobId":"' + job_id.encode() + b'","seq":0,"data":'
            + data_json + b"}")


# Sealed payloads a broken or hostile daemon can send that the stdlib parser or orjson
# cannot handle: each must be the app's 502 provider_error, never a 500.
HOSTILE_RESULT_DATA = {
    "deeply nested": b'{"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "over-long integer": b'{"x":' + b"9" * 5000 + b"}",
    "integer beyond 64 bits": b'{"x":' + str(2**70).encode() + b"}",
    "nested past orjson's limit": b'{"x":' + b"[" * 300 + b"]" * 300 + b"}",
}


@pytest.mark.parametrize("data_json", HOSTILE_RESULT_DATA.values(), ids=HOSTILE_RESULT_DATA)
async def test_unrepresentable_result_is_a_502_not_a_crash(gateway: InProcessGateway,
                                                           data_json: bytes) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    chat, job_id = await chat_and_lease(gateway, paired, session)
    sealed = paired.sealer.seal(_result_payload(job_id, data_json))
    await gateway.client.post(f"/v1/relay/sessions/{session}/events", headers=paired.headers,
                              json={"events": [{"jobId": job_id, "seq": 0, "sealed": sealed}]})
    answer = await chat
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "provider_error"
    assert answer.headers["x-should-retry"] == "false"


async def test_unrepresentable_chunk_mid_stream_ends_with_an_error_event(
        gateway: InProcessGateway) -> None:
    paired = await pair(gateway)
    session = await register(gateway, paired)
    chat, job_id = await chat_and_lease(gateway, paired, session, stream=True)
    good = ResultEvent("chunk", job_id, 0, data={
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "x",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"},
                     "finish_reason": None}]})
    bad = (b'{"v":1,"type":"chunk","jobId":"' + job_id.encode() + b'","seq":1,"data":{"x":'
           + str(2**70).encode() + b"}}")
    await gateway.client.post(f"/v1/relay/sessions/{session}/events", headers=paired.headers,
                              json={"events": [
                                  {"jobId": job_id, "seq": 0,
                                   "sealed": paired.sealer.seal_json(good.to_dict())},
                                  {"jobId": job_id, "seq": 1, "sealed": paired.sealer.seal(bad)}]})
    answer = await chat
    assert answer.status_code == 200
    frames = [f for f in answer.text.split("\n\n") if f]
    assert len(frames) == 2, frames
    assert '"content":"hi"' in frames[0]
    assert frames[1].startswith("data: ") and '"code":"provider_error"' in frames[1]


# Request bodies the stdlib parser accepts but that cannot be sealed for the daemon.
UNRELAYABLE_CHAT_FIELDS = {
    "lone surrogate": b'"user": "\\ud800"',
    "integer beyond 64 bits": b'"metadata": {"x": ' + str(2**70).encode() + b"}",
    "nested past orjson's limit": b'"metadata": {"x": ' + b"[" * 300 + b"]" * 300 + b"}",
}


@pytest.mark.parametrize("field", UNRELAYABLE_CHAT_FIELDS.values(), ids=UNRELAYABLE_CHAT_FIELDS)
async def test_unrelayable_chat_body_is_400_before_anything_is_queued(
        gateway: InProcessGateway, field: bytes) -> None:
    paired = await pair(gateway)
    await register(gateway, paired)
    raw = (b'{"model": "lattice:personal:' + paired.lattice_id.encode()
           + b'", "messages": [{"role": "user", "content": "hi"}], ' + field + b"}")
    answer = await gateway.client.post("/v1/chat/completions", content=raw,
                                       headers={"x-api-key": paired.key,
                                                "content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_request"
    assert answer.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("backend",
                         ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_longest_accepted_model_names_are_stored_on_every_database(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # The route accepts model names up to 256 characters; PostgreSQL enforces column
    # lengths (SQLite does not), so a shorter column was a 500 there.
    where = tmp_path if backend == "sqlite" else request.getfixturevalue("postgres_url")
    longest = "m" * 256
    async with inprocess_gateway(where) as gw:
        paired = await pair(gw)
        registered = await gw.client.post("/v1/relay/sessions", headers=paired.headers, json={
            "daemonVersion": "v" * 256, "maxConcurrency": 1,
            "provider": {"kind": "k" * 256, "models": [longest], "defaultModel": longest}})
        assert registered.status_code == 201, registered.text
        shown = await gw.client.get(f"/v1/personal-runtimes/{paired.lattice_id}",
                                    headers={"x-api-key": paired.key})
        assert shown.json()["runtime"]["defaultModel"] == longest
        assert shown.json()["runtime"]["models"] == [longest]


async def test_repairing_ends_the_old_daemons_sessions_at_redeem(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path, poll_window_seconds=30, presence_window_seconds=30,
                                 pickup_timeout_seconds=2) as gw:
        await _repairing_ends_the_old_daemons_sessions_at_redeem(gw)


async def _repairing_ends_the_old_daemons_sessions_at_redeem(
        gateway: InProcessGateway) -> None:
    paired = await pair(gateway)
    old_session = await register(gateway, paired)
    held = asyncio.create_task(gateway.client.post(
        f"/v1/relay/sessions/{old_session}/poll", headers=paired.headers,
        json={"capacity": 1}))

    async def parked() -> bool:
        return bool(gateway.services.broker.parked_polls(paired.lattice_id))

    await async_wait_until(parked, timeout=2, interval=0.002, what="the poll to park")
    minted = await gateway.client.post(
        f"/v1/personal-runtimes/{paired.lattice_id}/bootstrap-tokens",
        headers={"x-api-key": paired.key}, json={})
    redeemed = await gateway.client.post("/v1/relay/redeem", json={
        "bootstrapToken": minted.json()["bootstrapToken"],
        "daemonPublicKey": KeyPair.generate().public_text(), "daemonVersion": "test"})
    assert redeemed.status_code == 201
    # The old daemon (dead token, wrong key) holds nothing and takes no job sealed to the
    # new key: until the new daemon registers, chat is refused at once.
    assert (await asyncio.wait_for(held, 1.0)).json() == {"jobs": [], "cancels": []}
    chat = await gateway.client.post(
        "/v1/chat/completions", headers={"x-api-key": paired.key},
        json={"model": f"lattice:personal:{paired.lattice_id}", "messages": MESSAGES})
    assert chat.status_code == 503 and chat.json()["error"]["code"] == "runtime_unreachable"
    assert await shown_status(gateway, paired) == "offline"


async def test_event_posts_larger_than_a_request_body_are_accepted_up_to_the_relay_bound(
        gateway: InProcessGateway) -> None:
    """A result can outgrow the request that asked for it: the relay takes 16 MiB posts."""
    paired = await pair(gateway)
    session = await register(gateway, paired)
    large = {"events": [{"jobId": "job_x", "seq": 0, "sealed": "v1." + "a" * (6 << 20)}]}
    accepted = await gateway.client.post(f"/v1/relay/sessions/{session}/events",
                                         headers=paired.headers, json=large)
    assert accepted.status_code == 200  # judged per job (not leased here), not refused whole
    assert accepted.json()["refused"][0]["code"] == "lease_not_held"
    too_large = {"events": [{"jobId": "job_x", "seq": 0, "sealed": "v1." + "a" * (17 << 20)}]}
    refused = await gateway.client.post(f"/v1/relay/sessions/{session}/events",
                                        headers=paired.headers, json=too_large)
    assert refused.status_code == 413
    assert refused.json()["error"]["code"] == "request_too_large"


async def test_register_answers_whether_another_machine_serves_the_pairing(
        gateway: InProcessGateway) -> None:
    paired = await pair(gateway)

    async def register_as(instance: object) -> Any:
        return await gateway.client.post("/v1/relay/sessions", headers=paired.headers,
                                         json={**REGISTER, "instanceId": instance})

    first = await register_as("di_first")
    assert first.status_code == 201 and first.json()["instanceConflict"] is False
    copy = await register_as("di_copy")
    assert copy.status_code == 201 and copy.json()["instanceConflict"] is True
    for bad in ("x" * 65, 7, ""):
        refused = await register_as(bad)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "instanceId"
