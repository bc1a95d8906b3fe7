"""What the gateway needs from a relay broker, and the parts both brokers share.

``RelayBroker`` is everything the routes call (they reach it as ``services.broker``);
``memory.MemoryBroker`` implements it in this process, ``redis.RedisBroker`` on Redis
for several replicas. The broker only ever sees relay-visible envelopes
(``JobEnvelope``, ``SealedEvent``, ``CancelNotice``): it routes sealed bytes by job id
and never opens them. Whoever holds the app's request (the chat route, through a
``JobTicket``) opens events and tells the broker when a job is finished, which releases
the lease.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from lattice_protocol import (
    CancelNotice,
    ErrorCode,
    JobEnvelope,
    LatticeError,
    SealedEvent,
    iso_from_seconds,
)

MAX_SESSIONS_PER_RUNTIME = 32  # a daemon token cannot grow the broker without bound
SESSION_LIMIT_RETRY_AFTER = 5.0  # seconds: a restarting daemon's old session lapses
QUEUE_FULL_RETRY_AFTER = 1.0

# Why a broker fails a job or ends a session (the app sees these messages).
REVOKED = "the personal runtime was revoked"
PAIRED_ELSEWHERE = "the personal runtime was paired with another daemon"
DAEMON_STOPPED = "the personal runtime's daemon stopped"
DAEMON_SILENT = "the personal runtime's daemon stopped answering"


class MayHaveRun(LatticeError):
    """A job that reached a daemon and ended without its answer: it may have run, so the
    answer says ``x-should-retry: false``. An SDK's automatic retry could bring the same
    prompt to the provider twice; the app decides."""

    headers = {"x-should-retry": "false"}


def lost_with_its_session(message: str) -> MayHaveRun:
    """A leased job whose relay session ended (the daemon stopped, fell silent, or the
    runtime was paired elsewhere)."""
    return MayHaveRun(ErrorCode.RUNTIME_UNREACHABLE, message)


def revoked() -> LatticeError:
    return LatticeError(ErrorCode.RUNTIME_REVOKED, REVOKED)


def pickup_timed_out(seconds: float) -> LatticeError:
    return LatticeError(ErrorCode.RUNTIME_TIMEOUT,
                        f"the personal runtime did not pick the job up within {seconds:g} s")


def too_many_sessions() -> LatticeError:
    return LatticeError(ErrorCode.RATE_LIMITED, "too many relay sessions for this runtime",
                        retry_after=SESSION_LIMIT_RETRY_AFTER)


def queue_full(limit: int) -> LatticeError:
    return LatticeError(ErrorCode.RATE_LIMITED,
                        f"too many requests are waiting for this personal runtime ({limit} "
                        "queued); retry shortly", retry_after=QUEUE_FULL_RETRY_AFTER)


# ------------------------------------------------------------------------ pauses

PAUSE_REASONS = ("owner", "schedule", "battery")


@dataclass(frozen=True)
class Pause:
    """The runtime's owner paused it (``owner``), or its daemon's rules did: outside its
    serving hours (``schedule``), on battery power (``battery``). ``until`` is unix
    seconds when the pause ends by itself, if known. The daemon says so; the broker keeps
    it with presence (a pause outlives its daemon's silence by a poll window at most)."""

    reason: str
    until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason,
                "until": None if self.until is None else iso_from_seconds(self.until)}

    def to_store(self) -> dict[str, Any]:
        return {"reason": self.reason, "until": self.until}

    @classmethod
    def from_store(cls, value: Any) -> Pause | None:
        if not isinstance(value, dict) or value.get("reason") not in PAUSE_REASONS:
            return None
        until = value.get("until")
        return cls(value["reason"], float(until) if isinstance(until, int | float) else None)

    def over(self, now: float) -> bool:
        """A pause with an end is over at that end even if its daemon never says so."""
        return self.until is not None and self.until <= now


def pause_ttl(poll_window: float, presence_window: float) -> float:
    """How long a broker keeps a pause its daemon stopped repeating (each poll of a
    paused daemon says it again)."""
    return poll_window + presence_window


def paused_error(lattice_id: str, pause: Pause) -> LatticeError:
    """What the app gets for a job sent to a paused runtime: at once, never a timeout."""
    why = {"owner": "its owner paused it",
           "schedule": "it is outside the hours its owner set for serving",
           "battery": "its machine is running on battery"}.get(pause.reason, "it is paused")
    if pause.until is None:
        return LatticeError(ErrorCode.RUNTIME_PAUSED,
                            f"personal runtime {lattice_id} is not serving: {why}")
    return LatticeError(ErrorCode.RUNTIME_PAUSED,
                        f"personal runtime {lattice_id} is not serving: {why} until "
                        f"{iso_from_seconds(pause.until)}",
                        retry_after=max(1.0, pause.until - time.time()))


class SessionNotFound(LatticeError):
    def __init__(self) -> None:
        super().__init__(ErrorCode.SESSION_NOT_FOUND,
                         "relay session not found: register a new session")


# ----------------------------------------------------------------------------- time


class Clock(Protocol):
    """A broker's time. Injected so the broker contract tests move time instead of
    waiting for it; ``SYSTEM_CLOCK`` everywhere else."""

    def monotonic(self) -> float:
        """Seconds for deadlines: poll windows, pickup timeouts, presence."""
        ...

    def time(self) -> float:
        """Unix seconds: last seen, and presence stamps replicas share in Redis."""
        ...

    async def sleep(self, seconds: float) -> None:
        """The sweeper's tick."""
        ...


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)
    sleep = staticmethod(asyncio.sleep)


SYSTEM_CLOCK: Clock = SystemClock()


def sweep_tick(poll_window: float, presence_window: float, pickup_timeout: float) -> float:
    """How often a broker's sweeper expires deadlines: a tenth of the shortest window,
    between 10 ms and 250 ms."""
    return max(0.01, min(0.25, poll_window / 10, presence_window / 10, pickup_timeout / 10))


# --------------------------------------------------------------------------- answers


@dataclass
class PollResult:
    jobs: list[JobEnvelope] = field(default_factory=list)
    cancels: list[CancelNotice] = field(default_factory=list)
    # Another machine (another daemon instance id) has a live session on this runtime:
    # a copied pairing. Sent only when true (idle daemons' traffic).
    instance_conflict: bool = False

    def to_dict(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"jobs": [j.to_dict() for j in self.jobs],
                                  "cancels": [c.to_dict() for c in self.cancels]}
        if self.instance_conflict:
            answer["instanceConflict"] = True
        return answer


@dataclass(frozen=True)
class Refusal:
    job_id: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"jobId": self.job_id, "code": self.code, "message": self.message}


@dataclass
class EventsResult:
    refused: list[Refusal] = field(default_factory=list)
    cancels: list[CancelNotice] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"refused": [r.to_dict() for r in self.refused],
                "cancels": [c.to_dict() for c in self.cancels]}


@dataclass(frozen=True)
class BrokerStats:
    """What a broker holds right now in this process (the metrics gauges)."""

    sessions: int
    parked_polls: int
    queued_jobs: int


def not_leased(job_id: str) -> Refusal:
    return Refusal(job_id, ErrorCode.LEASE_NOT_HELD.value, "the job is not leased to this session")


# ---------------------------------------------------------------- waiting on a client


# An ASGI ``receive`` callable: how a held request notices that its client went away.
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


def resolve(future: asyncio.Future[Any]) -> None:
    """Wake a waiter with None (timer callback); a no-op once it is already resolved."""
    if not future.done():
        future.set_result(None)


async def watch_disconnect(receive: Receive, on_disconnect: Callable[[], object]) -> None:
    """Call ``on_disconnect`` once the client's connection drops (``http.disconnect``).

    A held request has read its body, so ``receive`` has nothing else to deliver.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


@dataclass(eq=False)
class ParkedPoll:
    """A daemon's poll held until a job or cancel notice comes for it, its window ends
    (``deadline``), or its connection drops (a crashed daemon)."""

    capacity: int
    deadline: float  # the broker clock's monotonic seconds
    # Dropped when the poll returns: the broker's deadline FIFO keeps this object until
    # the deadline, and must not keep the answer (sealed jobs) alive with it.
    future: asyncio.Future[PollResult | None] | None = field(
        init=False, default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def open(self) -> bool:
        return self.future is not None and not self.future.done()

    def answer(self, result: PollResult | None = None) -> None:
        """Answer the poll (empty by default); a no-op once it is answered."""
        if self.future is not None and not self.future.done():
            self.future.set_result(result)

    async def held(self, receive: Receive | None) -> PollResult:
        """Wait for the answer; a drop seen on ``receive`` answers it empty."""
        future = self.future
        assert future is not None
        watcher = (asyncio.get_running_loop().create_task(
            watch_disconnect(receive, partial(resolve, future))) if receive else None)
        try:
            outcome = await future
        finally:
            self.future = None
            if watcher is not None:
                watcher.cancel()
        return outcome if outcome is not None else PollResult()


def answer_expired(polls: deque[ParkedPoll], now: float) -> None:
    """Answer (empty) the parked polls at the front of a deadline FIFO whose window ended.

    Every poll waits the same window, so deadlines are appended in order: one FIFO and
    one sweeper replace a timer per poll."""
    while polls and polls[0].deadline <= now:
        polls.popleft().answer()


# ------------------------------------------------------------------------------ jobs


class EventInbox:
    """The events of one job waiting for the request that holds it (both brokers)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[SealedEvent | LatticeError] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def push(self, item: SealedEvent | LatticeError) -> None:
        self._items.append(item)
        if self._waiter is not None:
            resolve(self._waiter)

    async def next_event(self, timeout: float) -> SealedEvent | LatticeError | None:
        if not self._items:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(max(timeout, 0.0), resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._items.popleft() if self._items else None


class JobTicket(Protocol):
    """The app-side handle of one submitted job."""

    job_id: str
    # time.monotonic() when a daemon's poll took the job, if this process saw it (the
    # in-process broker); None otherwise. Server-Timing's ``pickup`` part.
    picked_up_at: float | None

    async def next_event(self, timeout: float) -> SealedEvent | LatticeError | None:
        """The next event, a broker-side failure (runtime_timeout, runtime_unreachable,
        runtime_revoked), or None when ``timeout`` seconds passed with nothing."""
        ...

    def finish(self) -> None:
        """The holder saw a final event: release the lease, forget the job."""
        ...

    def cancel(self, reason: str = "cancelled") -> None:
        """The app went away or timed out: drop a queued job, tell a leased one's session
        (a CancelNotice). A waiting ``next_event`` returns a ``cancelled`` error."""
        ...


# ---------------------------------------------------------------------- the contract


class RelayBroker(Protocol):
    """Jobs, leases and presence: everything the routes ask of a broker."""

    async def reachable(self, lattice_ids: list[str]) -> dict[str, bool]:
        """Which of these runtimes have a live daemon session (presence window)."""
        ...

    async def last_seen(self, lattice_ids: list[str]) -> dict[str, float | None]:
        """Unix seconds of each runtime's last daemon activity, if any."""
        ...

    async def pauses(self, lattice_ids: list[str]) -> dict[str, Pause | None]:
        """Each runtime's pause as its daemon last said (None: not paused)."""
        ...

    async def set_pause(self, lattice_id: str, session_id: str, pause: Pause | None) -> None:
        """The daemon of ``session_id`` says its runtime is paused (or not any more).
        Raises SessionNotFound when the session is not this runtime's."""
        ...

    async def revoke_runtime(self, lattice_id: str) -> None:
        """Fail queued and in-flight jobs with runtime_revoked, end the sessions."""
        ...

    async def release_polls(self) -> None:
        """Graceful shutdown: answer held polls now (empty) and hold no new ones."""
        ...

    async def close(self) -> None: ...

    async def stats(self) -> BrokerStats:
        """Sessions, parked polls and queued jobs, as this process sees them (metrics)."""
        ...

    async def ping(self) -> None:
        """Raises when the broker's backing service (Redis) cannot be reached (readiness)."""
        ...

    async def register_session(self, lattice_id: str, max_concurrency: int,
                               daemon_key: str | None = None,
                               instance_id: str | None = None) -> str:
        """A new session. Sessions of an older pairing (another ``daemon_key``) end: jobs
        are sealed to the current key, which their daemon cannot open. ``instance_id``:
        the daemon's machine (see ``instance_conflict``)."""
        ...

    async def instance_conflict(self, lattice_id: str, session_id: str) -> bool:
        """Whether a live session of this runtime comes from another daemon instance (a
        second machine with a copy of the pairing: jobs are split between them). Poll
        answers carry the same flag."""
        ...

    async def end_other_pairings(self, lattice_id: str, daemon_key: str) -> None:
        """The runtime was paired again (redeem): sessions of any other daemon key end now,
        their jobs failing with runtime_unreachable. Their daemon's token no longer works
        and it cannot open jobs sealed to the new key, so they must neither count as
        reachable nor take jobs while the new daemon starts."""
        ...

    async def deregister_session(self, lattice_id: str, session_id: str) -> None:
        """Raises SessionNotFound when the session is not this runtime's."""
        ...

    async def poll(self, lattice_id: str, session_id: str, capacity: int,
                   receive: Receive | None = None) -> PollResult:
        """Jobs (at most ``capacity``, leased to the session) and cancel notices; parks
        up to the poll window when there is nothing. Raises SessionNotFound."""
        ...

    async def post_events(self, lattice_id: str, session_id: str,
                          events: list[SealedEvent]) -> EventsResult: ...

    async def submit(self, lattice_id: str, envelope: JobEnvelope) -> JobTicket: ...
