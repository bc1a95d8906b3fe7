"""The daemon's provider transports (FastHTTPTransport, ShardedTransport) under the real
provider adapters and test servers, and FastHTTPTransport against servers that bend
HTTP/1.x (interim answers, HTTP/1.0, malformed chunked bodies, closes at any point)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from lattice_daemon.fasthttp import FastHTTPTransport
from lattice_daemon.transports import ShardedTransport, _unused_tls_context
from providers import Provider, ProviderError, make_provider
from tests.servers import run_ollama_server, run_openai_server
from tests.support.net import async_wait_until, closed_port

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
    nobody = make_provider("ollama", f"http://127.0.0.1:{closed_port()}",
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


async def test_a_server_that_closes_after_every_answer_fails_no_request(
        server_and_provider: Any) -> None:
    """A model server that ends each keep-alive connection unannounced (an idle timeout, a
    restart): every chat still succeeds, and none reaches the server twice."""
    server, provider = server_and_provider
    server.configure(close_after_response=True)
    try:
        for _ in range(15):
            completion = await provider.chat(dict(REQUEST))
            assert completion["choices"][0]["message"]["content"] == "one two three"
            streamed = await collect(provider.stream({**REQUEST, "stream": True}))
            assert streamed.strip() == "one two three"
        # The server counts an answer completed just after its last byte: the client may
        # have read it a moment before.
        async def all_completed() -> bool:
            return bool(server.stats()["completed"] == 30)

        await async_wait_until(all_completed, timeout=5, what="the server to finish 30 answers")
        stats = server.stats()
        assert stats["request_count"] == 30  # none reached the server twice
        assert stats["connections_opened"] == 30  # each answer ended its connection
    finally:
        await provider.aclose()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Answer = Callable[[int, int], "tuple[bytes, bool] | None"]


class ScriptedServer:
    """Answers request ``i`` of connection ``c`` with ``answer(c, i)``: ``(bytes,
    close_after)``, or None to close without a byte. Counts what it saw."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        connection, self.connections = self.connections, self.connections + 1
        try:
            for index in range(1000):
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                self.requests += 1
                answer = self.answer(connection, index)
                if answer is None:
                    return
                writer.write(answer[0])
                await writer.drain()
                if answer[1]:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_reused_connection_that_dies_before_its_answer_is_retried_once() -> None:
    """The server takes the next request on a kept-alive connection and closes without a
    byte: the request is sent again on a new connection, and succeeds."""
    async with ScriptedServer(lambda c, i: (OK, False) if i == 0 else None) as server, \
            httpx.AsyncClient(transport=FastHTTPTransport()) as client:
        for _ in range(5):
            assert (await client.post(server.url, content=b"{}")).text == "ok"
        assert server.connections == 5 and server.requests == 9


async def test_a_request_is_never_sent_again_after_a_byte_of_its_answer() -> None:
    def answer(connection: int, index: int) -> tuple[bytes, bool]:
        return (OK, False) if index == 0 else (b"HTTP/1.1 200 OK\r\n", True)

    async with ScriptedServer(answer) as server, \
            httpx.AsyncClient(transport=FastHTTPTransport()) as client:
        assert (await client.post(server.url, content=b"{}")).text == "ok"
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url, content=b"{}")
        assert server.requests == 2 and server.connections == 1


async def test_a_fresh_connection_closed_early_is_an_error_not_a_retry() -> None:
    for partial in (b"", b"HTTP/1.1 200 OK\r\nContent-Le",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"):
        async with ScriptedServer(lambda c, i, partial=partial: (partial, True)) as server, \
                httpx.AsyncClient(transport=FastHTTPTransport()) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(server.url)
            assert server.requests == 1


async def test_interim_answers_are_skipped() -> None:
    interim = (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
               b"HTTP/1.1 100 Continue\r\n\r\n")
    async with ScriptedServer(lambda c, i: (interim + OK, False)) as server, \
            httpx.AsyncClient(transport=FastHTTPTransport()) as client:
        for _ in range(2):
            response = await client.get(server.url)
            assert response.status_code == 200 and response.text == "ok"
        assert server.connections == 1


@pytest.mark.parametrize(("head", "reused"), [
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\n",
     False),
])
async def test_keep_alive_follows_the_answers_http_version(head: bytes, reused: bool) -> None:
    async with ScriptedServer(lambda c, i: (head + b"ok", False)) as server, \
            httpx.AsyncClient(transport=FastHTTPTransport()) as client:
        for _ in range(2):
            assert (await client.get(server.url)).text == "ok"
        assert server.connections == (1 if reused else 2)


@pytest.mark.parametrize("body", [
    b"zz\r\nab\r\n0\r\n\r\n",  # not a hex size
    b"0x2\r\nab\r\n0\r\n\r\n",  # a prefix int() would accept
    b"-2\r\nab\r\n0\r\n\r\n",
    b"2\r\nabXY0\r\n\r\n",  # chunk data not followed by CRLF
    b"5\r\nab",  # closed mid-chunk
])
async def test_malformed_chunked_bodies_are_protocol_errors(body: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with ScriptedServer(lambda c, i: (head + body, True)) as server, \
            httpx.AsyncClient(transport=FastHTTPTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.url)
