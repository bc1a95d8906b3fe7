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
    path = target.split("?", 1)[0]
    return Request(method.upper(), path, headers, body)


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

Route = Callable[[], Awaitable[dict[str, Any]]]


def routes_for(backend: ControlBackend) -> dict[str, tuple[str, Route]]:
    return {
        "/v1/ping": ("GET", backend.ping),
        "/v1/status": ("GET", backend.status),
        "/v1/reload": ("POST", backend.reload),
        "/v1/relay/disconnect": ("POST", backend.disconnect),
        "/v1/shutdown": ("POST", backend.shutdown),
    }


# -- the owner's controls (docs/control-api.md): routes that read a JSON body --------

BodyRoute = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _no_body(handler: Route) -> BodyRoute:
    async def call(_body: dict[str, Any]) -> dict[str, Any]:
        return await handler()

    return call


def controls_routes(backend: Any) -> dict[str, tuple[str, BodyRoute]]:
    """The controls endpoints of a backend that has them (the daemon does)."""
    if not hasattr(backend, "controls_state"):
        return {}
    return {
        "/v1/controls": ("GET", _no_body(backend.controls_state)),
        "/v1/controls/pause": ("POST", backend.pause),
        "/v1/controls/resume": ("POST", backend.resume),
        "/v1/controls/limits": ("PATCH", backend.patch_limits),
    }


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


async def dispatch_body_route(route: tuple[str, BodyRoute], request: Request) -> bytes:
    method, handler = route
    if request.method != method:
        return error_response(405, "method_not_allowed",
                              f"{request.path} takes {method}, not {request.method[:10]}")
    try:
        return render(200, await handler(json_body(request)))
    except _BadRequest as exc:
        return error_response(exc.status, exc.code, exc.message)
    except ControlRefusal as exc:
        return error_response(exc.status, exc.code, exc.message)
    except Exception:
        log.exception("control request %s %s failed", request.method, request.path)
        return error_response(500, "internal_error", "the daemon failed to answer; see its log")


# --------------------------------------------------------------------------------


async def dispatch(routes: dict[str, tuple[str, Route]], request: Request,
                   body_routes: dict[str, tuple[str, BodyRoute]] | None = None) -> bytes:
    if _is_browser(request.headers):
        return error_response(403, "forbidden",
                              "requests from web browsers are refused by the daemon")
    body_route = (body_routes or {}).get(request.path.rstrip("/") or "/")
    if body_route is not None:
        return await dispatch_body_route(body_route, request)
    route = routes.get(request.path.rstrip("/") or "/")
    if route is None:
        return error_response(404, "not_found", f"no such endpoint: {request.path[:100]}")
    method, handler = route
    if request.method != method:
        return error_response(405, "method_not_allowed",
                              f"{request.path} takes {method}, not {request.method[:10]}")
    try:
        return render(200, await handler())
    except ControlRefusal as exc:
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
        self._body_routes = controls_routes(backend)
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
                answer = await dispatch(self._routes, request, self._body_routes)
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

