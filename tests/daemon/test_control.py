"""The control API's HTTP server: answers, refusals, and robustness against bad clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lattice_daemon.control import ControlRefusal, ControlServer, SocketInUse
from lattice_daemon.paths import get_paths
from lattice_protocol import __version__


class StubBackend:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def ping(self) -> dict[str, Any]:
        self.calls.append("ping")
        return {"pid": os.getpid()}

    async def status(self) -> dict[str, Any]:
        self.calls.append("status")
        return {"pid": os.getpid(), "jobs": {}}

    async def reload(self) -> dict[str, Any]:
        self.calls.append("reload")
        raise ControlRefusal(400, "config_error", "daemon.toml: bad")

    async def disconnect(self) -> dict[str, Any]:
        self.calls.append("disconnect")
        return {"ok": True}

    async def shutdown(self) -> dict[str, Any]:
        self.calls.append("shutdown")
        return {"ok": True}

    async def activity(self, query: dict[str, str]) -> dict[str, Any]:
        self.calls.append("activity")
        if query.get("since") == "bad":
            raise ControlRefusal(400, "invalid_query", "since: bad")
        return {"query": query}

    async def live(self) -> dict[str, Any]:
        self.calls.append("live")
        return {"running": []}

    async def controls_state(self) -> dict[str, Any]:
        self.calls.append("controls")
        return {"paused": None}

    async def pause(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("pause")
        return {"paused": {"reason": "owner", "until": None}, "body": body}

    async def resume(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("resume")
        return {"paused": None}

    async def patch_limits(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("limits")
        return {"limits": body}


async def exchange(path: Path, data: bytes, *, eof: bool = True) -> tuple[int, dict[str, str],
                                                                           Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        await writer.drain()
        if eof:
            writer.write_eof()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: lattice-daemon", *headers]
    if body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
async def server(lattice_home: Path) -> AsyncIterator[tuple[ControlServer, StubBackend]]:
    backend = StubBackend()
    control = ControlServer(get_paths().socket, backend, read_timeout=0.3)
    await control.start()
    yield control, backend
    await control.close()


async def test_ping_carries_the_daemon_version(server: tuple[ControlServer, StubBackend]
                                               ) -> None:
    control, _ = server
    status, headers, body = await exchange(control.socket_path, request("GET", "/v1/ping"))
    assert status == 200
    assert headers["lattice-daemon-version"] == __version__
    assert body == {"pid": os.getpid(), "daemonVersion": __version__}


async def test_every_route_answers_with_the_version(server: tuple[ControlServer, StubBackend]
                                                    ) -> None:
    control, backend = server
    for method, path in [("GET", "/v1/status"), ("POST", "/v1/relay/disconnect"),
                         ("POST", "/v1/shutdown")]:
        status, headers, body = await exchange(control.socket_path, request(method, path))
        assert status == 200 and body["daemonVersion"] == __version__
        assert headers["lattice-daemon-version"] == __version__
    assert backend.calls == ["status", "disconnect", "shutdown"]


async def test_handler_errors_use_the_error_envelope(server: tuple[ControlServer, StubBackend]
                                                     ) -> None:
    control, _ = server
    status, headers, body = await exchange(control.socket_path, request("POST", "/v1/reload"))
    assert status == 400
    assert body["error"] == {"message": "daemon.toml: bad", "code": "config_error"}
    assert headers["lattice-daemon-version"] == __version__


@pytest.mark.parametrize("header", ["Origin: http://evil.example", "Referer: http://evil.example/",
                                    "Sec-Fetch-Site: cross-site"])
async def test_browser_requests_are_refused(server: tuple[ControlServer, StubBackend],
                                            header: str) -> None:
    control, backend = server
    status, _, body = await exchange(control.socket_path, request("POST", "/v1/shutdown", header))
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert backend.calls == []  # the handler never ran


async def test_unknown_path_and_wrong_method(server: tuple[ControlServer, StubBackend]) -> None:
    control, _ = server
    status, _, body = await exchange(control.socket_path, request("GET", "/v1/nope"))
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _, body = await exchange(control.socket_path, request("GET", "/v1/shutdown"))
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


async def test_garbage_is_refused_and_the_server_keeps_serving(
        server: tuple[ControlServer, StubBackend]) -> None:
    control, _ = server
    status, _, body = await exchange(control.socket_path, b"\x00\xff\x13garbage\r\n\r\n")
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, _, _ = await exchange(control.socket_path, os.urandom(3000))  # no blank line, EOF
    assert status == 400
    assert (await exchange(control.socket_path, request("GET", "/v1/ping")))[0] == 200


async def test_oversized_request_is_refused(server: tuple[ControlServer, StubBackend]) -> None:
    control, _ = server
    huge = request("POST", "/v1/reload", body=b"x" * (70 * 1024))
    status, _, body = await exchange(control.socket_path, huge)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    big_headers = request("GET", "/v1/ping", *[f"X-Pad-{i}: {'y' * 1000}" for i in range(80)])
    status, _, _ = await exchange(control.socket_path, big_headers)
    assert status == 413
    assert (await exchange(control.socket_path, request("GET", "/v1/ping")))[0] == 200


async def test_half_sent_request_times_out_without_harm(
        server: tuple[ControlServer, StubBackend]) -> None:
    control, _ = server
    reader, writer = await asyncio.open_unix_connection(str(control.socket_path))
    writer.write(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n")  # never finished
    await writer.drain()
    # Meanwhile other clients are served.
    assert (await exchange(control.socket_path, request("GET", "/v1/ping")))[0] == 200
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 408")


async def test_socket_is_0600_in_a_0700_directory(server: tuple[ControlServer, StubBackend]
                                                  ) -> None:
    control, _ = server
    assert stat.S_IMODE(control.socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(control.socket_path.parent.stat().st_mode) == 0o700


async def test_stale_socket_file_is_replaced(lattice_home: Path) -> None:
    path = get_paths().socket
    path.parent.mkdir(parents=True, mode=0o700)
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays, nobody listens: what a crash leaves behind
    control = ControlServer(path, StubBackend())
    await control.start()
    try:
        assert (await exchange(path, request("GET", "/v1/ping")))[0] == 200
    finally:
        await control.close()
    assert not path.exists()  # removed on close


async def test_a_live_socket_is_never_taken_over(server: tuple[ControlServer, StubBackend]
                                                 ) -> None:
    control, _ = server
    with pytest.raises(SocketInUse):
        await ControlServer(control.socket_path, StubBackend()).start()
    assert (await exchange(control.socket_path, request("GET", "/v1/ping")))[0] == 200


async def test_query_strings_reach_the_routes_that_read_them(
        server: tuple[ControlServer, StubBackend]) -> None:
    control, backend = server
    status, _, body = await exchange(control.socket_path, request(
        "GET", "/v1/activity?since=24h&app=notes%20app&limit=5&app=chat-app"))
    assert status == 200
    assert body["query"] == {"since": "24h", "app": "chat-app", "limit": "5"}  # last wins
    status, _, body = await exchange(control.socket_path, request("GET", "/v1/activity?since=bad"))
    assert status == 400 and body["error"]["code"] == "invalid_query"
    # Routes without parameters ignore a query string, as before.
    status, _, body = await exchange(control.socket_path, request("GET", "/v1/live?x=1"))
    assert status == 200 and body["running"] == []
    assert backend.calls == ["activity", "activity", "live"]


async def test_a_malformed_query_is_refused_and_the_server_keeps_serving(
        server: tuple[ControlServer, StubBackend]) -> None:
    control, backend = server
    too_many = "&".join(f"k{i}=v" for i in range(40))
    for target in ("/v1/activity?app=%ff%fe", f"/v1/activity?{too_many}"):
        status, _, body = await exchange(control.socket_path, request("GET", target))
        assert status == 400 and body["error"]["code"] == "bad_request", target
    status, _, _ = await exchange(control.socket_path, request("GET", "/v1/ping"))
    assert status == 200
    assert backend.calls == ["ping"]


async def test_json_bodies_reach_the_routes_that_read_them(
        server: tuple[ControlServer, StubBackend]) -> None:
    control, backend = server
    status, _, body = await exchange(control.socket_path, request(
        "POST", "/v1/controls/pause", body=b'{"for": 60}'))
    assert status == 200 and body["body"] == {"for": 60}
    status, _, body = await exchange(control.socket_path, request("POST", "/v1/controls/pause"))
    assert status == 200 and body["body"] == {}  # an empty body reads as {}
    for garbage in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        status, _, body = await exchange(control.socket_path, request(
            "PATCH", "/v1/controls/limits", body=garbage))
        assert status == 400 and body["error"]["code"] == "bad_request", garbage
    status, _, body = await exchange(control.socket_path, request("GET", "/v1/controls/pause"))
    assert status == 405
    status, _, _ = await exchange(control.socket_path, request("GET", "/v1/controls"))
    assert status == 200
    assert backend.calls == ["pause", "pause", "controls"]
