"""The in-process broker: pickup, parking, windows, capacity, leases, presence, revoke, cancel."""

from __future__ import annotations

import asyncio
import time

import pytest

from lattice_gateway.relay import MemoryBroker, SessionNotFound
from lattice_protocol import ErrorCode, JobEnvelope, LatticeError, SealedEvent

RUNTIME = "prt_test"


def envelope(n: int = 0) -> JobEnvelope:
    return JobEnvelope(f"job_{n}", time.time() + 60, f"v1.sealed{n}")


def make_broker(**overrides: float) -> MemoryBroker:
    options = {"poll_window_seconds": 0.3, "presence_window_seconds": 0.3,
               "pickup_timeout_seconds": 5.0}
    options.update(overrides)
    return MemoryBroker(**options)


async def test_poll_returns_at_once_when_a_job_is_waiting() -> None:
    broker = make_broker(poll_window_seconds=30)
    session = await broker.register_session(RUNTIME, 4)
    ticket = await broker.submit(RUNTIME, envelope())
    started = time.perf_counter()
    result = await broker.poll(RUNTIME, session, 4)
    assert time.perf_counter() - started < 0.05
    assert [j.job_id for j in result.jobs] == ["job_0"]
    assert ticket.leased
    await broker.close()


async def test_parked_poll_is_woken_by_enqueue_within_a_millisecond() -> None:
    broker = make_broker(poll_window_seconds=30)
    session = await broker.register_session(RUNTIME, 1)
    poll = asyncio.create_task(broker.poll(RUNTIME, session, 1))
    await asyncio.sleep(0)  # let the poll park
    assert not poll.done()
    started = time.perf_counter()
    await broker.submit(RUNTIME, envelope())
    result = await poll
    assert time.perf_counter() - started < 0.005
    assert [j.job_id for j in result.jobs] == ["job_0"]
    await broker.close()


async def test_window_expiry_returns_empty() -> None:
    broker = make_broker(poll_window_seconds=0.2)
    session = await broker.register_session(RUNTIME, 1)
    started = time.monotonic()
    result = await broker.poll(RUNTIME, session, 1)
    elapsed = time.monotonic() - started
    assert result.jobs == [] and result.cancels == []
    assert 0.15 <= elapsed < 1.0
    await broker.close()


async def test_capacity_bounds_the_jobs_in_one_answer() -> None:
    broker = make_broker()
    session = await broker.register_session(RUNTIME, 2)
    for n in range(5):
        await broker.submit(RUNTIME, envelope(n))
    first = await broker.poll(RUNTIME, session, 2)
    second = await broker.poll(RUNTIME, session, 2)
    third = await broker.poll(RUNTIME, session, 2)
    assert [j.job_id for j in first.jobs] == ["job_0", "job_1"]
    assert [j.job_id for j in second.jobs] == ["job_2", "job_3"]
    assert [j.job_id for j in third.jobs] == ["job_4"]
    await broker.close()


async def test_capacity_zero_poll_gets_no_jobs_but_cancels() -> None:
    broker = make_broker(poll_window_seconds=5)
    session = await broker.register_session(RUNTIME, 1)
    ticket = await broker.submit(RUNTIME, envelope())
    await broker.poll(RUNTIME, session, 1)
    await broker.submit(RUNTIME, envelope(1))
    heartbeat = asyncio.create_task(broker.poll(RUNTIME, session, 0))
    await asyncio.sleep(0.01)
    assert not heartbeat.done()  # queued job_1 is not handed to a full daemon
    ticket.cancel("client_disconnected")
    result = await heartbeat
    assert result.jobs == []
    assert [(c.job_id, c.reason) for c in result.cancels] == [("job_0", "client_disconnected")]
    await broker.close()


async def test_events_from_another_session_are_refused_and_job_runs_once() -> None:
    broker = make_broker(presence_window_seconds=5, poll_window_seconds=0.1)
    owner = await broker.register_session(RUNTIME, 1)
    other = await broker.register_session(RUNTIME, 1)
    ticket = await broker.submit(RUNTIME, envelope())
    got = await broker.poll(RUNTIME, owner, 1)
    assert [j.job_id for j in got.jobs] == ["job_0"]
    # At most once: the other session never receives the leased job.
    assert (await broker.poll(RUNTIME, other, 1)).jobs == []
    refused = await broker.post_events(RUNTIME, other, [SealedEvent("job_0", 0, "v1.x")])
    assert [(r.job_id, r.code) for r in refused.refused] == [("job_0", "lease_not_held")]
    accepted = await broker.post_events(RUNTIME, owner, [SealedEvent("job_0", 0, "v1.x")])
    assert accepted.refused == []
    event = await ticket.next_event(1.0)
    assert isinstance(event, SealedEvent) and event.sealed == "v1.x"
    ticket.finish()  # a final event releases the lease
    after = await broker.post_events(RUNTIME, owner, [SealedEvent("job_0", 1, "v1.y")])
    assert [r.code for r in after.refused] == ["lease_not_held"]
    await broker.close()


async def test_unknown_session_or_other_runtime_is_session_not_found() -> None:
    broker = make_broker()
    session = await broker.register_session(RUNTIME, 1)
    with pytest.raises(SessionNotFound):
        await broker.poll("prt_other", session, 1)
    with pytest.raises(SessionNotFound):
        await broker.poll(RUNTIME, "rs_nope", 1)
    await broker.close()


async def test_pickup_timeout_fails_a_queued_job() -> None:
    broker = make_broker(pickup_timeout_seconds=0.2)
    ticket = await broker.submit(RUNTIME, envelope())
    failure = await ticket.next_event(3.0)
    assert isinstance(failure, LatticeError)
    assert failure.code is ErrorCode.RUNTIME_TIMEOUT
    assert not ticket.leased
    await broker.close()


async def test_dead_session_fails_its_leased_jobs_unreachable() -> None:
    broker = make_broker(presence_window_seconds=0.2)
    session = await broker.register_session(RUNTIME, 1)
    ticket = await broker.submit(RUNTIME, envelope())
    await broker.poll(RUNTIME, session, 1)
    assert (await broker.reachable([RUNTIME]))[RUNTIME]
    failure = await ticket.next_event(3.0)  # the daemon never polls or answers again
    assert isinstance(failure, LatticeError)
    assert failure.code is ErrorCode.RUNTIME_UNREACHABLE
    assert not (await broker.reachable([RUNTIME]))[RUNTIME]
    with pytest.raises(SessionNotFound):
        await broker.poll(RUNTIME, session, 1)
    await broker.close()


async def test_parked_poll_keeps_the_session_present() -> None:
    broker = make_broker(presence_window_seconds=0.1, poll_window_seconds=0.6)
    session = await broker.register_session(RUNTIME, 1)
    poll = asyncio.create_task(broker.poll(RUNTIME, session, 1))
    await asyncio.sleep(0.4)  # well past the presence window, poll still held
    assert (await broker.reachable([RUNTIME]))[RUNTIME]
    await poll
    await broker.close()


async def test_disconnect_of_a_parked_poll_ends_it_and_presence_expires() -> None:
    broker = make_broker(presence_window_seconds=0.2, poll_window_seconds=30)
    session = await broker.register_session(RUNTIME, 1)
    dropped = asyncio.Event()

    async def receive() -> dict[str, str]:
        await dropped.wait()
        return {"type": "http.disconnect"}

    poll = asyncio.create_task(broker.poll(RUNTIME, session, 1, receive=receive))
    await asyncio.sleep(0.01)
    dropped.set()
    result = await asyncio.wait_for(poll, 1.0)
    assert result.jobs == []
    deadline = time.monotonic() + 3
    while (await broker.reachable([RUNTIME]))[RUNTIME]:
        assert time.monotonic() < deadline, "runtime still reachable after the window"
        await asyncio.sleep(0.02)
    await broker.close()


async def test_revoke_fails_queued_and_leased_jobs_and_ends_parked_polls() -> None:
    broker = make_broker(poll_window_seconds=30)
    session = await broker.register_session(RUNTIME, 1)
    leased = await broker.submit(RUNTIME, envelope(0))
    await broker.poll(RUNTIME, session, 1)
    queued = await broker.submit(RUNTIME, envelope(1))
    parked = asyncio.create_task(broker.poll(RUNTIME, session, 0))
    await asyncio.sleep(0.01)
    await broker.revoke_runtime(RUNTIME)
    for ticket in (leased, queued):
        failure = await ticket.next_event(1.0)
        assert isinstance(failure, LatticeError)
        assert failure.code is ErrorCode.RUNTIME_REVOKED
    assert (await asyncio.wait_for(parked, 1.0)).jobs == []
    assert not (await broker.reachable([RUNTIME]))[RUNTIME]
    late = await broker.submit(RUNTIME, envelope(2))
    failure = await late.next_event(1.0)
    assert isinstance(failure, LatticeError) and failure.code is ErrorCode.RUNTIME_REVOKED
    await broker.close()


async def test_cancel_of_a_queued_job_drops_it() -> None:
    broker = make_broker()
    session = await broker.register_session(RUNTIME, 1)
    ticket = await broker.submit(RUNTIME, envelope(0))
    ticket.cancel("client_disconnected")
    await broker.submit(RUNTIME, envelope(1))
    result = await broker.poll(RUNTIME, session, 4)
    assert [j.job_id for j in result.jobs] == ["job_1"]
    assert result.cancels == []  # nothing to tell: the daemon never had it
    failure = await ticket.next_event(0.1)
    assert isinstance(failure, LatticeError) and failure.code is ErrorCode.CANCELLED
    await broker.close()


async def test_cancel_reaches_the_session_in_the_events_answer() -> None:
    broker = make_broker()
    session = await broker.register_session(RUNTIME, 2)
    first = await broker.submit(RUNTIME, envelope(0))
    await broker.submit(RUNTIME, envelope(1))
    await broker.poll(RUNTIME, session, 2)
    first.cancel("timeout")
    answer = await broker.post_events(RUNTIME, session, [SealedEvent("job_1", 0, "v1.z")])
    assert [(c.job_id, c.reason) for c in answer.cancels] == [("job_0", "timeout")]
    await broker.close()


async def test_deregister_turns_the_runtime_offline_at_once() -> None:
    broker = make_broker(presence_window_seconds=30)
    session = await broker.register_session(RUNTIME, 1)
    assert (await broker.reachable([RUNTIME]))[RUNTIME]
    await broker.deregister_session(RUNTIME, session)
    assert not (await broker.reachable([RUNTIME]))[RUNTIME]
    assert (await broker.last_seen([RUNTIME]))[RUNTIME] is not None
    await broker.close()
