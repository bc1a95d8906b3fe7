"""`https://` against a plain-http gateway, and `http://` against a TLS one: `relay
connect` and `doctor` (real `lattice-ctl` processes) say so in one line, and the
bootstrap token is not used up."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.ctl.test_doctor import by_name, write_config
from tests.daemon.test_relay_network import _self_signed_certificate
from tests.e2e.harness import create_runtime, ctl, mint_bootstrap
from tests.support.gateway import run_gateway
from tests.support.net import closed_port

PROVIDER = ("--provider", "ollama", "--provider-url", "http://127.0.0.1:9")


@contextmanager
def tls_server(directory: Path) -> Iterator[int]:
    """A TLS endpoint on a loopback port: completes handshakes, then closes."""
    cert, key = _self_signed_certificate(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1024)
            except OSError:  # a plain-HTTP client: the handshake fails
                connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_https_against_a_plain_http_gateway(lattice_home: Path, tmp_path: Path) -> None:
    with run_gateway(tmp_path / "gw") as gateway:
        key = gateway.create_key("scheme")
        runtime = create_runtime(gateway.url, key)
        token = mint_bootstrap(gateway.url, key, runtime["latticeId"])["bootstrapToken"]
        wrong = gateway.url.replace("http://", "https://")
        done = ctl(lattice_home, "relay", "connect", "--gateway", wrong,
                   "--bootstrap-token", token, *PROVIDER)
        assert done.returncode == 1
        assert (f"{wrong} answered in plain HTTP, not HTTPS: if this gateway serves plain "
                f"HTTP, use {gateway.url}") in done.stderr
        assert "WRONG_VERSION_NUMBER" not in done.stderr and "SSL" not in done.stderr
        paired = ctl(lattice_home, "relay", "connect", "--gateway", gateway.url,
                     "--bootstrap-token", token, *PROVIDER)
        assert paired.returncode == 0, paired.stderr  # the token was not used up

        write_config(gateway=wrong, provider_url=f"http://127.0.0.1:{closed_port()}")
        report = json.loads(ctl(lattice_home, "--json", "doctor", "--timeout", "2").stdout)
        check = by_name(report)["gateway"]
        assert check["status"] == "fail"
        assert "answered in plain HTTP, not HTTPS" in check["detail"]
        assert "WRONG_VERSION_NUMBER" not in check["detail"]


def test_plain_http_against_a_tls_gateway(lattice_home: Path, tmp_path: Path) -> None:
    with tls_server(tmp_path) as port:
        url = f"http://127.0.0.1:{port}"
        done = ctl(lattice_home, "relay", "connect", "--gateway", url,
                   "--bootstrap-token", "plrt_v1_" + "S" * 43, *PROVIDER)
        assert done.returncode == 1
        assert (f"{url} expects HTTPS, not plain HTTP: use https://127.0.0.1:{port}"
                in done.stderr)

        write_config(gateway=url, provider_url=f"http://127.0.0.1:{closed_port()}")
        report = json.loads(ctl(lattice_home, "--json", "doctor", "--timeout", "2").stdout)
        check = by_name(report)["gateway"]
        assert check["status"] == "fail" and "expects HTTPS" in check["detail"]


def test_doctor_asks_no_https_of_a_plain_http_gateway(lattice_home: Path) -> None:
    gateway = f"http://127.0.0.1:{closed_port()}"
    write_config(gateway=gateway, provider_url=f"http://127.0.0.1:{closed_port()}")
    report = json.loads(ctl(lattice_home, "--json", "doctor", "--timeout", "1").stdout)
    check = by_name(report)["gateway"]
    assert check["status"] == "fail"
    assert "HTTPS" not in check["fix"] and f"{gateway} must be reachable" in check["fix"]
