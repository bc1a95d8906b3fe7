"""A minimal, fast HTTP/1.1 server on asyncio.Protocol for the provider test servers.

Why not starlette/uvicorn: these servers must withhold headers, drop connections
mid-body, notice a client that goes away mid-response, and answer an instant request
in tens of microseconds (benchmarks use them as the "instant local provider").

Shared by every fake: request parsing, keep-alive, fixed-length and chunked responses,
abort accounting, the ``/__control`` endpoint, and running in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_RECORDED_REQUESTS = 100

_REASONS = {200: "OK", 206: "Partial Content", 302: "Found", 400: "Bad Request",
            404: "Not Found", 405: "Method Not Allowed", 416: "Range Not Satisfiable",
            429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class Response:
    """Writes one response on the connection's transport."""

    def __init__(self, transport: asyncio.Transport, keep_alive: bool,
                 close_silently: bool = False) -> None:
        self._transport = transport
        self._keep_alive = keep_alive
        self._close_silently = close_silently  # after the answer, despite "keep-alive"
        self.head_only = False  # a HEAD request: headers, no body
        self.finished = False  # the server completed (or deliberately dropped) the reply

    @property
    def client_gone(self) -> bool:
        return self._transport.is_closing()

    def _head(self, status: int, content_type: str, extra: str) -> bytes:
        connection = "keep-alive" if self._keep_alive else "close"
        return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
                f"content-type: {content_type}\r\nconnection: {connection}\r\n{extra}\r\n"
                ).encode()

    def send(self, status: int, body: bytes, content_type: str = "application/json",
             headers: dict[str, str] | None = None, cut_after: int | None = None) -> None:
        """Send a complete response; ``cut_after``: close the connection after that
        many bytes of the body (a transfer that breaks midway)."""
        self.finished = True
        if self.client_gone:
            return
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = self._head(status, content_type, f"content-length: {len(body)}\r\n{extra}")
        if cut_after is not None:
            self._transport.write(head + body[:cut_after])
            self._transport.close()  # close, not abort: what was written still arrives
            return
        self._transport.write(head if self.head_only else head + body)
        if not self._keep_alive or self._close_silently:
            self._transport.close()

    def send_json(self, status: int, value: Any) -> None:
        self.send(status, orjson.dumps(value))

    def start_chunked(self, status: int, content_type: str) -> None:
        if not self.client_gone:
            self._transport.write(self._head(status, content_type,
                                             "transfer-encoding: chunked\r\n"))

    def write_chunk(self, data: bytes) -> None:
        if data and not self.client_gone:
            self._transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunked(self) -> None:
        self.finished = True
        if not self.client_gone:
            self._transport.write(b"0\r\n\r\n")
            if not self._keep_alive or self._close_silently:
                self._transport.close()

    def drop(self) -> None:
        """Server-side abort mid-response (not counted as a client abort)."""
        self.finished = True
        self._transport.abort()


Handler = Callable[[Request, Response, "ServerState"], Awaitable[None]]


@dataclass
class ServerState:
    """Behaviour (set by tests) and what the server observed (read by tests)."""

    defaults: dict[str, Any]
    behaviour: dict[str, Any] = field(default_factory=dict)
    requests: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=MAX_RECORDED_REQUESTS))
    request_count: int = 0
    completed: int = 0
    aborts: int = 0
    in_flight: int = 0
    connections_opened: int = 0

    def __post_init__(self) -> None:
        self.behaviour = copy.deepcopy(self.defaults)

    def configure(self, **changes: Any) -> dict[str, Any]:
        unknown = sorted(set(changes) - set(self.defaults))
        if unknown:
            raise ValueError(f"unknown behaviour key(s) {unknown}; known: {sorted(self.defaults)}")
        self.behaviour.update(copy.deepcopy(changes))
        return self.behaviour

    def reset(self) -> None:
        self.behaviour = copy.deepcopy(self.defaults)
        self.requests.clear()
        self.request_count = self.completed = self.aborts = self.connections_opened = 0

    def stats(self) -> dict[str, Any]:
        return {"request_count": self.request_count, "completed": self.completed,
                "aborts": self.aborts, "in_flight": self.in_flight,
                "connections_opened": self.connections_opened,
                "requests": list(self.requests)}

    def record(self, request: Request) -> None:
        self.request_count += 1
        try:
            body: Any = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError:
            body = request.body.decode("utf-8", "replace")
        self.requests.append({"method": request.method, "path": request.path, "body": body,
                              "headers": request.headers})


async def _control(request: Request, response: Response, state: ServerState) -> None:
    if request.method == "GET":
        response.send_json(200, {"behaviour": state.behaviour, "stats": state.stats()})
        return
    if request.path == "/__control/reset":
        state.reset()
        response.send_json(200, {"behaviour": state.behaviour, "stats": state.stats()})
        return
    try:
        changes = request.json()
        if not isinstance(changes, dict):
            raise ValueError("body must be a JSON object of behaviour keys")
        state.configure(**changes)
    except (ValueError, TypeError) as exc:
        response.send_json(400, {"error": str(exc)})
        return
    response.send_json(200, {"behaviour": state.behaviour, "stats": state.stats()})


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler, state: ServerState, connections: set[_Connection]
                 ) -> None:
        self._handler = handler
        self._state = state
        self._connections = connections
        self._buffer = b""
        self._task: asyncio.Task[None] | None = None
        self._response: Response | None = None
        self._counted = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._connections.add(self)
        self._state.connections_opened += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._task is not None and not self._task.done():
            if self._counted and self._response is not None and not self._response.finished:
                self._state.aborts += 1  # the client left before the reply was complete
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None:
            self._dispatch()

    def _dispatch(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buffer[:end].decode("latin-1").split("\r\n")
        method, target, _version = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self._buffer) < end + 4 + length:
            return
        body = self._buffer[end + 4:end + 4 + length]
        self._buffer = self._buffer[end + 4 + length:]
        path, _, query = target.partition("?")
        request = Request(method, path, query, headers, body)
        assert self.transport is not None
        keep_alive = headers.get("connection", "").lower() != "close"
        # Control calls are not traffic: they are neither recorded nor counted.
        self._counted = not path.startswith("/__control")
        close_silently = self._counted and bool(
            self._state.behaviour.get("close_after_response"))
        self._response = Response(self.transport, keep_alive, close_silently)
        self._response.head_only = method == "HEAD"
        if self._counted:
            self._state.record(request)
            self._state.in_flight += 1
        handler = self._handler if self._counted else _control
        self._task = asyncio.ensure_future(handler(request, self._response, self._state))
        self._task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if self._counted:
            self._state.in_flight -= 1
        if not task.cancelled():
            exc = task.exception()
            if exc is not None and self._response is not None and not self._response.finished:
                self._response.send_json(500, {"error": f"test server bug: {exc!r}"})
            if self._counted and self._response is not None and self._response.finished:
                self._state.completed += 1
        if self.transport is not None and not self.transport.is_closing() and self._buffer:
            self._dispatch()


class ServerHandle:
    """A running server: its URL plus direct access to its behaviour and observations."""

    def __init__(self, url: str, state: ServerState) -> None:
        self.url = url
        self._state = state

    def configure(self, **behaviour: Any) -> dict[str, Any]:
        return self._state.configure(**behaviour)

    def stats(self) -> dict[str, Any]:
        return self._state.stats()

    def reset(self) -> None:
        self._state.reset()

    def last_request(self) -> dict[str, Any]:
        return self._state.requests[-1]


class ControlClient:
    """The same API as ServerHandle, for a server in another process (``/__control``)."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, trust_env=False, timeout=5.0)

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self._http.request(method, path, json=body)
        if response.status_code != 200:
            raise ValueError(response.json().get("error"))
        return response.json()

    def configure(self, **behaviour: Any) -> dict[str, Any]:
        return self._call("POST", "/__control", behaviour)["behaviour"]

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/__control")["stats"]

    def reset(self) -> None:
        self._call("POST", "/__control/reset")

    def last_request(self) -> dict[str, Any]:
        return self.stats()["requests"][-1]

    def close(self) -> None:
        self._http.close()


async def serve(handler: Handler, state: ServerState, host: str = "127.0.0.1",
                port: int = 0) -> tuple[asyncio.Server, set[_Connection]]:
    connections: set[_Connection] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(handler, state, connections),
                                      host, port, reuse_address=True)
    return server, connections


@contextlib.contextmanager
def run_in_thread(handler: Handler, defaults: dict[str, Any],
                  behaviour: dict[str, Any] | None = None, host: str = "127.0.0.1",
                  port: int = 0) -> Iterator[ServerHandle]:
    """Run a server on its own event loop in a daemon thread; yield its handle."""
    state = ServerState(defaults)
    state.configure(**(behaviour or {}))
    ready = threading.Event()
    box: dict[str, Any] = {}
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            server, connections = loop.run_until_complete(serve(handler, state, host, port))
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            return
        box.update(server=server, connections=connections,
                   port=server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()
        server.close()
        for connection in list(connections):
            if connection.transport is not None:
                connection.transport.abort()
        loop.run_until_complete(server.wait_closed())
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, name="fake-provider", daemon=True)
    thread.start()
    if not ready.wait(10) or "error" in box:
        raise RuntimeError(f"test server did not start: {box.get('error')!r}")
    try:
        yield ServerHandle(f"http://{host}:{box['port']}", state)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def main(handler: Handler, defaults: dict[str, Any], name: str) -> None:
    """``python -m tests.servers.<name> --port N``: serve until killed; print a ready line."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m tests.servers.{name}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()

    async def run() -> None:
        state = ServerState(defaults)
        server, _ = await serve(handler, state, args.host, args.port)
        port = server.sockets[0].getsockname()[1]
        print(f"READY http://{args.host}:{port}", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())

