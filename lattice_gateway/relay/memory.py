"""The in-process broker: per-runtime queues, leases and presence in this process's memory.

Everything runs on the event loop, so each operation below is atomic without locks.

Cheap idle polls: a parked poll is one future and one slot in a FIFO of deadlines; there
is no timer per poll. Every poll waits the same window, so deadlines are appended in
order and one shared sweeper task (a coarse timing wheel) expires them from the front,
together with pickup deadlines (same constant) and presence deadlines (same constant).
The only per-poll extra is the disconnect watcher on the request's ``receive``, which
is how a crashed daemon's dropped connection is noticed while its poll is parked.
All timing goes through the injected ``Clock`` (``base.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from lattice_protocol import CancelNotice, ErrorCode, JobEnvelope, LatticeError, SealedEvent

from .base import (
    DAEMON_SILENT,
    DAEMON_STOPPED,
    MAX_SESSIONS_PER_RUNTIME,
    PAIRED_ELSEWHERE,
    SYSTEM_CLOCK,
    BrokerStats,
    Clock,
    EventInbox,
    EventsResult,
    ParkedPoll,
    Pause,
    PollResult,
    Receive,
    SessionNotFound,
    answer_expired,
    lost_with_its_session,
    not_leased,
    pause_ttl,
    pickup_timed_out,
    queue_full,
    revoked,
    sweep_tick,
    too_many_sessions,
)


class _State(enum.Enum):
    QUEUED = 1
    LEASED = 2
    DONE = 3


class MemoryTicket(EventInbox):
    """One submitted job, as the chat route holding the app's request sees it."""

    __slots__ = (
        "_broker",
        "enqueued_at",
        "envelope",
        "job_id",
        "lattice_id",
        "picked_up_at",
        "session",
        "state",
    )

    def __init__(self, broker: MemoryBroker, lattice_id: str, envelope: JobEnvelope,
                 enqueued_at: float) -> None:
        super().__init__()
        self._broker = broker
        self.job_id = envelope.job_id
        self.lattice_id = lattice_id
        self.envelope: JobEnvelope | None = envelope  # until leased
        self.enqueued_at = enqueued_at
        self.state = _State.QUEUED
        self.session: _Session | None = None
        self.picked_up_at: float | None = None

    def finish(self) -> None:
        self._broker._finish(self)

    def cancel(self, reason: str = "cancelled") -> None:
        self._broker._cancel(self, reason)


@dataclass(eq=False)
class _Parked(ParkedPoll):
    session: _Session


@dataclass(eq=False)
class _Session:
    session_id: str
    lattice_id: str
    max_concurrency: int
    last_active: float  # monotonic
    leased: dict[str, MemoryTicket] = field(default_factory=dict)
    cancels: list[CancelNotice] = field(default_factory=list)
    parked: _Parked | None = None
    activity: int = 0  # bumped on every request; a presence deadline is for one value
    alive: bool = True
    daemon_key: str | None = None  # the pairing it was registered under
    instance_id: str | None = None  # the daemon's machine (a copied pairing shows up)


@dataclass(eq=False)
class _Runtime:
    queue: deque[MemoryTicket] = field(default_factory=deque)
    waiting: deque[_Parked] = field(default_factory=deque)  # parked polls wanting jobs
    sessions: dict[str, _Session] = field(default_factory=dict)
    last_seen_wall: float | None = None
    flush_scheduled: bool = False
    pause: Pause | None = None  # as its daemon last said
    pause_expires: float = 0.0  # monotonic; a daemon that is still paused says so again


class MemoryBroker:
    """The embedded broker (one gateway process)."""

    def __init__(self, *, poll_window_seconds: float = 25.0,
                 presence_window_seconds: float = 15.0,
                 pickup_timeout_seconds: float = 30.0, max_queued_jobs: int = 512,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.poll_window_seconds = poll_window_seconds
        self.max_queued_jobs = max_queued_jobs
        self.presence_window_seconds = presence_window_seconds
        self.pickup_timeout_seconds = pickup_timeout_seconds
        self._clock = clock
        self._runtimes: dict[str, _Runtime] = {}
        self._revoked: set[str] = set()
        self._poll_deadlines: deque[ParkedPoll] = deque()
        self._pickup_deadlines: deque[MemoryTicket] = deque()
        self._presence_deadlines: deque[tuple[float, _Session, int]] = deque()
        self._tick = sweep_tick(poll_window_seconds, presence_window_seconds,
                                pickup_timeout_seconds)
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        self._draining = False

    # ------------------------------------------------------------------------ presence

    async def reachable(self, lattice_ids: list[str]) -> dict[str, bool]:
        now = self._clock.monotonic()
        return {lid: self._is_reachable(lid, now) for lid in lattice_ids}

    def _is_reachable(self, lattice_id: str, now: float) -> bool:
        rt = self._runtimes.get(lattice_id)
        if rt is None:
            return False
        window = self.presence_window_seconds
        return any(s.parked is not None or now - s.last_active < window
                   for s in rt.sessions.values())

    async def flush(self) -> None:
        """Nothing is written behind in-process (the Redis broker's writes are)."""

    def parked_polls(self, lattice_id: str) -> int:
        """How many of the runtime's sessions hold a poll right now (tests, metrics)."""
        rt = self._runtimes.get(lattice_id)
        return sum(1 for s in rt.sessions.values() if s.parked is not None) if rt else 0

    async def stats(self) -> BrokerStats:
        runtimes = self._runtimes.values()
        return BrokerStats(
            sessions=sum(len(rt.sessions) for rt in runtimes),
            parked_polls=sum(s.parked is not None for rt in runtimes
                             for s in rt.sessions.values()),
            queued_jobs=sum(t.state is _State.QUEUED for rt in runtimes for t in rt.queue))

    async def last_seen(self, lattice_ids: list[str]) -> dict[str, float | None]:
        result: dict[str, float | None] = {}
        for lid in lattice_ids:
            rt = self._runtimes.get(lid)
            result[lid] = rt.last_seen_wall if rt else None
        return result

    # --------------------------------------------------------------------------- pauses

    async def pauses(self, lattice_ids: list[str]) -> dict[str, Pause | None]:
        now, wall = self._clock.monotonic(), self._clock.time()
        result: dict[str, Pause | None] = {}
        for lid in lattice_ids:
            rt = self._runtimes.get(lid)
            pause = rt.pause if rt is not None and rt.pause_expires > now else None
            result[lid] = None if pause is None or pause.over(wall) else pause
        return result

    async def set_pause(self, lattice_id: str, session_id: str, pause: Pause | None) -> None:
        self._session(lattice_id, session_id)
        rt = self._runtimes[lattice_id]
        rt.pause = pause
        rt.pause_expires = self._clock.monotonic() + pause_ttl(self.poll_window_seconds,
                                                               self.presence_window_seconds)

    async def revoke_runtime(self, lattice_id: str) -> None:
        self._revoked.add(lattice_id)
        rt = self._runtimes.pop(lattice_id, None)
        if rt is None:
            return
        failure = revoked()
        for ticket in rt.queue:
            if ticket.state is _State.QUEUED:
                ticket.state = _State.DONE
                ticket.push(failure)
        rt.queue.clear()
        for session in list(rt.sessions.values()):
            self._end_session(session, failure)

    async def release_polls(self) -> None:
        """Graceful shutdown: answer every held poll now (empty) and hold no new ones, so
        the server does not wait a poll window for them."""
        self._draining = True
        for rt in self._runtimes.values():
            for session in rt.sessions.values():
                if session.parked is not None:
                    session.parked.answer()

    async def ping(self) -> None:
        """In this process: nothing to reach."""

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for rt in self._runtimes.values():
            for session in rt.sessions.values():
                if session.parked is not None:
                    session.parked.answer()

    # ------------------------------------------------------------------------ sessions

    async def register_session(self, lattice_id: str, max_concurrency: int,
                               daemon_key: str | None = None,
                               instance_id: str | None = None) -> str:
        self._ensure_sweeper()
        if lattice_id in self._revoked:
            raise revoked()
        rt = self._runtimes.setdefault(lattice_id, _Runtime())
        self._end_other_pairings(rt, daemon_key)
        if len(rt.sessions) >= MAX_SESSIONS_PER_RUNTIME:
            # The oldest-registered idle session goes: a daemon that restarts in a loop
            # without deregistering must not pile sessions up.
            for old in list(rt.sessions.values()):
                if old.parked is None and not old.leased:
                    self._end_session(old, None)
                    break
            else:
                raise too_many_sessions()
        session_id = "rs_" + secrets.token_hex(12)
        session = _Session(session_id, lattice_id, max_concurrency, self._clock.monotonic(),
                           daemon_key=daemon_key, instance_id=instance_id)
        rt.sessions[session_id] = session
        self._touch(session)
        return session_id

    async def instance_conflict(self, lattice_id: str, session_id: str) -> bool:
        return self._instance_conflict(self._session(lattice_id, session_id))

    def _instance_conflict(self, session: _Session) -> bool:
        rt = self._runtimes.get(session.lattice_id)
        if session.instance_id is None or rt is None:
            return False
        cutoff = self._clock.monotonic() - self.presence_window_seconds
        return any(other.alive and other.instance_id is not None
                   and other.instance_id != session.instance_id
                   and (other.parked is not None or other.last_active > cutoff)
                   for other in rt.sessions.values())

    async def end_other_pairings(self, lattice_id: str, daemon_key: str) -> None:
        rt = self._runtimes.get(lattice_id)
        if rt is not None:
            self._end_other_pairings(rt, daemon_key)

    def _end_other_pairings(self, rt: _Runtime, daemon_key: str | None) -> None:
        for old in list(rt.sessions.values()):
            if old.daemon_key != daemon_key:
                self._end_session(old, lost_with_its_session(PAIRED_ELSEWHERE))

    async def deregister_session(self, lattice_id: str, session_id: str) -> None:
        session = self._session(lattice_id, session_id)
        self._end_session(session, lost_with_its_session(DAEMON_STOPPED))

    def _session(self, lattice_id: str, session_id: str) -> _Session:
        rt = self._runtimes.get(lattice_id)
        session = rt.sessions.get(session_id) if rt else None
        if session is None or not session.alive:
            raise SessionNotFound()
        return session

    def _touch(self, session: _Session) -> None:
        now = self._clock.monotonic()
        session.last_active = now
        session.activity += 1
        rt = self._runtimes.get(session.lattice_id)
        if rt is not None:
            rt.last_seen_wall = self._clock.time()
        self._presence_deadlines.append(
            (now + self.presence_window_seconds, session, session.activity))

    def _end_session(self, session: _Session, failure: LatticeError | None) -> None:
        session.alive = False
        rt = self._runtimes.get(session.lattice_id)
        if rt is not None:
            rt.sessions.pop(session.session_id, None)
        for ticket in session.leased.values():
            ticket.state = _State.DONE
            if failure is not None:
                ticket.push(failure)
        session.leased.clear()
        if session.parked is not None:
            session.parked.answer()

    # --------------------------------------------------------------------------- polls

    async def poll(self, lattice_id: str, session_id: str, capacity: int,
                   receive: Receive | None = None) -> PollResult:
        session = self._session(lattice_id, session_id)
        self._touch(session)
        previous = session.parked
        if previous is not None:
            previous.answer()  # superseded by this poll
        result = self._collect(session, capacity)
        if result.jobs or result.cancels or self._draining:
            result.instance_conflict = self._instance_conflict(session)
            return result
        parked = _Parked(capacity=capacity, session=session,
                         deadline=self._clock.monotonic() + self.poll_window_seconds)
        session.parked = parked
        rt = self._runtimes[lattice_id]
        if capacity > 0:
            rt.waiting.append(parked)
        self._poll_deadlines.append(parked)
        try:
            answer = await parked.held(receive)
            answer.instance_conflict = self._instance_conflict(session)
            return answer
        finally:
            if session.parked is parked:
                session.parked = None
            if session.alive:
                self._touch(session)  # the presence window runs from the poll's end

    def _collect(self, session: _Session, capacity: int) -> PollResult:
        result = PollResult()
        if session.cancels:
            result.cancels, session.cancels = session.cancels, []
        if capacity > 0:
            queue = self._runtimes[session.lattice_id].queue
            while queue and len(result.jobs) < capacity:
                ticket = queue.popleft()
                if ticket.state is _State.QUEUED:
                    assert ticket.envelope is not None
                    result.jobs.append(ticket.envelope)
                    self._lease(ticket, session)
        return result

    def _lease(self, ticket: MemoryTicket, session: _Session) -> None:
        # (the caller takes ticket.envelope first; the ticket stops holding it after)
        ticket.state = _State.LEASED
        ticket.envelope = None
        ticket.session = session
        ticket.picked_up_at = time.monotonic()  # the real clock: Server-Timing's pickup
        session.leased[ticket.job_id] = ticket

    def _flush(self, rt: _Runtime) -> None:
        """Hand queued jobs to parked polls (scheduled once per loop turn on enqueue, so
        jobs enqueued together go out in one poll answer)."""
        rt.flush_scheduled = False
        while rt.queue and rt.waiting:
            parked = rt.waiting.popleft()
            session = parked.session
            if not parked.open or session.parked is not parked or not session.alive:
                continue
            result = self._collect(session, parked.capacity)
            if result.jobs or result.cancels:
                parked.answer(result)
            else:
                rt.waiting.appendleft(parked)
                break

    # -------------------------------------------------------------------------- events

    async def post_events(self, lattice_id: str, session_id: str,
                          events: list[SealedEvent]) -> EventsResult:
        session = self._session(lattice_id, session_id)
        self._touch(session)
        result = EventsResult()
        refused: set[str] = set()
        for event in events:
            ticket = session.leased.get(event.job_id)
            if ticket is None:
                if event.job_id not in refused:
                    refused.add(event.job_id)
                    result.refused.append(not_leased(event.job_id))
                continue
            ticket.push(event)
        if session.cancels:
            result.cancels, session.cancels = session.cancels, []
        return result

    # ---------------------------------------------------------------------------- jobs

    async def submit(self, lattice_id: str, envelope: JobEnvelope) -> MemoryTicket:
        self._ensure_sweeper()
        ticket = MemoryTicket(self, lattice_id, envelope, self._clock.monotonic())
        if lattice_id in self._revoked:
            ticket.state = _State.DONE
            ticket.push(revoked())
            return ticket
        rt = self._runtimes.setdefault(lattice_id, _Runtime())
        # Cancelled tickets leave the queue lazily: count only live ones, and only when
        # the cheap length says the bound might be reached.
        if len(rt.queue) >= self.max_queued_jobs and sum(
                t.state is _State.QUEUED for t in rt.queue) >= self.max_queued_jobs:
            raise queue_full(self.max_queued_jobs)
        rt.queue.append(ticket)
        self._pickup_deadlines.append(ticket)
        if rt.waiting and not rt.flush_scheduled:
            rt.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, rt)
        return ticket

    def _finish(self, ticket: MemoryTicket) -> None:
        if ticket.state is _State.LEASED and ticket.session is not None:
            ticket.session.leased.pop(ticket.job_id, None)
        ticket.state = _State.DONE

    def _cancel(self, ticket: MemoryTicket, reason: str) -> None:
        state = ticket.state
        if state is _State.DONE:
            return
        ticket.state = _State.DONE  # a queued job is dropped lazily from the queue
        ticket.envelope = None
        ticket.push(LatticeError(ErrorCode.CANCELLED, f"job cancelled ({reason})"))
        session = ticket.session
        if state is not _State.LEASED or session is None:
            return
        session.leased.pop(ticket.job_id, None)
        if not session.alive:
            return
        session.cancels.append(CancelNotice(ticket.job_id, reason))
        parked = session.parked
        if parked is not None and parked.open:
            result = PollResult(cancels=session.cancels)
            session.cancels = []
            parked.answer(result)

    # ------------------------------------------------------------------------- sweeper

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None and not self._closed:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await self._clock.sleep(self._tick)
            self.sweep(self._clock.monotonic())

    def sweep(self, now: float) -> None:
        """Expire parked polls, unpicked jobs and silent sessions whose time is up."""
        answer_expired(self._poll_deadlines, now)
        pickups = self._pickup_deadlines
        limit = now - self.pickup_timeout_seconds
        while pickups and pickups[0].enqueued_at <= limit:
            ticket = pickups.popleft()
            if ticket.state is _State.QUEUED:
                ticket.state = _State.DONE
                ticket.envelope = None
                ticket.push(pickup_timed_out(self.pickup_timeout_seconds))
                rt = self._runtimes.get(ticket.lattice_id)
                while rt is not None and rt.queue and rt.queue[0].state is _State.DONE:
                    rt.queue.popleft()
        presence = self._presence_deadlines
        while presence and presence[0][0] <= now:
            _, session, activity = presence.popleft()
            if session.alive and session.activity == activity and session.parked is None:
                self._end_session(session, lost_with_its_session(DAEMON_SILENT))
