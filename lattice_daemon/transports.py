"""HTTP transports for the daemon's clients.

Two measured problems, two small fixes (benchmarks/README.md has the numbers):

* Every httpx transport builds an SSL context with the full CA bundle, ~1 MB of the
  daemon's 30 MB idle budget (benchmarks/README.md) each, even for a provider at
  ``http://localhost``. Plain-http URLs get no CA bundle at all.
* httpx's stack (httpcore's pool, anyio, h11) is most of the daemon's CPU per job, and
  httpcore's pool collapses with many concurrent connections: one pool serving 32
  concurrent requests to the instant test server manages ~380 req/s at ~50 ms p50,
  while 8 pools of 4 manage several times that. Local (plain-http) providers use
  ``fasthttp.FastHTTPTransport``; https providers get ``ShardedTransport``, which
  spreads requests over a few httpcore pools, always onto the least busy one.

The relay is not here: its traffic crosses the Internet to a gateway the design does
not trust, so it goes through httpx's own transport (relay.py), proxies and
SSL_CERT_FILE honoured by httpx itself.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator

import httpx

from .fasthttp import FastHTTPTransport

MAX_SHARDS = 16
CONNECTIONS_PER_SHARD = 4


def _unused_tls_context() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname


class _CountedStream(httpx.AsyncByteStream):
    """A response body that tells its shard when it is done."""

    def __init__(self, inner: httpx.AsyncByteStream, shard: _Shard) -> None:
        self._inner = inner
        self._shard = shard
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._shard.active -= 1
        await self._inner.aclose()


class _Shard:
    __slots__ = ("active", "transport")

    def __init__(self, transport: httpx.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.active = 0


class ShardedTransport(httpx.AsyncBaseTransport):
    """Requests spread over ``shards`` independent connection pools (least busy first)."""

    def __init__(self, shards: int, *, verify: ssl.SSLContext,
                 keepalive_per_shard: int = CONNECTIONS_PER_SHARD) -> None:
        limits = httpx.Limits(max_connections=None,
                              max_keepalive_connections=keepalive_per_shard)
        self._shards = [_Shard(httpx.AsyncHTTPTransport(verify=verify, limits=limits))
                        for _ in range(max(1, shards))]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        shard = min(self._shards, key=lambda s: s.active)
        shard.active += 1
        try:
            response = await shard.transport.handle_async_request(request)
        except BaseException:
            shard.active -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CountedStream(response.stream, shard)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.transport.aclose()


def provider_transport(url: str, max_concurrency: int) -> httpx.AsyncBaseTransport:
    """The provider client's transport, sized for ``max_concurrency`` jobs.

    Plain http (every local provider): ``FastHTTPTransport``. https (a remote
    OpenAI-compatible server): httpcore pools, sharded, sharing one CA-bundle context.
    """
    if url.lower().startswith("http://"):
        return FastHTTPTransport(max_idle_per_host=max(8, max_concurrency))
    shards = min(MAX_SHARDS, max(1, math.ceil(max_concurrency / CONNECTIONS_PER_SHARD)))
    # httpx's own CA set-up (SSL_CERT_FILE / SSL_CERT_DIR, else certifi), built once.
    return ShardedTransport(shards, verify=httpx.create_ssl_context())
