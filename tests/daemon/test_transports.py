"""The daemon's provider transports (FastHTTPTransport, ShardedTransport) under the real
provider adapters and test servers, and the daemon's replay guard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from lattice_daemon.fasthttp import FastHTTPTransport
from lattice_daemon.transports import ShardedTransport, _unused_tls_context, relay_transport
from providers import Provider, ProviderError, make_provider
from tests.servers import run_ollama_server, run_openai_server
from tests.support.net import async_wait_until, free_port

REQUEST = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


async def collect(stream: AsyncIterator[dict[str, Any]]) -> str:
    text = ""
    async for chunk in stream:
        for choice in chunk.get("choices", []):
            text += choice.get("delta", {}).get("content") or ""
    return text


@pytest.fixture(params=["ollama", "openai"])
def server_and_provider(request: pytest.FixtureRequest) -> Any:
    run = run_ollama_server if request.param == "ollama" else run_openai_server
    with run(models=["m1"], reply="one two three") as server:
        provider = make_provider(request.param, server.url, first_token_timeout=2,
                                 idle_timeout=2, transport=FastHTTPTransport())
        yield server, provider


async def test_chat_and_stream_reuse_one_connection(server_and_provider: Any) -> None:
    server, provider = server_and_provider
    try:
        completion = await provider.chat(dict(REQUEST))
        assert completion["choices"][0]["message"]["content"] == "one two three"
        assert (await collect(provider.stream({**REQUEST, "stream": True}))).strip() \
            == "one two three"
        assert (await provider.chat(dict(REQUEST)))["choices"][0]["message"]["content"]
        assert server.stats()["connections_opened"] == 1  # keep-alive worked
        assert (await provider.health()).ok
    finally:
        await provider.aclose()


async def test_provider_errors_keep_the_providers_message(server_and_provider: Any) -> None:
    server, provider = server_and_provider
    try:
        with pytest.raises(ProviderError) as missing:
            await provider.chat({**REQUEST, "model": "nope"})
        assert missing.value.reason == "model_not_found" and missing.value.status == 404
        assert provider.display_name in missing.value.message
        server.configure(error="busy")
        with pytest.raises(ProviderError) as busy:
            await provider.chat(dict(REQUEST))
        assert busy.value.reason == "busy"
        server.configure(error=None)
        assert await provider.chat(dict(REQUEST))  # the connection is still good
    finally:
        await provider.aclose()


async def test_dropped_connection_mid_stream_is_a_stream_error(server_and_provider: Any
                                                               ) -> None:
    server, provider = server_and_provider
    server.configure(drop_after=1)
    try:
        with pytest.raises(ProviderError) as dropped:
            await collect(provider.stream({**REQUEST, "stream": True}))
        assert dropped.value.reason == "stream_error"
        server.configure(drop_after=None)
        assert await provider.chat(dict(REQUEST))  # a fresh connection is opened
    finally:
        await provider.aclose()


async def test_closing_a_stream_early_aborts_it_at_the_provider() -> None:
    with run_ollama_server(models=["m1"], chunks=["x"] * 100, chunk_delay=0.05) as server:
        provider = make_provider("ollama", server.url, transport=FastHTTPTransport())
        try:
            stream = provider.stream({**REQUEST, "stream": True})
            await anext(aiter(stream))
            await stream.aclose()  # type: ignore[attr-defined]

            async def aborted() -> bool:
                return server.stats()["aborts"] == 1

            await async_wait_until(aborted, timeout=3, what="server-side abort")
            server.configure(chunks=None, chunk_delay=0)
            assert await provider.chat(dict(REQUEST))
            assert server.stats()["connections_opened"] == 2  # the aborted one was not reused
        finally:
            await provider.aclose()


async def test_first_token_deadline_and_unreachable() -> None:
    with run_openai_server(models=["m1"], first_byte_delay=2) as server:
        provider = make_provider("openai", server.url, first_token_timeout=0.2,
                                 transport=FastHTTPTransport())
        try:
            with pytest.raises(ProviderError) as slow:
                await provider.chat(dict(REQUEST))
            assert slow.value.reason == "timeout"
        finally:
            await provider.aclose()
    nobody = make_provider("ollama", f"http://127.0.0.1:{free_port()}",
                           transport=FastHTTPTransport())
    try:
        with pytest.raises(ProviderError) as down:
            await nobody.chat(dict(REQUEST))
        assert down.value.reason == "unreachable"
    finally:
        await nobody.aclose()


async def test_connection_close_and_read_until_close_bodies() -> None:
    """A server that answers without a length and closes: the body is what came before
    the close, and the next request opens a new connection."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                     b"\r\nhello ")
        await writer.drain()
        writer.write(b"world")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, httpx.AsyncClient(transport=FastHTTPTransport()) as client:
        for _ in range(2):
            response = await client.get(f"http://127.0.0.1:{port}/")
            assert response.status_code == 200 and response.text == "hello world"
        assert connections == 2


async def test_https_is_refused_by_the_fast_transport() -> None:
    async with httpx.AsyncClient(transport=FastHTTPTransport()) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("https://127.0.0.1:1/")


async def test_sharded_transport_spreads_concurrent_streams() -> None:
    with run_openai_server(models=["m1"], chunks=["x"] * 50, chunk_delay=0.05) as server:
        transport = ShardedTransport(4, verify=_unused_tls_context())
        provider: Provider = make_provider("openai", server.url, transport=transport)
        try:
            streams = [provider.stream({**REQUEST, "stream": True}) for _ in range(4)]
            for stream in streams:
                await anext(aiter(stream))
            assert [shard.active for shard in transport._shards] == [1, 1, 1, 1]
            for stream in streams:
                await stream.aclose()  # type: ignore[attr-defined]
            assert [shard.active for shard in transport._shards] == [0, 0, 0, 0]
            server.configure(chunks=None, chunk_delay=0)
            assert (await provider.chat(dict(REQUEST)))["choices"]
        finally:
            await provider.aclose()


def test_relay_transport_is_fast_unless_a_proxy_is_configured(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(relay_transport("http://127.0.0.1:1"), FastHTTPTransport)
    assert isinstance(relay_transport("https://gateway.example"), FastHTTPTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert relay_transport("https://gateway.example") is None  # httpx handles proxies


async def test_read_and_connect_timeouts_are_enforced() -> None:
    """The relay relies on hard timeouts: a gateway that accepts and never answers."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client goes away
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, httpx.AsyncClient(transport=FastHTTPTransport(),
                                         timeout=httpx.Timeout(0.2)) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"http://127.0.0.1:{port}/v1/relay/sessions", json={})
        assert time.monotonic() - started < 2
