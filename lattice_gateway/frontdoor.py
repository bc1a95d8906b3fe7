"""The gateway's front door: what a client without credentials can hold, and SIGTERM.

uvicorn's httptools protocol bounds none of it: a request's headers may be any size and
take any time, so may its body, and connections are not capped (its ``limit_concurrency``
answers ``text/plain`` and counts parked polls as busy). ``GatewayProtocol`` extends it:

* headers (request line included) beyond ``max_header_bytes``: 431 ``headers_too_large``;
* headers not complete ``header_timeout_seconds`` after the connection's (or request's)
  first byte, a body not complete ``body_timeout_seconds`` after its headers: 408
  ``request_timeout``. A parked poll has sent its whole request: no read timer runs on
  it (between requests uvicorn's keep-alive timeout applies, as before);
* more than ``max_connections`` open (``max_connections_per_ip`` from one address): the
  request on the extra connection is answered 503 ``service_unavailable`` (429
  ``rate_limited``) as soon as its headers arrive, and the connection closes;
* a request the HTTP parser refuses (control bytes in a header, a negative or overflowing
  ``Content-Length``, ``Content-Length`` with ``Transfer-Encoding``): 400
  ``invalid_request`` naming the parser's reason, instead of uvicorn's ``text/plain``;
* a request uvicorn would answer with its bare ``text/plain`` 500 (an app task cancelled
  at shutdown): the envelope.

Every refusal is the contract's JSON envelope with ``connection: close``.
``GatewayServer`` drains on SIGTERM (``drain.Drain``) before uvicorn's own shutdown.
What still belongs in a reverse proxy: docs/operations.md.
"""

from __future__ import annotations

import asyncio
import http
import logging
import resource
import socket
from typing import TYPE_CHECKING, Any

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from lattice_protocol import ErrorCode, LatticeError

from .drain import Drain, shutting_down
from .errors import error_response
from .settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.types import Receive, Scope, Send

log = logging.getLogger("lattice_gateway")

# Kept free below the file descriptor limit: the database and Redis pools, log files, the
# listener, and the accept() of a connection that is then refused.
FD_RESERVE_MIN = 64
# After a refusal the connection is half-closed and what the client still sends is read
# and dropped for this long: closing with unread bytes makes the kernel send a reset,
# which can destroy the answer before the client reads it (nginx's lingering close).
LINGER_SECONDS = 1.0
# After the drain time, how long cancelled chats get to write their error answers.
EXPIRE_GRACE_SECONDS = 1.0
# uvicorn's own shutdown after the drain: only short requests are left (event posts).
FINAL_SHUTDOWN_SECONDS = 2.0
FORCE_EXIT_CHECK_SECONDS = 0.1  # how often the drain looks for a second Ctrl-C

_IDLE, _HEADERS, _BODY = 0, 1, 2


def raise_fd_limit() -> int:
    """Raise this process's soft file descriptor limit to the hard one (as Go's runtime
    does); the resulting soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return int(min(soft, hard))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return int(soft)
    return int(hard)


def check_limits(settings: Settings) -> None:
    """ValueError naming the first front-door setting that cannot work."""
    if settings.max_header_bytes < 1024:
        raise ValueError("the header limit must be at least 1024 bytes")
    for name, value in (("header timeout", settings.header_timeout_seconds),
                        ("body timeout", settings.body_timeout_seconds)):
        if not value > 0:
            raise ValueError(f"the {name} must be a positive number of seconds")
    if settings.max_connections < 0 or settings.max_connections_per_ip < 0:
        raise ValueError("connection limits must be 0 (automatic / none) or more")


def connection_cap(configured: int, fd_limit: int) -> int:
    """``configured``, or (0) the file descriptor limit less a reserve."""
    if configured > 0:
        return configured
    return max(1, fd_limit - max(FD_RESERVE_MIN, fd_limit // 20))


def raw_error(error: LatticeError) -> bytes:
    """The envelope as a whole HTTP/1.1 response that closes the connection, for answers
    written by the protocol itself (no ASGI cycle is running)."""
    body = orjson.dumps(error.body())
    status = error.code.status
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    retry = "true" if error.code.retryable else "false"
    head = (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nx-should-retry: {retry}\r\n"
            f"connection: close\r\n\r\n")
    return head.encode("ascii") + body


class FrontDoor:
    """The limits and the per-address counts shared by all connections of one server."""

    def __init__(self, settings: Settings, drain: Drain, max_connections: int) -> None:
        self.max_header_bytes = settings.max_header_bytes
        self.header_timeout = settings.header_timeout_seconds
        self.body_timeout = settings.body_timeout_seconds
        self.max_connections = max_connections
        self.max_per_ip = settings.max_connections_per_ip
        self.drain = drain
        self.per_ip: dict[str, int] = {}

    def protocol_class(self) -> type[GatewayProtocol]:
        """The class uvicorn instantiates per connection (its ``http`` setting)."""
        return type("BoundGatewayProtocol", (GatewayProtocol,), {"front": self})


def _refusing_app(error: LatticeError) -> Any:
    """An ASGI app answering ``error`` and closing (a connection over a limit)."""
    response = error_response(error, {"connection": "close"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await response(scope, receive, send)

    return app


class GatewayProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the front door's limits (module docstring)."""

    front: FrontDoor  # set on the class FrontDoor.protocol_class makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _HEADERS  # a new connection owes its first request's headers
        self._header_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._refusal: LatticeError | None = None  # over a connection limit
        self._ip: str | None = None
        self._lingering = False

    # -- connections --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        front = self.front
        if self.client and front.max_per_ip > 0:
            self._ip = self.client[0]
            count = front.per_ip[self._ip] = front.per_ip.get(self._ip, 0) + 1
            if count > front.max_per_ip:
                self._refusal = LatticeError(
                    ErrorCode.RATE_LIMITED, f"too many connections from this address "
                    f"(limit {front.max_per_ip})", retry_after=1.0)
        if len(self.connections) > front.max_connections:
            self._refusal = LatticeError(
                ErrorCode.SERVICE_UNAVAILABLE,
                f"the gateway is at its connection limit ({front.max_connections}); retry")
        self._arm(front.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._ip is not None:
            left = self.front.per_ip.get(self._ip, 1) - 1
            if left > 0:
                self.front.per_ip[self._ip] = left
            else:
                self.front.per_ip.pop(self._ip, None)
            self._ip = None
        super().connection_lost(exc)

    # -- reading ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, answering a parse error in the envelope with its reason.
        if self._lingering:
            return  # after a refusal: read and dropped until the connection closes
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            reason = str(exc) or "malformed request"
            self._refuse(LatticeError(ErrorCode.INVALID_REQUEST,
                                      f"invalid HTTP request: {reason}"))
            return
        except httptools.HttpParserUpgrade:
            # No WebSocket routes (ws="none"): an upgrade request (h2c, websocket) was
            # dispatched as plain HTTP when its headers completed; nothing to switch to.
            return
        if self._phase == _HEADERS:
            # Still reading headers after this chunk: all of it was header bytes (a
            # pipelined request after a body in one read may count a little extra).
            self._header_bytes += len(data)
            if self._header_bytes > self.front.max_header_bytes:
                self._refuse(LatticeError(
                    ErrorCode.HEADERS_TOO_LARGE, f"the request line and headers exceed "
                    f"{self.front.max_header_bytes} bytes"))
                return
            if self._timer is None:
                self._arm(self.front.header_timeout)
        elif self._phase == _BODY and self._timer is None:
            self._arm(self.front.body_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEADERS
        self._header_bytes = 0

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._disarm()  # the header timer; the body's starts if the body is not all here
        if self._refusal is not None:
            saved, self.app = self.app, _refusing_app(self._refusal)
            try:
                super().on_headers_complete()
            finally:
                self.app = saved
            return
        super().on_headers_complete()
        if self.front.drain.draining and self.cycle is not None:
            # Every answer closes its connection: keep-alive clients reconnect, and a
            # load balancer sends them to another replica.
            self.cycle.keep_alive = False
            self.answer_500_in_envelope()

    def close_if_idle(self) -> None:
        """Close a keep-alive connection waiting for its next request (the drain: its
        client's next request opens a new connection, which reaches another replica)."""
        if self._phase == _IDLE and (self.cycle is None or self.cycle.response_complete) \
                and not self.transport.is_closing():
            self.transport.close()

    def answer_500_in_envelope(self) -> None:
        """uvicorn answers a request whose task it cancels at the end of a shutdown with
        a bare text/plain 500: this connection's request gets the envelope instead.
        (Set from the drain on: uvicorn's only other 500, an app returning without an
        answer, cannot happen behind the app's last-resort handler.)"""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.send_500_response = _envelope_500(cycle)  # type: ignore[method-assign]

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._disarm()
        super().on_message_complete()

    # -- timers and refusals ------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._phase == _BODY:
            message = (f"the request body did not arrive within "
                       f"{self.front.body_timeout:g} s of its headers")
        else:
            message = (f"the request line and headers did not arrive within "
                       f"{self.front.header_timeout:g} s")
        self._refuse(LatticeError(ErrorCode.REQUEST_TIMEOUT, message))

    def _refuse(self, error: LatticeError) -> None:
        """Answer ``error`` and close, unless an answer is already under way on this
        connection (then only close: nothing valid can be added to it)."""
        self._disarm()
        transport = self.transport
        if transport.is_closing():
            return
        log.debug("refused a request from %s: %s", self.client[0] if self.client else "?",
                  error.message)
        cycle = self.cycle
        if cycle is not None and self._phase == _BODY:  # the cycle is this request's
            if cycle.response_started:
                # Answered already (e.g. 401 before reading the body): no second answer.
                transport.close()
                return
            # The app is still reading the body: it now sees a disconnect, and whatever
            # it sends later is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:
            transport.close()  # a pipelined request while the previous answer is under way
            return
        self._phase = _IDLE
        self._lingering = True
        transport.write(raw_error(error))
        if transport.can_write_eof():
            transport.write_eof()
            self._timer = self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()


def _envelope_500(cycle: RequestResponseCycle) -> Any:
    async def send_500_response() -> None:
        error = shutting_down()
        body = orjson.dumps(error.body())
        start: Any = {"type": "http.response.start", "status": error.code.status,
                      "headers": [(b"content-type", b"application/json"),
                                  (b"content-length", str(len(body)).encode()),
                                  (b"x-should-retry", b"true"), (b"connection", b"close")]}
        await cycle.send(start)
        end: Any = {"type": "http.response.body", "body": body, "more_body": False}
        await cycle.send(end)

    return send_500_response


class GatewayServer(uvicorn.Server):
    """uvicorn's server, draining first on SIGTERM/SIGINT (``drain.Drain``).

    uvicorn alone stops listening at once and closes idle connections: a daemon could not
    post the result of a job it holds, and a request still open at the timeout got a bare
    500. Here the listener stays open through the drain: new chats are refused 503,
    parked polls are answered at once (the daemon moves to another replica), results of
    leased jobs still arrive, and chats still open at the drain time end with an error.
    Only then does uvicorn's shutdown run.
    """

    def __init__(self, config: uvicorn.Config, app: Starlette, drain_timeout: float) -> None:
        super().__init__(config)
        self.gateway_app = app
        self.drain_timeout = drain_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain: Drain = self.gateway_app.state.drain
        drain.begin()
        for connection in list(self.server_state.connections):
            if isinstance(connection, GatewayProtocol):
                connection.answer_500_in_envelope()
                connection.close_if_idle()
        services = getattr(self.gateway_app.state, "services", None)
        if services is not None:
            await services.broker.release_polls()
        log.info("draining: new chats are refused; %d in flight get up to %g s",
                 drain.in_flight, self.drain_timeout)
        if not await self._wait_idle(drain, self.drain_timeout):
            log.warning("drain time over: ending %d chat(s) still in flight with 503 "
                        "service_unavailable", drain.in_flight)
            drain.expire()
            await self._wait_idle(drain, EXPIRE_GRACE_SECONDS)
        self.config.timeout_graceful_shutdown = FINAL_SHUTDOWN_SECONDS  # type: ignore[assignment]
        await super().shutdown(sockets)

    async def _wait_idle(self, drain: Drain, timeout: float) -> bool:
        """``drain.wait_idle``, cut short by a second SIGINT (uvicorn's force exit)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.force_exit:
            left = deadline - asyncio.get_running_loop().time()
            if await drain.wait_idle(min(left, FORCE_EXIT_CHECK_SECONDS)):
                return True
            if left <= FORCE_EXIT_CHECK_SECONDS:
                return False
        return False
