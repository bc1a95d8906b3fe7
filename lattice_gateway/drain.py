"""Draining a gateway replica on SIGTERM (docs/operations.md, "Stopping a gateway").

``Drain`` is the state the server (``frontdoor.GatewayServer``) moves and the routes read:

1. ``begin()``: new chats are refused (503 ``service_unavailable``, ``x-should-retry:
   true``), ``/readyz`` fails, polls that find nothing are told to go elsewhere, while
   daemons keep posting results for jobs already leased (the listener stays open).
2. The chats in flight finish, or at the drain deadline ``expire()`` cancels their jobs
   and each ends with 503 ``service_unavailable`` (``EndedByShutdown``): a JSON envelope,
   or an SSE error event once its stream started. Never the server's bare ``text/plain``
   500.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from lattice_protocol import ErrorCode, LatticeError

from .relay.base import JobTicket, MayHaveRun

if TYPE_CHECKING:
    from starlette.requests import Request

SHUTTING_DOWN = "this gateway replica is shutting down; retry (another replica will answer)"
ENDED_BY_SHUTDOWN = ("this gateway replica shut down before the personal runtime finished "
                     "(the job was cancelled)")


def shutting_down() -> LatticeError:
    """Refused before anything ran: a retry is safe (``x-should-retry: true``)."""
    return LatticeError(ErrorCode.SERVICE_UNAVAILABLE, SHUTTING_DOWN)


class EndedByShutdown(MayHaveRun):
    """A chat the drain time cut off. Its job had reached the daemon, so the answer says
    ``x-should-retry: false``: the SDKs only retry what cannot have run (the app may)."""

    def __init__(self) -> None:
        super().__init__(ErrorCode.SERVICE_UNAVAILABLE, ENDED_BY_SHUTDOWN)


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.expired = False
        self._jobs: set[JobTicket] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.draining = True

    def add(self, ticket: JobTicket) -> None:
        """A chat holds ``ticket`` until ``discard``: the drain waits for it."""
        self._jobs.add(ticket)
        self._idle.clear()

    def discard(self, ticket: JobTicket) -> None:
        self._jobs.discard(ticket)
        if not self._jobs:
            self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    async def wait_idle(self, timeout: float) -> bool:
        """True once no chat is in flight; False when ``timeout`` seconds passed first."""
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
            return True
        return False

    def expire(self) -> None:
        """The drain time is over: cancel every job in flight (the daemon aborts it); its
        request answers ``EndedByShutdown`` (``failure_of_cancel``)."""
        self.expired = True
        for ticket in list(self._jobs):
            ticket.cancel("gateway_shutdown")

    def failure_of_cancel(self, error: LatticeError) -> LatticeError:
        """What a chat answers for a broker error: a cancel made by ``expire`` is the
        shutdown's 503, anything else stays as it is."""
        if self.expired and error.code is ErrorCode.CANCELLED:
            return EndedByShutdown()
        return error


def drain_of(request: Request) -> Drain:
    """The app's drain state (``create_app`` makes it; the server moves it)."""
    drain: Drain = request.app.state.drain
    return drain
