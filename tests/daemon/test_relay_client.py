"""RelayClient against a scripted relay (httpx.MockTransport): sessions, polls, events,
backoff, Retry-After, session loss and final credential errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from lattice_daemon import relay as relay_module
from lattice_daemon.backoff import Backoff, parse_retry_after
from lattice_daemon.relay import (
    Outbox,
    RelayApi,
    RelayClient,
    RelayState,
    RelayStatus,
    relay_base_url,
)
from lattice_protocol import ResultEvent
from tests.daemon.test_runner import FakeProvider, Harness
from tests.support.net import async_wait_until

TOKEN = "lrdt_v1_" + "t" * 43


class ScriptedRelay:
    """Answers like the gateway's relay unless a test queued another answer."""

    def __init__(self) -> None:
        self.log: list[tuple[str, float, dict[str, Any]]] = []
        self.scripted: dict[str, deque[Any]] = defaultdict(deque)
        self.jobs: list[dict[str, Any]] = []
        self.cancels: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.event_posts = 0
        self.sessions = 0
        self.hold = 0.2  # how long an empty poll is held
        self.changed = asyncio.Event()
        self.post_sizes: list[int] = []
        self.post_jobs: list[set[str]] = []
        self.events_gate = asyncio.Event()  # cleared: event posts wait
        self.events_gate.set()

    def add_job(self, envelope: dict[str, Any]) -> None:
        self.jobs.append(envelope)
        self.changed.set()

    def add_cancel(self, job_id: str, reason: str = "cancelled") -> None:
        self.cancels.append({"jobId": job_id, "reason": reason})
        self.changed.set()

    def kind(self, request: httpx.Request) -> str:
        path = request.url.path
        if request.method == "DELETE":
            return "deregister"
        if path.endswith("/sessions"):
            return "register"
        return "poll" if path.endswith("/poll") else "events"

    def count(self, kind: str) -> int:
        return sum(1 for k, _, _ in self.log if k == kind)

    async def handler(self, request: httpx.Request) -> httpx.Response:
        kind = self.kind(request)
        body = json.loads(request.content) if request.content else {}
        self.log.append((kind, time.monotonic(), body))
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        if self.scripted[kind]:
            answer = self.scripted[kind].popleft()
            if isinstance(answer, Exception):
                raise answer
            if callable(answer):
                return await answer(request)  # type: ignore[no-any-return]
            return answer  # type: ignore[no-any-return]
        if kind == "register":
            self.sessions += 1
            return httpx.Response(201, json={"sessionId": f"s{self.sessions}",
                                             "pollWindowSeconds": 1})
        if kind == "poll":
            deadline = time.monotonic() + self.hold
            while not (self.cancels or (self.jobs and body["capacity"])):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), remaining)
            jobs = self.jobs[:body["capacity"]]
            del self.jobs[:len(jobs)]
            cancels, self.cancels = self.cancels, []
            return httpx.Response(200, json={"jobs": jobs, "cancels": cancels})
        if kind == "events":
            self.event_posts += 1
            self.post_sizes.append(len(body["events"]))
            self.post_jobs.append({e["jobId"] for e in body["events"]})
            await self.events_gate.wait()
            self.events.extend(body["events"])
            return httpx.Response(200, json={"refused": [], "cancels": []})
        return httpx.Response(204)


class Setup:
    def __init__(self, provider: FakeProvider | None = None, max_concurrency: int = 2) -> None:
        self.relay = ScriptedRelay()
        self.harness = Harness(provider or FakeProvider(), max_concurrency=max_concurrency)
        self.status = RelayStatus(RelayState.CONNECTING, time.time(), gateway="http://gw")
        api = RelayApi("http://gw.test", TOKEN,
                       transport=httpx.MockTransport(self.relay.handler))
        outbox = Outbox()
        self.client = RelayClient(api, self.harness.runner, self.status, outbox=outbox,
                                  describe_provider=self.describe,
                                  backoff=Backoff(0.01, 0.05))
        self.harness.runner._emit = outbox.put  # route events through the client

    async def describe(self) -> dict[str, Any]:
        return {"kind": "ollama", "models": ["m1"], "defaultModel": "m1"}

    def opened_events(self) -> list[ResultEvent]:
        return [ResultEvent.from_dict(self.harness.gateway.open_json(e["sealed"]))
                for e in self.relay.events]

    async def state(self, state: RelayState, timeout: float = 3.0) -> None:
        async def reached() -> bool:
            return self.status.state == state

        await async_wait_until(reached, timeout=timeout, what=f"relay state {state.value}")


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    s = Setup()
    yield s
    await s.client.close(deregister=False)


async def test_registers_then_polls_with_free_capacity(setup: Setup) -> None:
    setup.client.start()
    await setup.state(RelayState.CONNECTED)
    await async_wait_until(_async(lambda: setup.relay.count("poll") >= 1), timeout=2)
    kind, _, body = setup.relay.log[0]
    assert kind == "register"
    assert body["maxConcurrency"] == 2 and body["provider"]["defaultModel"] == "m1"
    poll_body = next(b for k, _, b in setup.relay.log if k == "poll")
    assert poll_body == {"capacity": 2}
    assert setup.status.last_poll_at is not None


async def test_job_is_run_and_its_events_posted(setup: Setup) -> None:
    spec = setup.harness.spec(stream=True)
    setup.relay.add_job(setup.harness.envelope(spec).to_dict())
    setup.client.start()
    await async_wait_until(_async(lambda: any(e.kind == "end" for e in setup.opened_events())),
                           timeout=3, what="end event")
    kinds = [e.kind for e in setup.opened_events()]
    assert kinds == ["chunk", "chunk", "end"]


async def test_events_produced_during_a_post_go_out_together_in_order(setup: Setup) -> None:
    setup.relay.events_gate.clear()  # the first post hangs until released
    first = setup.harness.spec(stream=True)
    second = setup.harness.spec(stream=True)
    setup.relay.add_job(setup.harness.envelope(first).to_dict())
    setup.relay.add_job(setup.harness.envelope(second).to_dict())
    setup.client.start()
    await async_wait_until(_async(lambda: setup.harness.runner.counters.served == 2),
                           timeout=3, what="both jobs done")
    assert setup.relay.event_posts == 1  # one post at a time: the rest waits for it
    setup.relay.events_gate.set()
    await async_wait_until(_async(lambda: len(setup.relay.events) == 6), timeout=3,
                           what="all six events delivered")
    # Whatever piled up went out in one more post at most, mixing both jobs' events.
    assert setup.relay.event_posts <= 2 and sum(setup.relay.post_sizes) == 6
    assert {first.job_id, second.job_id} in setup.relay.post_jobs
    for spec in (first, second):
        events = [e for e in setup.opened_events() if e.job_id == spec.job_id]
        assert [e.seq for e in events] == [0, 1, 2] and events[-1].kind == "end"


async def test_cancel_notice_from_a_poll_cancels_the_running_job() -> None:
    provider = FakeProvider(stall_after=0)
    s = Setup(provider)
    try:
        spec = s.harness.spec(stream=True, first=30)
        s.relay.add_job(s.harness.envelope(spec).to_dict())
        s.client.start()
        await asyncio.wait_for(provider.stream_started.wait(), 3)
        s.relay.add_cancel(spec.job_id, "client_disconnected")
        await async_wait_until(_async(lambda: provider.closed_streams == 1), timeout=3)
        assert s.harness.runner.free_slots == 2
    finally:
        await s.client.close(deregister=False)


async def test_all_slots_busy_keeps_a_capacity_zero_heartbeat_poll() -> None:
    provider = FakeProvider(stall_after=0)
    s = Setup(provider, max_concurrency=1)
    try:
        spec = s.harness.spec(stream=True, first=30)
        s.relay.add_job(s.harness.envelope(spec).to_dict())
        s.client.start()
        await async_wait_until(
            _async(lambda: any(k == "poll" and b["capacity"] == 0 for k, _, b in s.relay.log)),
            timeout=3, what="a capacity-0 poll")
        # The heartbeat brings the cancel notice for the busy job.
        s.relay.add_cancel(spec.job_id, "timeout")
        await async_wait_until(_async(lambda: provider.closed_streams == 1), timeout=3)
        # The freed slot is polled for at once, with real capacity.
        await async_wait_until(
            _async(lambda: s.relay.log[-1][0] == "poll" and s.relay.log[-1][2]["capacity"] == 1),
            timeout=3, what="a capacity-1 poll after the slot freed")
    finally:
        await s.client.close(deregister=False)


async def test_event_post_failures_are_retried_in_order(setup: Setup) -> None:
    setup.relay.scripted["events"].append(httpx.Response(503, text="busy"))
    setup.relay.scripted["events"].append(httpx.ConnectError("connection reset"))
    spec = setup.harness.spec(stream=True)
    setup.relay.add_job(setup.harness.envelope(spec).to_dict())
    setup.client.start()
    await async_wait_until(_async(lambda: any(e.kind == "end" for e in setup.opened_events())),
                           timeout=5, what="end event")
    events = setup.opened_events()
    assert [e.seq for e in events] == list(range(len(events)))  # nothing lost or reordered
    assert setup.relay.count("events") >= 3


async def test_a_long_retry_after_on_events_never_holds_results_past_the_give_up(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module, "EVENTS_GIVE_UP", 0.3)
    setup.relay.scripted["events"].append(
        httpx.Response(429, headers={"retry-after": "3600"}, text="slow down"))
    spec = setup.harness.spec(stream=True)
    setup.relay.add_job(setup.harness.envelope(spec).to_dict())
    setup.client.start()
    # waited 0.3 s (the give-up point), not an hour; the retry then delivered everything
    await async_wait_until(_async(lambda: any(e.kind == "end" for e in setup.opened_events())),
                           timeout=3, what="end event")
    assert [e.kind for e in setup.opened_events()] == ["chunk", "chunk", "end"]


async def test_refused_events_drop_the_job() -> None:
    provider = FakeProvider(pieces=["a"] * 100, delay=0.02)
    s = Setup(provider)
    try:
        spec = s.harness.spec(stream=True)
        s.relay.scripted["events"].append(httpx.Response(200, json={
            "refused": [{"jobId": spec.job_id, "code": "lease_not_held",
                         "message": "not leased"}], "cancels": []}))
        s.relay.add_job(s.harness.envelope(spec).to_dict())
        s.client.start()
        await async_wait_until(_async(lambda: provider.closed_streams == 1), timeout=3,
                               what="the refused job's provider stream closed")
        assert s.harness.runner.free_slots == 2
    finally:
        await s.client.close(deregister=False)


async def test_retry_after_is_honoured(setup: Setup) -> None:
    setup.relay.scripted["register"].append(
        httpx.Response(429, headers={"retry-after": "0.4"},
                       json={"error": {"message": "slow down", "code": "rate_limited"}}))
    setup.client.start()
    await setup.state(RelayState.CONNECTED)
    first, second = [t for k, t, _ in setup.relay.log if k == "register"][:2]
    assert second - first >= 0.39  # the backoff alone would have waited ~0.01 s
    assert setup.status.last_error is None


async def test_an_absurd_poll_window_is_capped_at_the_protocol_bound(setup: Setup) -> None:
    # The poll's read timeout is the window plus a grace: it must stay finite and short.
    setup.relay.scripted["register"].append(
        httpx.Response(201, json={"sessionId": "s9", "pollWindowSeconds": 1e9}))
    session = await setup.client.api.register({})
    assert session.poll_window == 50.0


async def test_unauthorized_means_repair_required_and_no_retry(setup: Setup) -> None:
    setup.relay.scripted["register"].append(
        httpx.Response(401, json={"error": {"message": "bad token", "code": "invalid_api_key"}}))
    setup.client.start()
    await setup.state(RelayState.REPAIR_REQUIRED)
    assert "re-pair required" in (setup.status.last_error or "")
    poll_task = setup.client._poll_task
    assert poll_task is not None
    await asyncio.wait_for(asyncio.shield(poll_task), 1)  # the loop ended by itself
    assert setup.relay.count("register") == 1 and setup.relay.count("poll") == 0


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refusal_that_is_not_the_gateways_is_retried(setup: Setup,
                                                             status: int) -> None:
    # e.g. a corporate proxy's or WAF's "Access denied" page: not a revoked credential
    setup.relay.scripted["register"].append(
        httpx.Response(status, text="<html>Access denied</html>"))
    setup.client.start()
    await setup.state(RelayState.CONNECTED)
    assert setup.relay.count("register") == 2


async def test_revoked_runtime_mid_session_means_repair_required(setup: Setup) -> None:
    setup.client.start()
    await setup.state(RelayState.CONNECTED)
    setup.relay.scripted["poll"].append(httpx.Response(
        403, json={"error": {"message": "revoked", "code": "runtime_revoked"}}))
    await setup.state(RelayState.REPAIR_REQUIRED)
    assert setup.status.last_error == "runtime revoked: re-pair required"
    polls = setup.relay.count("poll")
    assert setup.client._poll_task is not None
    await asyncio.wait_for(asyncio.shield(setup.client._poll_task), 1)
    assert setup.relay.count("poll") == polls


async def test_an_unexpected_error_in_the_poll_loop_is_retried(setup: Setup) -> None:
    setup.client.start()
    await setup.state(RelayState.CONNECTED)
    polls = setup.relay.count("poll")
    setup.relay.scripted["poll"].append(RuntimeError("a bug below the relay client"))
    await setup.state(RelayState.RECONNECTING)
    assert setup.status.last_error == "internal error: RuntimeError"
    await setup.state(RelayState.CONNECTED)  # polling went on instead of dying silently
    await async_wait_until(_async(lambda: setup.relay.count("poll") >= polls + 2), timeout=3)


async def test_an_unexpected_error_posting_events_does_not_stop_the_sender(
        setup: Setup) -> None:
    setup.relay.scripted["events"].append(RuntimeError("a bug below the relay client"))
    first = setup.harness.spec(stream=False)
    setup.relay.add_job(setup.harness.envelope(first).to_dict())
    setup.client.start()
    await async_wait_until(_async(lambda: setup.relay.count("events") >= 1), timeout=3)
    second = setup.harness.spec(stream=False)
    setup.relay.add_job(setup.harness.envelope(second).to_dict())
    await async_wait_until(
        _async(lambda: any(e.job_id == second.job_id for e in setup.opened_events())),
        timeout=3, what="the next job's result")


async def test_changed_provider_models_are_registered_again_once_idle() -> None:
    # e.g. the daemon started at login before Ollama: it registered no models
    models: list[str] = []
    setup = Setup()

    async def describe() -> dict[str, Any]:
        return {"kind": "ollama", "models": list(models),
                "defaultModel": models[0] if models else None}

    setup.client._describe_provider = describe
    try:
        setup.client.start()
        await setup.state(RelayState.CONNECTED)
        await setup.client.check_provider()
        assert not setup.client._registration_stale  # nothing changed: no new session
        models.append("llama3.2:latest")
        await setup.client.check_provider()
        await async_wait_until(_async(lambda: setup.relay.count("deregister") == 1),
                               timeout=3, what="the old session ended")
        registers = [body for kind, _, body in setup.relay.log if kind == "register"]
        assert len(registers) == 2
        assert registers[1]["provider"]["models"] == ["llama3.2:latest"]
        assert setup.client.session is not None
        assert setup.client.session.session_id == "s2"
        assert setup.status.state == RelayState.CONNECTED
        # and it keeps serving on the new session
        spec = setup.harness.spec(stream=True)
        setup.relay.add_job(setup.harness.envelope(spec).to_dict())
        await async_wait_until(
            _async(lambda: any(e.kind == "end" for e in setup.opened_events())), timeout=3)
    finally:
        await setup.client.close(deregister=False)


async def test_lost_session_registers_again(setup: Setup) -> None:
    setup.client.start()
    await setup.state(RelayState.CONNECTED)
    setup.relay.scripted["poll"].append(httpx.Response(
        404, json={"error": {"message": "gone", "code": "session_not_found"}}))
    await async_wait_until(_async(lambda: setup.relay.count("register") == 2), timeout=3)
    await setup.state(RelayState.CONNECTED)
    assert setup.client.session is not None and setup.client.session.session_id == "s2"


async def test_network_errors_back_off_and_recover(setup: Setup) -> None:
    for _ in range(3):
        setup.relay.scripted["register"].append(httpx.ConnectError("connection refused"))
    setup.client.start()
    await async_wait_until(_async(lambda: setup.status.last_error is not None), timeout=2)
    assert setup.status.last_error == "gateway unreachable: connection refused"
    await setup.state(RelayState.CONNECTED)
    assert setup.relay.count("register") == 4
    assert setup.status.last_error is None


async def test_gateway_errors_after_connecting_show_reconnecting(setup: Setup) -> None:
    setup.client.start()
    await setup.state(RelayState.CONNECTED)
    for _ in range(2):
        setup.relay.scripted["poll"].append(httpx.Response(502, text="bad gateway"))
    await setup.state(RelayState.RECONNECTING)
    assert setup.status.last_error == "gateway answered HTTP 502"
    await setup.state(RelayState.CONNECTED)


async def test_deregister_on_close(setup: Setup) -> None:
    setup.client.start()
    await setup.state(RelayState.CONNECTED)
    await setup.client.close(deregister=True)
    assert setup.relay.count("deregister") == 1


async def test_stop_ends_even_when_the_http_layer_turns_a_cancel_into_an_error(
        setup: Setup) -> None:
    # A library may turn a cancellation that lands mid-request into an error (CPython
    # 3.11's asyncio.timeout racing its deadline); the retrying loop must still end.
    polling = asyncio.Event()

    async def swallowing(request: httpx.Request) -> httpx.Response:
        polling.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise httpx.ReadTimeout("cancelled mid-read", request=request) from None
        raise AssertionError("the poll was never cancelled")

    setup.relay.scripted["poll"].extend([swallowing] * 100)  # every poll does it
    setup.client.start()
    await asyncio.wait_for(polling.wait(), 3)
    await asyncio.wait_for(setup.client.stop_polling(), 3)
    assert setup.client._poll_task is not None and setup.client._poll_task.done()


def test_backoff_grows_jittered_and_capped() -> None:
    backoff = Backoff(0.5, 30.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(12)]
    ceilings = [min(30.0, 0.5 * 2 ** n) for n in range(12)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 30.0 and delays[-1] >= 15.0
    assert backoff.next_delay(retry_after=7) == 7
    assert backoff.next_delay(retry_after=10_000) == 600  # never parked for hours
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after("-1") is None and parse_retry_after(None) is None
    assert parse_retry_after("inf") is None and parse_retry_after("nan") is None


def test_relay_base_url() -> None:
    assert relay_base_url("https://gw.example") == "https://gw.example/v1/relay"
    assert relay_base_url("https://gw.example/") == "https://gw.example/v1/relay"
    assert relay_base_url("https://gw.example/v1/relay") == "https://gw.example/v1/relay"


def _async(condition: Any) -> Any:
    async def check() -> bool:
        return bool(condition())

    return check


async def test_a_draining_replicas_503_is_a_move_not_an_outage(setup: Setup) -> None:
    setup.client.start()
    await setup.state(RelayState.CONNECTED)
    draining = httpx.Response(503, headers={"x-should-retry": "true"}, json={"error": {
        "message": "this gateway replica is shutting down", "type": "api_error",
        "param": None, "code": "service_unavailable"}})
    polls = setup.relay.count("poll")
    for _ in range(3):
        setup.relay.scripted["poll"].append(draining)
    seen: set[RelayState] = set()

    async def moved_on() -> bool:  # the three 503s answered, and a normal poll after them
        seen.add(setup.status.state)
        return setup.relay.count("poll") >= polls + 4

    await async_wait_until(moved_on, timeout=3, interval=0.001, what="polls past the 503s")
    assert seen == {RelayState.CONNECTED} and setup.status.last_error is None


async def test_a_lease_that_reached_the_daemon_after_the_presence_window_is_not_run() -> None:
    # The poll answer took 0.4 s to arrive though the gateway held it 0 s: the gateway,
    # whose presence window is 0.2 s, may have failed the job for the app already.
    s = Setup()
    try:
        late = s.harness.envelope(s.harness.spec()).to_dict()
        s.relay.scripted["register"].append(httpx.Response(201, json={
            "sessionId": "s1", "pollWindowSeconds": 1, "presenceWindowSeconds": 0.2}))

        async def held_back_by_the_network(request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(0.4)  # the network, not the gateway, holds the answer
            return httpx.Response(200, json={"jobs": [late], "cancels": [],
                                             "heldSeconds": 0.0})

        s.relay.scripted["poll"].append(held_back_by_the_network)
        s.client.start()
        await async_wait_until(_async(lambda: s.opened_events()), timeout=3,
                               what="the refusal")
        refusal = s.opened_events()[0]
        assert (refusal.kind, refusal.code) == ("error", "runtime_unreachable")
        assert "too late" in (refusal.message or "")
        assert s.harness.provider.requests == []  # never reached the provider
        # The same delay with the gateway holding the poll most of it: run.
        on_time = s.harness.envelope(s.harness.spec()).to_dict()

        async def held_by_the_gateway(request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(0.4)
            return httpx.Response(200, json={"jobs": [on_time], "cancels": [],
                                             "heldSeconds": 0.35})

        s.relay.scripted["poll"].append(held_by_the_gateway)
        await async_wait_until(_async(lambda: len(s.harness.provider.requests) == 1),
                               timeout=3, what="the on-time job at the provider")
    finally:
        await s.client.close(deregister=False)
