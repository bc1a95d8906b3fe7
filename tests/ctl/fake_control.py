"""A stand-in for the daemon's control socket (docs/control-api.md), for CLI unit tests.

Serves canned JSON answers per "METHOD /path" from a thread; records what it was asked.
The real daemon is exercised by tests/e2e.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lattice_protocol._version import __version__

Route = tuple[int, dict[str, Any]]


def ping_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "daemonVersion": __version__,
        "pid": os.getpid(),
        "startedAt": "2026-01-01T00:00:00.000Z",
        "uptimeSeconds": 125.5,
        "relay": {"state": "connected", "since": "2026-01-01T00:00:01.000Z",
                  "gateway": "http://127.0.0.1:9", "lastPollAt": "2026-01-01T00:02:00.000Z",
                  "lastError": None},
        "provider": {"kind": "ollama", "url": "http://localhost:11434", "ok": True,
                     "detail": "running", "models": ["llama3.2", "qwen3"],
                     "defaultModel": "llama3.2"},
    }
    body.update(overrides)
    return body


def troubled_relay(state: str, last_error: str) -> dict[str, Any]:
    """The ``relay`` part of a ping for a relay that is not connected: no poll, an error."""
    return {"state": state, "since": "2026-01-01T00:00:01.000Z",
            "gateway": "http://127.0.0.1:9", "lastPollAt": None, "lastError": last_error}


def status_body(**overrides: Any) -> dict[str, Any]:
    body = ping_body()
    body.update({
        "runtime": {"latticeId": "rt_test", "displayName": "Test laptop",
                    "accountId": "acc_1", "executionBackend": "local-model"},
        "jobs": {"inFlight": 1, "served": 7, "failed": 2, "maxConcurrency": 4},
        "configFile": "/x/daemon.toml", "logFile": "/x/daemon.log",
    })
    body.update(overrides)
    return body


class FakeControlServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.routes: dict[str, Route | bytes] = {}
        self.requests: list[tuple[str, bytes]] = []
        self.version = __version__
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        # accept() wakes up every 50 ms to see the stop flag: closing a socket another
        # thread is blocked on is a race (the fd number can be reused by the next test).
        self._listener.settimeout(0.05)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer(self, route: str, status: int, body: dict[str, Any]) -> None:
        self.routes[route] = (status, body)

    def answer_raw(self, route: str, raw: bytes) -> None:
        self.routes[route] = raw

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    part = conn.recv(65536)
                    if not part:
                        break
                    data += part
                head = data.split(b"\r\n", 1)[0].decode("latin-1")
                method, path = [*head.split(" "), "", ""][:2]
                route = f"{method} {path}"
                self.requests.append((route, data))
                conn.sendall(self._render(self.routes.get(route)))

    def _render(self, route: Route | bytes | None) -> bytes:
        if isinstance(route, bytes):
            return route
        status, body = route or (404, {"error": {"message": "no such path",
                                                 "code": "not_found"}})
        payload = json.dumps(body).encode()
        return (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Lattice-Daemon-Version: {self.version}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
                ).encode() + payload

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._listener.close()
        self.path.unlink(missing_ok=True)


@contextmanager
def fake_daemon_socket(socket_path: Path) -> Iterator[FakeControlServer]:
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    server = FakeControlServer(socket_path)
    try:
        yield server
    finally:
        server.close()
