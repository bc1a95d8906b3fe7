"""The gateway's front door against clients without credentials, over raw sockets to a
real ``lattice-gateway serve``: header size, header and body read timeouts, connection
caps, and requests the HTTP parser refuses. Every refusal is the JSON envelope and the
connection closes; a daemon's parked poll is not cut by the read timeouts."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.fake_daemon import FakeDaemon
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

READ_TIMEOUT = 0.5  # the gateway's header and body timeouts in these tests
ANSWER_DEADLINE = 10.0  # how long a test waits for any answer before failing


def connect(gw: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=ANSWER_DEADLINE)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of one answer that closes the connection; asserts
    the connection is closed after it."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), data[:200]
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    return int(lines[0].split()[1]), headers, body


def assert_envelope(status: int, headers: dict[str, str], body: bytes, expected_status: int,
                    code: str) -> dict[str, object]:
    assert status == expected_status, body
    assert headers["content-type"].startswith("application/json")
    assert headers.get("connection") == "close"
    error = json.loads(body)["error"]
    assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


def healthy_request() -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    with run_gateway(header_timeout_seconds=READ_TIMEOUT, body_timeout_seconds=READ_TIMEOUT,
                     poll_window_seconds=3) as gw:
        yield gw


def test_headers_over_the_limit_answer_431_and_close(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        # 40 KB of one header, never finished: before, the gateway buffered it all (and
        # 10 such connections x 40 MB took hundreds of MB).
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nx-pad: " + b"a" * 40_000)
        error = assert_envelope(*read_answer(sock), 431, "headers_too_large")
    assert "16384 bytes" in str(error["message"])
    assert httpx.get(gateway.url + "/healthz").status_code == 200  # still serving


def test_headers_dripping_in_time_out_with_408(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        started = time.monotonic()
        # One more header line every 0.1 s (a slowloris) does not keep it open.
        while not select.select([sock], [], [], 0.1)[0]:
            assert time.monotonic() - started < ANSWER_DEADLINE, "no answer"
            sock.sendall(b"x-drip: 1\r\n")
        assert_envelope(*read_answer(sock), 408, "request_timeout")


def test_an_idle_new_connection_times_out_with_408(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        # Not a byte sent: before, such connections stayed open until the fds ran out.
        status, headers, body = read_answer(sock)
    assert_envelope(status, headers, body, 408, "request_timeout")
    assert headers["x-should-retry"] == "true"


def test_a_body_dripping_in_times_out_with_408(gateway: GatewayProcess) -> None:
    key = gateway.create_key("acme")
    with connect(gateway) as sock:
        sock.sendall(b"POST /v1/personal-runtimes HTTP/1.1\r\nHost: gateway\r\n"
                     b"x-api-key: " + key.encode() + b"\r\ncontent-type: application/json\r\n"
                     b"content-length: 200\r\n\r\n{")
        started = time.monotonic()
        while not select.select([sock], [], [], 0.1)[0]:
            assert time.monotonic() - started < ANSWER_DEADLINE, "no answer"
            sock.sendall(b" ")
        error = assert_envelope(*read_answer(sock), 408, "request_timeout")
    assert "body" in str(error["message"])


@pytest.mark.parametrize(("header", "reason"), [
    (b"x-control: a\x01b", "header value"),
    (b"content-length: -1", "content-length"),
    (b"content-length: 99999999999999999999999999", "content-length"),
    (b"content-length: 3\r\ntransfer-encoding: chunked", "transfer-encoding"),
])
def test_requests_the_parser_refuses_answer_400_in_the_envelope(
        gateway: GatewayProcess, header: bytes, reason: str) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n" + header
                     + b"\r\n\r\nabc")
        error = assert_envelope(*read_answer(sock), 400, "invalid_request")
    assert reason in str(error["message"]).lower()


def test_connections_over_the_cap_get_a_fast_503_and_freed_room_serves_again() -> None:
    with run_gateway(max_connections=3) as gw:
        held = [connect(gw) for _ in range(3)]
        for sock in held:  # each is open and served (then idle, keep-alive)
            sock.sendall(healthy_request())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with connect(gw) as extra:
            extra.sendall(healthy_request())
            status, headers, body = read_answer(extra)
        error = assert_envelope(status, headers, body, 503, "service_unavailable")
        assert headers["x-should-retry"] == "true"
        assert "connection limit (3)" in str(error["message"])
        held.pop().close()

        def served() -> bool:
            with connect(gw) as sock:
                sock.sendall(healthy_request())
                return sock.recv(65536).startswith(b"HTTP/1.1 200")

        wait_until(served, timeout=5, what="a freed connection slot")
        for sock in held:
            sock.close()


def test_connections_per_address_over_the_limit_get_429() -> None:
    with run_gateway(max_connections_per_ip=2) as gw:
        held = [connect(gw) for _ in range(2)]
        for sock in held:
            sock.sendall(healthy_request())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with connect(gw) as extra:
            extra.sendall(healthy_request())
            assert_envelope(*read_answer(extra), 429, "rate_limited")
        for sock in held:
            sock.close()


async def test_a_parked_poll_outlives_the_read_timeouts(gateway: GatewayProcess) -> None:
    key = gateway.create_key("acme")
    async with httpx.AsyncClient(base_url=gateway.url, headers={"x-api-key": key},
                                 timeout=ANSWER_DEADLINE) as client:
        created = await client.post("/v1/personal-runtimes", json={
            "displayName": "laptop", "executionBackend": "local-model"})
        lattice_id = created.json()["runtime"]["latticeId"]
        minted = await client.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                                   json={})
    daemon = FakeDaemon(gateway.url)
    await daemon.redeem(minted.json()["bootstrapToken"])
    session = await daemon.register()
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=gateway.url, headers=daemon.headers,
                                 timeout=ANSWER_DEADLINE * 6) as client:
        polled = await client.post(f"/v1/relay/sessions/{session}/poll",
                                   json={"capacity": 1})
    held_for = time.monotonic() - started
    await daemon.close()
    # The poll window (3 s, as the gateway said) is far past both read timeouts:
    # the poll is answered normally at its window's end.
    assert polled.status_code == 200, polled.text
    assert polled.json() == {"jobs": [], "cancels": []}
    assert held_for >= daemon.poll_window - 0.5 > READ_TIMEOUT * 4


def test_an_upgrade_request_is_answered_as_plain_http(gateway: GatewayProcess) -> None:
    # The gateway has no WebSocket or h2c: such a request is served as HTTP/1.1.
    with connect(gateway) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        answer = b""
        while b'{"ok":true,' not in answer and (chunk := sock.recv(65536)):
            answer += chunk  # the head and the body may come in separate reads
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b'{"ok":true,' in answer
