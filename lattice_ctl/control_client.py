"""The client side of the daemon's local control API (docs/control-api.md).

Raw ``socket`` plus a tiny HTTP/1.1 parser on purpose: importing httpx alone costs more
than the whole `lattice-ctl ping` budget (150 ms). One request per connection
(``Connection: close``), JSON in and out.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lattice_protocol import __version__ as CLI_VERSION

START_HINT = "lattice-ctl daemon start"
NOT_RUNNING_MESSAGE = f"The Lattice daemon is not running. Start it with: {START_HINT}"
VERSION_HEADER = "lattice-daemon-version"
_MAX_ANSWER_BYTES = 4 * 1024 * 1024  # far above any real answer; stops a runaway peer


class ControlError(Exception):
    """Talking to the daemon failed; ``str(exc)`` is a one-line reason for people."""

    code = "control_error"


class DaemonNotRunning(ControlError):
    code = "daemon_not_running"

    def __init__(self, socket_path: Path | None = None) -> None:
        super().__init__(NOT_RUNNING_MESSAGE)
        self.socket_path = socket_path


class DaemonPermissionDenied(ControlError):
    code = "permission_denied"


class DaemonBadAnswer(ControlError):
    """The socket answered something that is not the control API (or nothing in time)."""

    code = "bad_answer"


class DaemonApiError(ControlError):
    """The daemon answered with its error envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def daemon_version(self) -> str | None:
        value = self.headers.get(VERSION_HEADER) or self.body.get("daemonVersion")
        return str(value) if value else None


def default_socket_path() -> Path:
    from lattice_daemon.shared import get_paths

    return get_paths().socket


class ControlClient:
    """Requests to the daemon over its Unix socket; every call has a deadline."""

    def __init__(self, socket_path: str | Path | None = None, timeout: float = 5.0) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.timeout = timeout

    # -- the API ------------------------------------------------------------------------
    def ping(self) -> Answer:
        return self.request("GET", "/v1/ping")

    def status(self) -> Answer:
        return self.request("GET", "/v1/status")

    def reload(self, timeout: float = 15.0) -> Answer:
        return self.request("POST", "/v1/reload", {}, timeout=timeout)

    def relay_disconnect(self, timeout: float = 15.0) -> Answer:
        return self.request("POST", "/v1/relay/disconnect", {}, timeout=timeout)

    def shutdown(self) -> Answer:
        return self.request("POST", "/v1/shutdown", {})

    def activity(self, **params: str) -> Answer:
        """GET /v1/activity with ``since``, ``app``, ``limit`` (None values left out)."""
        from urllib.parse import urlencode

        query = urlencode({name: value for name, value in params.items() if value})
        return self.request("GET", "/v1/activity" + (f"?{query}" if query else ""))

    def live(self) -> Answer:
        return self.request("GET", "/v1/live")

    # -- transport ----------------------------------------------------------------------
    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                timeout: float | None = None) -> Answer:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        payload = b"" if body is None else json.dumps(body).encode("utf-8")
        head = (f"{method} {path} HTTP/1.1\r\nHost: lattice-daemon\r\n"
                f"User-Agent: lattice-ctl/{CLI_VERSION}\r\nAccept: application/json\r\n"
                f"Connection: close\r\nContent-Length: {len(payload)}\r\n")
        if body is not None:
            head += "Content-Type: application/json\r\n"
        raw = self._exchange(head.encode("ascii") + b"\r\n" + payload, deadline)
        answer = parse_answer(raw)
        if answer.status >= 400:
            error = answer.body.get("error") if isinstance(answer.body, dict) else None
            if isinstance(error, dict):
                raise DaemonApiError(answer.status, str(error.get("code") or "error"),
                                     str(error.get("message") or f"HTTP {answer.status}"))
            raise DaemonApiError(answer.status, "error",
                                 f"the daemon answered HTTP {answer.status}")
        return answer

    def _exchange(self, request: bytes, deadline: float) -> bytes:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                sock.connect(os.fspath(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
                raise DaemonNotRunning(self.socket_path) from None
            except PermissionError:
                raise DaemonPermissionDenied(
                    f"Permission denied on the daemon's socket {self.socket_path}: "
                    "run lattice-ctl as the user that runs the daemon") from None
            except OSError as exc:
                if exc.errno in (111, 2, 61):  # ECONNREFUSED/ENOENT on odd platforms
                    raise DaemonNotRunning(self.socket_path) from None
                raise ControlError(f"cannot reach the daemon at {self.socket_path}: "
                                   f"{exc.strerror or exc}") from None
            sock.sendall(request)
            chunks: list[bytes] = []
            size = 0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
                if size > _MAX_ANSWER_BYTES:
                    raise DaemonBadAnswer("the daemon's answer is too large")
                if _complete(b"".join(chunks)):
                    break
            return b"".join(chunks)
        except TimeoutError:
            raise DaemonBadAnswer(
                f"the daemon did not answer in time on {self.socket_path}") from None
        except (ConnectionResetError, BrokenPipeError):
            raise DaemonBadAnswer("the daemon closed the connection without answering") from None
        finally:
            sock.close()


def _complete(raw: bytes) -> bool:
    """True once a Content-Length answer is fully read (saves waiting for the close)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return False
    for line in raw[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return len(raw) - end - 4 >= int(value.strip())
            except ValueError:
                return False
    return False


def parse_answer(raw: bytes) -> Answer:
    """Parse one HTTP/1.1 answer with a JSON body; anything else is DaemonBadAnswer."""
    end = raw.find(b"\r\n\r\n")
    if not raw.startswith(b"HTTP/1.") or end < 0:
        raise DaemonBadAnswer("the socket did not answer like the Lattice daemon "
                              "(not an HTTP answer)")
    lines = raw[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        raise DaemonBadAnswer("the daemon sent a malformed status line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = raw[end + 4:]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        try:
            body = body[:int(headers["content-length"])]
        except ValueError:
            raise DaemonBadAnswer("the daemon sent a malformed Content-Length") from None
    parsed: Any = {}
    if body.strip():
        try:
            parsed = json.loads(body)
        except ValueError:
            raise DaemonBadAnswer("the daemon's answer is not JSON") from None
    if not isinstance(parsed, dict):
        raise DaemonBadAnswer("the daemon's answer is not a JSON object")
    return Answer(status, headers, parsed)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise DaemonBadAnswer("the daemon sent a malformed chunked body") from None
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)


def version_mismatch(answer: Answer) -> str | None:
    """A warning text when the daemon's version differs from this CLI's, else None."""
    daemon_version = answer.daemon_version
    if daemon_version and daemon_version != CLI_VERSION:
        return (f"the daemon runs version {daemon_version} but lattice-ctl is "
                f"{CLI_VERSION}; restart it with: lattice-ctl daemon restart")
    return None
