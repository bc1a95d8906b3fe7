"""What the relay routes and the chat route need from a broker, beyond ``services.Broker``.

The broker only ever sees relay-visible envelopes (``JobEnvelope``, ``SealedEvent``,
``CancelNotice``): it routes sealed bytes by job id and never opens them. Whoever holds
the app's request (the chat route, through a ``JobTicket``) opens events and tells the
broker when a job is finished, which releases the lease.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lattice_protocol import CancelNotice, ErrorCode, JobEnvelope, LatticeError, SealedEvent

SESSION_LIMIT_RETRY_AFTER = 5.0  # seconds: a restarting daemon's old session lapses
QUEUE_FULL_RETRY_AFTER = 1.0


def too_many_sessions() -> LatticeError:
    return LatticeError(ErrorCode.RATE_LIMITED, "too many relay sessions for this runtime",
                        retry_after=SESSION_LIMIT_RETRY_AFTER)


def queue_full(limit: int) -> LatticeError:
    return LatticeError(ErrorCode.RATE_LIMITED,
                        f"too many requests are waiting for this personal runtime ({limit} "
                        "queued); retry shortly", retry_after=QUEUE_FULL_RETRY_AFTER)


# An ASGI ``receive`` callable: the poll watches it to notice a daemon that went away.
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class SessionNotFound(LatticeError):
    def __init__(self) -> None:
        super().__init__(ErrorCode.SESSION_NOT_FOUND,
                         "relay session not found: register a new session")


@dataclass
class PollResult:
    jobs: list[JobEnvelope] = field(default_factory=list)
    cancels: list[CancelNotice] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": [j.to_dict() for j in self.jobs],
                "cancels": [c.to_dict() for c in self.cancels]}


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


def resolve(future: asyncio.Future[Any]) -> None:
    """Wake a waiter (timer callback); a no-op once it is already resolved."""
    if not future.done():
        future.set_result(None)


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


class RelayBroker(Protocol):
    """``services.Broker`` plus sessions, polls, events and job submission."""

    poll_window_seconds: float
    presence_window_seconds: float

    async def reachable(self, lattice_ids: list[str]) -> dict[str, bool]: ...

    async def last_seen(self, lattice_ids: list[str]) -> dict[str, float | None]: ...

    async def revoke_runtime(self, lattice_id: str) -> None: ...

    async def close(self) -> None: ...

    async def release_polls(self) -> None:
        """Graceful shutdown: answer held polls now (empty) and hold no new ones."""
        ...

    async def register_session(self, lattice_id: str, max_concurrency: int,
                               daemon_key: str | None = None) -> str:
        """A new session. Sessions of an older pairing (another ``daemon_key``) end: jobs
        are sealed to the current key, which their daemon cannot open."""
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
