"""The broker contract, for the in-process and the Redis broker (real Redis at
127.0.0.1:6379, a unique key prefix per test): pickup, parking, windows, capacity,
leases, presence, revoke, cancel.

Where an outcome depends on time, the broker runs on a ``ManualClock``: its time moves
only when the test advances it, so "before the window ends" and "after" are exact, and
a poll answered while time stands still was answered by what the test did, not by its
window. How fast is the benchmarks' business (``relay_pickup.py``), not a timed unit
test's on a shared 2-core machine; ``HANG_GUARD`` only bounds how long a broken broker
keeps a test waiting.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from lattice_gateway.relay import SessionNotFound
from lattice_gateway.relay.base import MAX_SESSIONS_PER_RUNTIME
from lattice_gateway.relay.memory import MemoryBroker
from lattice_gateway.relay.redis import RedisBroker
from lattice_protocol import ErrorCode, JobEnvelope, LatticeError, SealedEvent
from tests.support.faultproxy import FaultProxy, run_fault_proxy
from tests.support.net import async_wait_until

RUNTIME = "lat_test"
Maker = Callable[..., Any]
REDIS_URL = "redis://127.0.0.1:6379/0"
HANG_GUARD = 10.0


class ManualClock:
    """Broker time (``relay.base.Clock``) that moves only when the test advances it.

    A sleeper (a broker's sweeper) wakes at the next ``advance`` whatever it asked for:
    the sweep it then runs reads the time anyway.
    """

    def __init__(self) -> None:
        self._elapsed = 0.0
        self._wall_start = time.time()  # Redis presence stamps are unix seconds
        self._sleepers: list[asyncio.Future[None]] = []

    def monotonic(self) -> float:
        return 1000.0 + self._elapsed

    def time(self) -> float:
        return self._wall_start + self._elapsed

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append(future)
        try:
            await future
        finally:
            if future in self._sleepers:
                self._sleepers.remove(future)

    async def advance(self, seconds: float) -> None:
        """Move time on; return once the sweepers it woke have swept and sleep again."""

        async def sleeping(count: int) -> bool:
            return len(self._sleepers) >= count

        await async_wait_until(lambda: sleeping(1), timeout=HANG_GUARD, interval=0.002,
                               what="a broker sweeper waiting for time to move")
        woken, self._sleepers = self._sleepers, []
        self._elapsed += seconds
        for future in woken:
            future.set_result(None)
        await async_wait_until(lambda: sleeping(len(woken)), timeout=HANG_GUARD,
                               interval=0.002, what="the sweep at the new time")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def envelope(n: int = 0) -> JobEnvelope:
    return JobEnvelope(f"job_{n}", time.time() + 60, f"v1.sealed{n}")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_broker(kind: str) -> AsyncIterator[Callable[..., Any]]:
    made: list[Any] = []
    prefix = f"lattice-test:{secrets.token_hex(6)}:"

    def make(**overrides: Any) -> Any:
        options = {"poll_window_seconds": 0.3, "presence_window_seconds": 0.3,
                   "pickup_timeout_seconds": 5.0}
        options.update(overrides)
        broker = (MemoryBroker(**options) if kind == "memory"
                  else RedisBroker(REDIS_URL, key_prefix=prefix, **options))
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()
    if kind == "redis":
        import redis.asyncio as aioredis

        client = aioredis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def parked(broker: Any, count: int = 1) -> None:
    async def enough() -> bool:
        return bool(broker.parked_polls(RUNTIME) >= count)

    await async_wait_until(enough, timeout=2, interval=0.002, what="the poll to park")


async def test_poll_returns_at_once_when_a_job_is_waiting(make_broker: Maker,
                                                          clock: ManualClock) -> None:
    broker = make_broker(poll_window_seconds=30, clock=clock)
    session = await broker.register_session(RUNTIME, 4)
    await broker.submit(RUNTIME, envelope())
    # Time stands still: the window cannot answer the poll, only the job.
    result = await asyncio.wait_for(broker.poll(RUNTIME, session, 4), HANG_GUARD)
    assert [j.job_id for j in result.jobs] == ["job_0"]
    await broker.close()


async def test_parked_poll_is_woken_by_enqueue_at_once(make_broker: Maker,
                                                       clock: ManualClock) -> None:
    broker = make_broker(poll_window_seconds=30, clock=clock)
    session = await broker.register_session(RUNTIME, 1)
    poll = asyncio.create_task(broker.poll(RUNTIME, session, 1))
    await parked(broker)
    assert not poll.done()
    await broker.submit(RUNTIME, envelope())
    result = await asyncio.wait_for(poll, HANG_GUARD)  # time stood still: the job woke it
    assert [j.job_id for j in result.jobs] == ["job_0"]
    await broker.close()


async def test_window_expiry_returns_empty(make_broker: Maker, clock: ManualClock) -> None:
    broker = make_broker(poll_window_seconds=0.2, clock=clock)
    session = await broker.register_session(RUNTIME, 1)
    poll = asyncio.create_task(broker.poll(RUNTIME, session, 1))
    await parked(broker)
    await clock.advance(0.19)
    assert not poll.done()  # still inside its window
    await clock.advance(0.02)
    result = await asyncio.wait_for(poll, HANG_GUARD)
    assert result.jobs == [] and result.cancels == []
    await broker.close()


async def test_capacity_bounds_the_jobs_in_one_answer(make_broker: Maker) -> None:
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


async def test_capacity_zero_poll_gets_no_jobs_but_cancels(make_broker: Maker) -> None:
    broker = make_broker(poll_window_seconds=5)
    session = await broker.register_session(RUNTIME, 1)
    ticket = await broker.submit(RUNTIME, envelope())
    await broker.poll(RUNTIME, session, 1)
    await broker.submit(RUNTIME, envelope(1))
    heartbeat = asyncio.create_task(broker.poll(RUNTIME, session, 0))
    await parked(broker)
    await asyncio.sleep(0.02)
    assert not heartbeat.done()  # queued job_1 is not handed to a full daemon
    ticket.cancel("client_disconnected")
    result = await heartbeat
    assert result.jobs == []
    assert [(c.job_id, c.reason) for c in result.cancels] == [("job_0", "client_disconnected")]
    await broker.close()


async def test_events_from_another_session_are_refused_and_job_runs_once(
        make_broker: Maker) -> None:
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
    event = await ticket.next_event(HANG_GUARD)
    assert isinstance(event, SealedEvent) and event.sealed == "v1.x"
    ticket.finish()  # a final event releases the lease (Redis: one round trip later)

    async def late_event_refused() -> bool:
        after = await broker.post_events(RUNTIME, owner, [SealedEvent("job_0", 1, "v1.y")])
        return [r.code for r in after.refused] == ["lease_not_held"]

    await async_wait_until(late_event_refused, timeout=2, what="the lease to be released")
    await broker.close()


async def test_unknown_session_or_other_runtime_is_session_not_found(make_broker: Maker) -> None:
    broker = make_broker()
    session = await broker.register_session(RUNTIME, 1)
    with pytest.raises(SessionNotFound):
        await broker.poll("lat_other", session, 1)
    with pytest.raises(SessionNotFound):
        await broker.poll(RUNTIME, "rs_nope", 1)
    await broker.close()


async def test_another_runtimes_poll_naming_a_session_leaves_its_parked_poll_alone(
        make_broker: Maker, clock: ManualClock) -> None:
    # Session ids are not secret (they appear in access logs): a daemon paired to another
    # runtime that polls with the victim's session id gets session_not_found, and the
    # victim's parked poll neither ends nor stops taking jobs.
    broker = make_broker(poll_window_seconds=30, clock=clock)
    victim = await broker.register_session(RUNTIME, 1)
    await broker.register_session("lat_attacker", 1)
    held = asyncio.create_task(broker.poll(RUNTIME, victim, 1))
    await parked(broker)
    for _ in range(3):
        with pytest.raises(SessionNotFound) as refused:
            await broker.poll("lat_attacker", victim, 1)
        assert refused.value.code is ErrorCode.SESSION_NOT_FOUND
    assert broker.parked_polls(RUNTIME) == 1
    # Time stands still: only the job can answer the victim's poll, and it must.
    await broker.submit(RUNTIME, envelope())
    result = await asyncio.wait_for(held, HANG_GUARD)
    assert [j.job_id for j in result.jobs] == ["job_0"]
    await broker.close()


async def test_pickup_timeout_fails_a_queued_job(make_broker: Maker,
                                                 clock: ManualClock) -> None:
    broker = make_broker(pickup_timeout_seconds=0.2, clock=clock)
    ticket = await broker.submit(RUNTIME, envelope())
    await clock.advance(0.19)
    assert await ticket.next_event(0) is None  # not yet
    await clock.advance(0.02)
    failure = await ticket.next_event(HANG_GUARD)
    assert isinstance(failure, LatticeError)
    assert failure.code is ErrorCode.RUNTIME_TIMEOUT
    await broker.close()


async def test_dead_session_fails_its_leased_jobs_unreachable(make_broker: Maker,
                                                              clock: ManualClock) -> None:
    broker = make_broker(presence_window_seconds=0.2, clock=clock)
    session = await broker.register_session(RUNTIME, 1)
    ticket = await broker.submit(RUNTIME, envelope())
    await broker.poll(RUNTIME, session, 1)
    assert (await broker.reachable([RUNTIME]))[RUNTIME]
    await clock.advance(0.3)  # the daemon never polls or answers again
    failure = await ticket.next_event(HANG_GUARD)
    assert isinstance(failure, LatticeError)
    assert failure.code is ErrorCode.RUNTIME_UNREACHABLE
    assert not (await broker.reachable([RUNTIME]))[RUNTIME]
    with pytest.raises(SessionNotFound):
        await broker.poll(RUNTIME, session, 1)
    await broker.close()


async def test_parked_poll_keeps_the_session_present(make_broker: Maker,
                                                     clock: ManualClock) -> None:
    broker = make_broker(presence_window_seconds=0.1, poll_window_seconds=0.6, clock=clock)
    session = await broker.register_session(RUNTIME, 1)
    poll = asyncio.create_task(broker.poll(RUNTIME, session, 1))
    await parked(broker)
    await clock.advance(0.4)  # well past the presence window, poll still held
    assert not poll.done()
    assert (await broker.reachable([RUNTIME]))[RUNTIME]
    await clock.advance(0.3)  # past the poll window
    await asyncio.wait_for(poll, HANG_GUARD)
    await broker.close()


async def test_disconnect_of_a_parked_poll_ends_it_and_presence_expires(
        make_broker: Maker, clock: ManualClock) -> None:
    broker = make_broker(presence_window_seconds=0.2, poll_window_seconds=30, clock=clock)
    session = await broker.register_session(RUNTIME, 1)
    dropped = asyncio.Event()

    async def receive() -> dict[str, str]:
        await dropped.wait()
        return {"type": "http.disconnect"}

    poll = asyncio.create_task(broker.poll(RUNTIME, session, 1, receive=receive))
    await parked(broker)
    dropped.set()
    result = await asyncio.wait_for(poll, HANG_GUARD)  # time stood still: the drop ended it
    assert result.jobs == []
    await broker.flush()
    await clock.advance(0.3)  # past the presence window, counted from the poll's end
    assert not (await broker.reachable([RUNTIME]))[RUNTIME]
    await broker.close()


async def test_revoke_fails_queued_and_leased_jobs_and_ends_parked_polls(
        make_broker: Maker, clock: ManualClock) -> None:
    broker = make_broker(poll_window_seconds=30, clock=clock)
    session = await broker.register_session(RUNTIME, 1)
    leased = await broker.submit(RUNTIME, envelope(0))
    await broker.poll(RUNTIME, session, 1)
    queued = await broker.submit(RUNTIME, envelope(1))
    held = asyncio.create_task(broker.poll(RUNTIME, session, 0))
    await parked(broker)
    await broker.revoke_runtime(RUNTIME)
    for ticket in (leased, queued):
        failure = await ticket.next_event(HANG_GUARD)
        assert isinstance(failure, LatticeError)
        assert failure.code is ErrorCode.RUNTIME_REVOKED
    assert (await asyncio.wait_for(held, HANG_GUARD)).jobs == []
    assert not (await broker.reachable([RUNTIME]))[RUNTIME]
    late = await broker.submit(RUNTIME, envelope(2))
    failure = await late.next_event(HANG_GUARD)
    assert isinstance(failure, LatticeError) and failure.code is ErrorCode.RUNTIME_REVOKED
    await broker.close()


async def test_cancel_of_a_queued_job_drops_it(make_broker: Maker) -> None:
    broker = make_broker()
    session = await broker.register_session(RUNTIME, 1)
    ticket = await broker.submit(RUNTIME, envelope(0))
    ticket.cancel("client_disconnected")
    await broker.flush()
    await broker.submit(RUNTIME, envelope(1))
    result = await broker.poll(RUNTIME, session, 4)
    assert [j.job_id for j in result.jobs] == ["job_1"]
    assert result.cancels == []  # nothing to tell: the daemon never had it
    failure = await ticket.next_event(0.1)
    assert isinstance(failure, LatticeError) and failure.code is ErrorCode.CANCELLED
    await broker.close()


async def test_cancel_reaches_the_session_in_the_events_answer(make_broker: Maker) -> None:
    broker = make_broker()
    session = await broker.register_session(RUNTIME, 2)
    first = await broker.submit(RUNTIME, envelope(0))
    await broker.submit(RUNTIME, envelope(1))
    await broker.poll(RUNTIME, session, 2)
    first.cancel("timeout")
    await broker.flush()
    answer = await broker.post_events(RUNTIME, session, [SealedEvent("job_1", 0, "v1.z")])
    assert [(c.job_id, c.reason) for c in answer.cancels] == [("job_0", "timeout")]
    await broker.close()


async def test_deregister_turns_the_runtime_offline_at_once(make_broker: Maker) -> None:
    broker = make_broker(presence_window_seconds=30)
    session = await broker.register_session(RUNTIME, 1)
    assert (await broker.reachable([RUNTIME]))[RUNTIME]
    await broker.deregister_session(RUNTIME, session)
    assert not (await broker.reachable([RUNTIME]))[RUNTIME]
    assert (await broker.last_seen([RUNTIME]))[RUNTIME] is not None
    await broker.close()


async def test_session_limit_ends_the_oldest_idle_session(make_broker: Maker) -> None:
    broker = make_broker(presence_window_seconds=30)
    busy = await broker.register_session(RUNTIME, 1)
    await broker.submit(RUNTIME, envelope())
    assert (await broker.poll(RUNTIME, busy, 1)).jobs  # holds a lease: never evicted
    sessions = [await broker.register_session(RUNTIME, 1)
                for _ in range(MAX_SESSIONS_PER_RUNTIME - 1)]
    newest = await broker.register_session(RUNTIME, 1)  # one over the limit
    with pytest.raises(SessionNotFound):
        await broker.poll(RUNTIME, sessions[0], 0)  # the oldest idle one was ended
    for live in (busy, newest, sessions[1]):
        assert (await broker.post_events(RUNTIME, live, [])).refused == []


async def test_release_polls_answers_held_polls_at_once_for_shutdown(
        make_broker: Maker, clock: ManualClock) -> None:
    broker = make_broker(poll_window_seconds=30, clock=clock)
    session = await broker.register_session(RUNTIME, 1)
    held = asyncio.create_task(broker.poll(RUNTIME, session, 1))
    await parked(broker)
    await broker.release_polls()
    # Time stands still: only release_polls can have answered them.
    assert (await asyncio.wait_for(held, HANG_GUARD)).jobs == []
    next_poll = broker.poll(RUNTIME, session, 1)  # not held any more
    assert (await asyncio.wait_for(next_poll, HANG_GUARD)).jobs == []


async def old_pairing_busy_and_polling(broker: Any, held_capacity: int
                                       ) -> tuple[str, Any, asyncio.Task[Any]]:
    """A session of daemon key "old-key" with a leased job and a poll parked after it."""
    old = await broker.register_session(RUNTIME, 1, daemon_key="old-key")
    ticket = await broker.submit(RUNTIME, envelope())
    assert (await broker.poll(RUNTIME, old, 1)).jobs
    held = asyncio.create_task(broker.poll(RUNTIME, old, held_capacity))
    await parked(broker)
    return old, ticket, held


async def test_registering_under_a_new_pairing_ends_the_old_pairings_sessions(
        make_broker: Maker, clock: ManualClock) -> None:
    broker = make_broker(poll_window_seconds=30, presence_window_seconds=30, clock=clock)
    old, ticket, held = await old_pairing_busy_and_polling(broker, held_capacity=0)
    new = await broker.register_session(RUNTIME, 1, daemon_key="new-key")
    # Time stands still: the old poll ends because of the new pairing, not its window.
    assert (await asyncio.wait_for(held, HANG_GUARD)).jobs == []
    failure = await ticket.next_event(HANG_GUARD)
    assert isinstance(failure, LatticeError) and failure.code is ErrorCode.RUNTIME_UNREACHABLE
    with pytest.raises(SessionNotFound):
        await broker.poll(RUNTIME, old, 1)
    await broker.submit(RUNTIME, envelope(1))
    assert [j.job_id for j in (await broker.poll(RUNTIME, new, 1)).jobs] == ["job_1"]


async def test_a_new_pairing_ends_the_old_pairings_sessions_before_its_daemon_registers(
        make_broker: Maker, clock: ManualClock) -> None:
    # Redeem: the old daemon's token is dead and it cannot open jobs sealed to the new
    # key, so its sessions must not stay reachable or take jobs until the new one comes.
    broker = make_broker(poll_window_seconds=30, presence_window_seconds=30, clock=clock)
    old, ticket, held = await old_pairing_busy_and_polling(broker, held_capacity=1)
    await broker.end_other_pairings(RUNTIME, "new-key")
    assert (await asyncio.wait_for(held, HANG_GUARD)).jobs == []  # time stood still
    failure = await ticket.next_event(HANG_GUARD)
    assert isinstance(failure, LatticeError) and failure.code is ErrorCode.RUNTIME_UNREACHABLE
    assert not (await broker.reachable([RUNTIME]))[RUNTIME]
    with pytest.raises(SessionNotFound):
        await broker.poll(RUNTIME, old, 1)
    # Sessions of the current pairing are kept.
    new = await broker.register_session(RUNTIME, 1, daemon_key="new-key")
    await broker.end_other_pairings(RUNTIME, "new-key")
    assert (await broker.reachable([RUNTIME]))[RUNTIME]
    await broker.submit(RUNTIME, envelope(1))
    assert [j.job_id for j in (await broker.poll(RUNTIME, new, 1)).jobs] == ["job_1"]


async def test_a_full_queue_refuses_new_jobs_until_places_free_up(make_broker: Maker) -> None:
    broker = make_broker(max_queued_jobs=2)
    first = await broker.submit(RUNTIME, envelope(0))
    await broker.submit(RUNTIME, envelope(1))
    with pytest.raises(LatticeError) as full:
        await broker.submit(RUNTIME, envelope(2))
    assert full.value.code is ErrorCode.RATE_LIMITED
    assert full.value.retry_after == 1.0

    first.cancel()  # a cancelled job gives its place back

    async def accepted() -> bool:
        try:
            await broker.submit(RUNTIME, envelope(3))
        except LatticeError:
            return False
        return True

    await async_wait_until(accepted, timeout=2, what="a place in the queue")
    # Leased jobs are not waiting any more: a poll makes room.
    session = await broker.register_session(RUNTIME, 4)
    assert {j.job_id for j in (await broker.poll(RUNTIME, session, 4)).jobs} == {
        "job_1", "job_3"}
    await broker.submit(RUNTIME, envelope(4))


@pytest.mark.redis
async def test_redis_broker_close_ends_even_when_a_loop_loses_its_cancellation() -> None:
    # redis-py may turn a cancellation that lands mid-command into a ConnectionError,
    # which the sweeper survives by design; close() once waited for it forever (CI hung).
    broker = RedisBroker(REDIS_URL, key_prefix=f"lattice-test:{secrets.token_hex(6)}:",
                         poll_window_seconds=0.3, presence_window_seconds=0.3)
    sweeping = asyncio.Event()

    async def sweep_that_swallows_cancel(now: float, refresh: bool) -> None:
        sweeping.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise ConnectionError("connection lost while cancelling") from None

    broker._sweep = sweep_that_swallows_cancel  # type: ignore[method-assign]
    await broker.reachable([RUNTIME])  # starts the loops; writes nothing to Redis
    await asyncio.wait_for(sweeping.wait(), 2)
    started = time.monotonic()
    await asyncio.wait_for(broker.close(), 5)
    assert time.monotonic() - started < 1.0
    assert not broker._tasks or all(task.done() for task in broker._tasks)


# --------------------------------------------- Redis: a replica cut off from Redis


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    import redis.asyncio as aioredis

    prefix = f"lattice-test:{secrets.token_hex(6)}:"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def redis_cut() -> Iterator[FaultProxy]:
    """A path to the test Redis that the test can cut and heal."""
    with run_fault_proxy(6379) as proxy:
        yield proxy


def chunk(n: int) -> SealedEvent:
    return SealedEvent("job_0", n, f"v1.chunk{n}")


@pytest.mark.redis
async def test_redis_events_posted_while_the_waiting_replica_is_cut_off_all_arrive_once(
        redis_prefix: str, redis_cut: FaultProxy) -> None:
    # The app's request waits on replica A (its Redis connections go through a proxy the
    # test cuts); the daemon polls and posts to replica B. Everything B accepts while A
    # is cut off reaches A once its connection is back: every chunk and the final event,
    # in order, none twice. (Pub/sub lost them, and the app waited for its idle timeout.)
    options: dict[str, Any] = {"key_prefix": redis_prefix, "poll_window_seconds": 0.3,
                               "presence_window_seconds": 30}
    a = RedisBroker(redis_cut.redis_url, **options)
    b = RedisBroker(REDIS_URL, **options)
    try:
        ticket = await a.submit(RUNTIME, envelope())
        session = await b.register_session(RUNTIME, 1)
        assert [j.job_id for j in (await b.poll(RUNTIME, session, 1)).jobs] == ["job_0"]
        await b.post_events(RUNTIME, session, [chunk(0)])
        first = await ticket.next_event(HANG_GUARD)
        assert isinstance(first, SealedEvent) and first.sealed == "v1.chunk0"

        redis_cut.cut()  # mid-stream: A's blocking read of its events is dropped
        for n in range(1, 6):
            assert (await b.post_events(RUNTIME, session, [chunk(n)])).refused == []
        assert (await b.post_events(RUNTIME, session, [chunk(6), chunk(7)])).refused == []
        assert await ticket.next_event(0) is None  # A cannot have them yet
        reconnects = redis_cut.forwarded
        redis_cut.heal()

        got = []
        for _ in range(7):
            event = await ticket.next_event(HANG_GUARD)
            assert isinstance(event, SealedEvent), event
            got.append(event.sealed)
        assert got == [f"v1.chunk{n}" for n in range(1, 8)]
        assert redis_cut.forwarded > reconnects  # A really reconnected through the proxy
        ticket.finish()
        await a.flush()  # the release reached Redis, though A's pooled connection was cut
        assert not await b._redis.exists(redis_prefix + "job:job_0")

        # Nothing twice: A has read its stream to the last entry and handed nothing more.
        last = (await b._redis.xrevrange(redis_prefix + "evs:" + a._replica, count=1))[0][0]

        async def read_to_the_end() -> bool:
            return a._events_seen == last.decode()

        await async_wait_until(read_to_the_end, timeout=HANG_GUARD, what="A to read all")
        assert await ticket.next_event(0) is None
    finally:
        await a.close()
        await b.close()


@pytest.mark.redis
async def test_redis_failure_while_the_waiting_replica_is_cut_off_reaches_the_app(
        redis_prefix: str, redis_cut: FaultProxy) -> None:
    # A failure (here: the daemon deregisters with the job leased) is a final event too.
    options: dict[str, Any] = {"key_prefix": redis_prefix, "presence_window_seconds": 30}
    a = RedisBroker(redis_cut.redis_url, **options)
    b = RedisBroker(REDIS_URL, **options)
    try:
        ticket = await a.submit(RUNTIME, envelope())
        session = await b.register_session(RUNTIME, 1)
        assert (await b.poll(RUNTIME, session, 1)).jobs
        redis_cut.cut()
        await b.deregister_session(RUNTIME, session)
        redis_cut.heal()
        failure = await ticket.next_event(HANG_GUARD)
        assert isinstance(failure, LatticeError)
        assert failure.code is ErrorCode.RUNTIME_UNREACHABLE
    finally:
        await a.close()
        await b.close()


@pytest.mark.redis
async def test_redis_poll_parked_on_a_cut_off_replica_gets_a_job_queued_meanwhile(
        redis_prefix: str, redis_cut: FaultProxy, clock: ManualClock) -> None:
    # The job's wake is published while A is not subscribed: A's parked poll must look
    # again once it is back, not sit out its window (time stands still here).
    options: dict[str, Any] = {"key_prefix": redis_prefix, "poll_window_seconds": 30,
                               "presence_window_seconds": 30, "clock": clock}
    a = RedisBroker(redis_cut.redis_url, **options)
    b = RedisBroker(REDIS_URL, **options)
    try:
        session = await a.register_session(RUNTIME, 1)
        held = asyncio.create_task(a.poll(RUNTIME, session, 1))
        await parked(a)
        redis_cut.cut()
        await b.submit(RUNTIME, envelope())
        redis_cut.heal()
        result = await asyncio.wait_for(held, HANG_GUARD)
        assert [j.job_id for j in result.jobs] == ["job_0"]
    finally:
        await a.close()
        await b.close()


@pytest.mark.redis
async def test_redis_job_whose_events_were_trimmed_unread_fails_at_once(
        redis_prefix: str, redis_cut: FaultProxy) -> None:
    # The stream is capped: if a replica cut off for very long loses entries to the cap,
    # the job fails with runtime_unreachable (and its daemon is told to stop) rather
    # than the app missing chunks or waiting for its idle timeout.
    options: dict[str, Any] = {"key_prefix": redis_prefix, "presence_window_seconds": 30}
    a = RedisBroker(redis_cut.redis_url, **options)
    b = RedisBroker(REDIS_URL, **options)
    try:
        ticket = await a.submit(RUNTIME, envelope())
        session = await b.register_session(RUNTIME, 1)
        assert (await b.poll(RUNTIME, session, 1)).jobs
        redis_cut.cut()
        await b.post_events(RUNTIME, session, [chunk(0), chunk(1), chunk(2)])
        stream = redis_prefix + "evs:" + a._replica
        oldest = (await b._redis.xrange(stream, count=1))[0][0]
        await b._redis.xdel(stream, oldest)  # what the cap would trim first
        redis_cut.heal()
        failure = await ticket.next_event(HANG_GUARD)
        assert isinstance(failure, LatticeError)
        assert failure.code is ErrorCode.RUNTIME_UNREACHABLE
        await a.flush()
        answer = await b.post_events(RUNTIME, session, [])
        assert [(c.job_id, c.reason) for c in answer.cancels] == [("job_0", "events_lost")]
    finally:
        await a.close()
        await b.close()


@pytest.mark.redis
async def test_redis_client_kill_of_the_event_reader_mid_stream_loses_nothing(
        redis_prefix: str) -> None:
    # An operator (or Redis) closing the event reader's connection, found by the client
    # name docs/gateway.md gives: the replica reads on from the last entry it handled.
    options: dict[str, Any] = {"key_prefix": redis_prefix, "presence_window_seconds": 30}
    a = RedisBroker(REDIS_URL, **options)
    b = RedisBroker(REDIS_URL, **options)
    try:
        ticket = await a.submit(RUNTIME, envelope())
        session = await b.register_session(RUNTIME, 1)
        assert (await b.poll(RUNTIME, session, 1)).jobs
        received: list[str] = []
        for n in range(6):
            await b.post_events(RUNTIME, session, [chunk(n)])
            if n in (1, 3):
                name = "lattice-relay-events-" + a._replica
                readers = [c for c in await b._redis.client_list() if c["name"] == name]
                assert len(readers) == 1
                assert await b._redis.client_kill_filter(_id=readers[0]["id"]) == 1
            event = await ticket.next_event(HANG_GUARD)
            assert isinstance(event, SealedEvent), event
            received.append(event.sealed)
        assert received == [f"v1.chunk{n}" for n in range(6)]
        assert await ticket.next_event(0) is None
    finally:
        await a.close()
        await b.close()
async def test_two_daemon_instances_on_one_runtime_are_a_conflict_for_both(
        make_broker: Maker, clock: ManualClock) -> None:
    broker = make_broker(poll_window_seconds=30, presence_window_seconds=5, clock=clock)
    first = await broker.register_session(RUNTIME, 1, instance_id="di_first")
    again = await broker.register_session(RUNTIME, 1, instance_id="di_first")  # a restart
    assert not await broker.instance_conflict(RUNTIME, first)
    assert not await broker.instance_conflict(RUNTIME, again)
    await broker.deregister_session(RUNTIME, again)
    copy = await broker.register_session(RUNTIME, 1, instance_id="di_copy")  # 2nd machine
    assert await broker.instance_conflict(RUNTIME, copy)
    assert await broker.instance_conflict(RUNTIME, first)
    await broker.submit(RUNTIME, envelope())
    answer = await asyncio.wait_for(broker.poll(RUNTIME, first, 1), HANG_GUARD)
    assert answer.to_dict()["instanceConflict"] is True  # the first machine learns it too
    await broker.deregister_session(RUNTIME, copy)
    await broker.submit(RUNTIME, envelope(1))
    answer = await asyncio.wait_for(broker.poll(RUNTIME, first, 1), HANG_GUARD)
    assert "instanceConflict" not in answer.to_dict()
    await broker.close()


async def test_a_daemon_without_an_instance_id_never_conflicts(make_broker: Maker) -> None:
    broker = make_broker(presence_window_seconds=30)
    old = await broker.register_session(RUNTIME, 1)  # an older daemon sends none
    new = await broker.register_session(RUNTIME, 1, instance_id="di_new")
    assert not await broker.instance_conflict(RUNTIME, old)
    assert not await broker.instance_conflict(RUNTIME, new)
    await broker.close()
async def test_stats_count_sessions_parked_polls_and_queued_jobs(make_broker: Maker,
                                                                  clock: ManualClock) -> None:
    broker = make_broker(poll_window_seconds=30, clock=clock)
    session = await broker.register_session(RUNTIME, 1)
    ticket = await broker.submit(RUNTIME, envelope())
    assert (await broker.stats()).queued_jobs == 1
    result = await asyncio.wait_for(broker.poll(RUNTIME, session, 1), HANG_GUARD)
    assert [j.job_id for j in result.jobs] == ["job_0"]
    # Taken: no longer queued (Redis: once its first event arrives).
    await broker.post_events(RUNTIME, session, [SealedEvent("job_0", 0, "v1.x")])
    await async_wait_until(lambda: _queued(broker, 0), timeout=HANG_GUARD, what="dequeued")
    ticket.finish()
    poll = asyncio.create_task(broker.poll(RUNTIME, session, 1))
    await parked(broker)
    stats = await broker.stats()
    assert (stats.sessions, stats.parked_polls, stats.queued_jobs) == (1, 1, 0)
    await broker.close()  # answers the parked poll
    await asyncio.wait_for(poll, HANG_GUARD)


async def _queued(broker: Any, count: int) -> bool:
    return bool((await broker.stats()).queued_jobs == count)
