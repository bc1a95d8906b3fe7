"""The daemon's local control API (docs/control-api.md) on its Unix socket.

A deliberately small HTTP/1.1 server on asyncio streams, not a web framework: the
daemon idles most of its life and must stay light (benchmarks/README.md). One request per
connection (``Connection: close``). Defences, because any local process can connect:

* the socket is 0600 in a 0700 directory, created under a umask so it is never
  briefly open to others;
* requests with browser headers (``Origin``, ``Referer``, ``Sec-Fetch-*``) get 403, so
  a web page can never drive the daemon (as Tailscale's LocalAPI does);
* garbage, oversized (> 64 KiB) and slow (> 5 s) requests get 400/413/408 and the
  connection is closed; nothing a client sends can take the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

from lattice_protocol import __version__
from providers.timeouts import within

from .config import ensure_private_dir

log = logging.getLogger("lattice_daemon.control")

MAX_REQUEST_BYTES = 64 * 1024
READ_TIMEOUT = 5.0
BROWSER_HEADERS = ("origin", "referer")
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class SocketInUse(Exception):
    """Another live process answers on the socket path."""


class SocketPathUnusable(Exception):
    """The socket path holds something else, or cannot be checked: a person must fix it."""


class ControlBackend(Protocol):
    """What the daemon exposes through the socket; every method returns a JSON object."""

    async def ping(self) -> dict[str, Any]: ...

    async def status(self) -> dict[str, Any]: ...

    async def reload(self) -> dict[str, Any]: ...

    async def disconnect(self) -> dict[str, Any]: ...

    async def shutdown(self) -> dict[str, Any]: ...

    async def activity(self, query: dict[str, str]) -> dict[str, Any]: ...

    async def live(self) -> dict[str, Any]: ...

    async def controls_state(self) -> dict[str, Any]: ...

    async def pause(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def resume(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def patch_limits(self, body: dict[str, Any]) -> dict[str, Any]: ...


class ControlRefusal(Exception):
    """A handler's refusal, answered as ``{"error": {message, code}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    query: dict[str, str] = field(default_factory=dict)  # a repeated name: the last value


class _BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# ---------------------------------------------------------------------- parsing


async def read_request(reader: asyncio.StreamReader, max_bytes: int = MAX_REQUEST_BYTES
                       ) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest(413, "request_too_large", "request headers too large") from None
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ConnectionResetError from None  # the client connected and left
        raise _BadRequest(400, "bad_request", "incomplete HTTP request") from None
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text[:-4].split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise _BadRequest(400, "bad_request", "not an HTTP request") from None
    if not version.startswith("HTTP/1.") or not method.isalpha() or not target.startswith("/"):
        raise _BadRequest(400, "bad_request", "not an HTTP/1.x request")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(400, "bad_request", "malformed header line")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(400, "bad_request", "chunked request bodies are not supported")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _BadRequest(400, "bad_request", "invalid Content-Length") from None
    if length < 0:
        raise _BadRequest(400, "bad_request", "invalid Content-Length")
    if len(head) + length > max_bytes:
        raise _BadRequest(413, "request_too_large",
                          f"request larger than {max_bytes // 1024} KiB")
    body = await reader.readexactly(length) if length else b""
    path, _, query_text = target.partition("?")
    try:
        query = dict(parse_qsl(query_text, keep_blank_values=True, strict_parsing=False,
                               errors="strict", max_num_fields=32))
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest(400, "bad_request", "malformed query string") from None
    return Request(method.upper(), path, headers, body, query)


def _is_browser(headers: dict[str, str]) -> bool:
    return any(h in headers for h in BROWSER_HEADERS) or any(
        h.startswith("sec-fetch-") for h in headers)


def render(status: int, body: dict[str, Any]) -> bytes:
    body.setdefault("daemonVersion", __version__)
    payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            f"Lattice-Daemon-Version: {__version__}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + payload


def error_response(status: int, code: str, message: str) -> bytes:
    return render(status, {"error": {"message": message, "code": code}})


# ---------------------------------------------------------------------- routing

# A route's handler gets the parsed request; the backend's methods get what they read.
Handler = Callable[[Request], Awaitable[dict[str, Any]]]


def _plain(method: Callable[[], Awaitable[dict[str, Any]]]) -> Handler:
    async def call(_request: Request) -> dict[str, Any]:
        return await method()

    return call


def _with_query(method: Callable[[dict[str, str]], Awaitable[dict[str, Any]]]) -> Handler:
    async def call(request: Request) -> dict[str, Any]:
        return await method(request.query)

    return call


def _with_body(method: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> Handler:
    async def call(request: Request) -> dict[str, Any]:
        return await method(json_body(request))

    return call


def routes_for(backend: ControlBackend) -> dict[str, tuple[str, Handler]]:
    routes: dict[str, tuple[str, Handler]] = {
        "/v1/ping": ("GET", _plain(backend.ping)),
        "/v1/status": ("GET", _plain(backend.status)),
        "/v1/reload": ("POST", _plain(backend.reload)),
        "/v1/relay/disconnect": ("POST", _plain(backend.disconnect)),
        "/v1/shutdown": ("POST", _plain(backend.shutdown)),
        # Visibility: the activity log and the live view (`lattice-ctl activity` / `top`).
        "/v1/activity": ("GET", _with_query(backend.activity)),
        "/v1/live": ("GET", _plain(backend.live)),
        # The owner's controls: pause, resume, the rules.
        "/v1/controls": ("GET", _plain(backend.controls_state)),
        "/v1/controls/pause": ("POST", _with_body(backend.pause)),
        "/v1/controls/resume": ("POST", _with_body(backend.resume)),
        "/v1/controls/limits": ("PATCH", _with_body(backend.patch_limits)),
    }
    return routes


def json_body(request: Request) -> dict[str, Any]:
    """A request's body as a JSON object ({} when empty); _BadRequest otherwise."""
    if not request.body.strip():
        return {}
    try:
        value = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest(400, "bad_request", "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise _BadRequest(400, "bad_request", "the body must be a JSON object")
    return value


async def dispatch(routes: dict[str, tuple[str, Handler]], request: Request) -> bytes:
    if _is_browser(request.headers):
        return error_response(403, "forbidden",
                              "requests from web browsers are refused by the daemon")
    route = routes.get(request.path.rstrip("/") or "/")
    if route is None:
        return error_response(404, "not_found", f"no such endpoint: {request.path[:100]}")
    method, handler = route
    if request.method != method:
        return error_response(405, "method_not_allowed",
                              f"{request.path} takes {method}, not {request.method[:10]}")
    try:
        return render(200, await handler(request))
    except (_BadRequest, ControlRefusal) as exc:
        return error_response(exc.status, exc.code, exc.message)
    except Exception:
        log.exception("control request %s %s failed", request.method, request.path)
        return error_response(500, "internal_error", "the daemon failed to answer; see its log")


# ----------------------------------------------------------------------- server


class ControlServer:
    def __init__(self, socket_path: Path, backend: ControlBackend, *,
                 private_dir: bool = True, read_timeout: float = READ_TIMEOUT,
                 max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.socket_path = socket_path
        self._routes = routes_for(backend)
        self._private_dir = private_dir
        self._read_timeout = read_timeout
        self._max = max_request_bytes
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = bind_private_socket(self.socket_path, private_dir=self._private_dir)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock,
                                                       limit=self._max)
        log.info("control API listening on %s", self.socket_path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            try:
                request = await within(read_request(reader, self._max),
                                       self._read_timeout)
                answer = await dispatch(self._routes, request)
            except _BadRequest as exc:
                answer = error_response(exc.status, exc.code, exc.message)
            except asyncio.TimeoutError:
                answer = error_response(408, "request_timeout",
                                        f"request not received within {self._read_timeout:g} s")
            except (ConnectionError, asyncio.IncompleteReadError):
                return
            writer.write(answer)
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
                await within(writer.drain(), self._read_timeout)
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()


def bind_private_socket(path: Path, *, private_dir: bool = True) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from birth.

    A leftover socket file is removed only when nothing answers on it; a live one means
    another daemon serves that path (``SocketInUse``).
    """
    if private_dir:
        ensure_private_dir(path.parent)
    elif not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is created 0600, never wider even briefly
    try:
        sock.bind(str(path))
    except OSError as exc:  # e.g. "AF_UNIX path too long" (about 107 bytes): say where
        sock.close()
        raise OSError(f"cannot listen on {path}: {exc.strerror or exc}; set LATTICE_SOCKET "
                      "to another (shorter) path") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketPathUnusable(f"{path} exists and is not a socket; remove it or set "
                                 "LATTICE_SOCKET to another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketPathUnusable(f"cannot check the socket {path}: {exc.strerror}"
                                     ) from None
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # nobody listens: a crashed daemon's leftover
        return
    finally:
        probe.close()
    raise SocketInUse(f"another lattice-daemon answers on {path}")

