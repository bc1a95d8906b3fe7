"""The fault proxy itself, against an echo server: each mode does what the scenarios
rely on (a test tool that silently forwarded everything would prove nothing)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.faultproxy import FaultProxy, run_fault_proxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with run_fault_proxy(server.server_address[1]) as made:
        yield made
    server.shutdown()
    server.server_close()


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.sendall(b"ping")
    assert sock.recv(16) == b"ping"  # forwarding both ways
    return sock


def test_drop_closes_with_fin(proxy: FaultProxy) -> None:
    sock = connect(proxy)
    proxy.drop()
    assert sock.recv(16) == b""  # an orderly end of stream
    connect(proxy).close()  # new connections forward again


def test_reset_sends_rst(proxy: FaultProxy) -> None:
    sock = connect(proxy)
    proxy.reset()
    with pytest.raises(ConnectionResetError):
        sock.recv(16)


def test_half_open_holds_one_direction_until_healed(proxy: FaultProxy) -> None:
    sock = connect(proxy)
    proxy.half_open("down")
    sock.sendall(b"held")
    with pytest.raises(TimeoutError):
        sock.settimeout(0.3)
        sock.recv(16)
    proxy.heal()
    sock.settimeout(2)
    assert sock.recv(16) == b"held"


def test_blackhole_accepts_and_never_answers(proxy: FaultProxy) -> None:
    proxy.blackhole()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=0.3)
    sock.sendall(b"anyone?")
    with pytest.raises(TimeoutError):
        sock.recv(16)


def test_delay_holds_each_piece(proxy: FaultProxy) -> None:
    sock = connect(proxy)
    proxy.delay(0.2)
    started = time.monotonic()
    sock.sendall(b"slow")
    assert sock.recv(16) == b"slow"
    assert time.monotonic() - started >= 0.4  # held on the way up and on the way down
