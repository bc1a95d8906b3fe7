"""The relay connection in its network environment: HTTP(S)_PROXY / NO_PROXY are honoured,
TLS is verified (SSL_CERT_FILE), and the provider never uses a proxy."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lattice_daemon.config import DaemonConfig, DaemonSettings, ProviderConfig
from lattice_daemon.daemon import build_provider
from lattice_daemon.relay import RelayApi, RelayError
from tests.servers import run_ollama_server

TOKEN = "lrdt_v1_" + "p" * 43


class RecordingProxy:
    """Answers every request itself and remembers its request line."""

    def __init__(self) -> None:
        self.request_lines: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.request_lines.append(head.split(b"\r\n", 1)[0].decode())
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))
        body = b'{"sessionId": "s1", "pollWindowSeconds": 5}'
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RecordingProxy]:
    server = RecordingProxy()
    await server.start()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv("NO_PROXY", "")
    yield server
    await server.close()


async def test_relay_goes_through_the_proxy_from_the_environment(proxy: RecordingProxy
                                                                 ) -> None:
    api = RelayApi("http://gateway.example", TOKEN)
    try:
        session = await api.register({"daemonVersion": "t", "provider": {}})
    finally:
        await api.aclose()
    assert session.session_id == "s1"
    assert proxy.request_lines == ["POST http://gateway.example/v1/relay/sessions HTTP/1.1"]


async def test_no_proxy_is_honoured(proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
                                    ) -> None:
    monkeypatch.setenv("NO_PROXY", "gateway.example")
    api = RelayApi("http://gateway.example:9", TOKEN)
    try:
        with pytest.raises(Exception, match="gateway unreachable"):
            await api.register({"daemonVersion": "t", "provider": {}})
    finally:
        await api.aclose()
    assert proxy.request_lines == []  # went direct (and found nobody)


async def test_provider_never_uses_the_proxy(proxy: RecordingProxy, lattice_home: Path) -> None:
    with run_ollama_server(models=["m1"]) as server:
        config = DaemonConfig(provider=ProviderConfig(kind="ollama", url=server.url),
                              daemon=DaemonSettings())
        provider = build_provider(config)
        try:
            health = await provider.health()
            completion = await provider.chat({"model": "m1", "messages": [
                {"role": "user", "content": "hi"}]})
        finally:
            await provider.aclose()
    assert health.ok and completion["choices"][0]["message"]["content"]
    assert proxy.request_lines == []


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return cert, key


async def test_relay_over_tls_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    cert, key = _self_signed_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    gateway = RecordingProxy()  # answers like a relay; here it is the TLS endpoint
    server = await asyncio.start_server(gateway._handle, "127.0.0.1", 0, ssl=server_context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        untrusted = RelayApi(url, TOKEN)  # the default CA bundle does not know this cert
        try:
            with pytest.raises(RelayError, match=r"(?i)certificate"):
                await untrusted.register({"daemonVersion": "t", "provider": {}})
        finally:
            await untrusted.aclose()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusted = RelayApi(url, TOKEN)
        try:
            session = await trusted.register({"daemonVersion": "t", "provider": {}})
        finally:
            await trusted.aclose()
    assert session.session_id == "s1"
    assert gateway.request_lines == ["POST /v1/relay/sessions HTTP/1.1"]
