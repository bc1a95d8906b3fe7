"""HTTP transports for the daemon's clients.

Two measured problems, two small fixes (benchmarks/README.md has the numbers):

* Every httpx transport builds an SSL context with the full CA bundle, ~1 MB of the
  daemon's 30 MB idle budget (SPEC §7) each, even for a provider at
  ``http://localhost``. For plain-http URLs the transports get a context that verifies
  strictly but trusts no CA: never used, and failing closed if TLS were ever tried.
* httpcore's connection pool costs grow with the number of connections it juggles: one
  pool serving 32 concurrent requests to the instant test server manages ~380 req/s at
  ~50 ms p50, while 8 pools of 4 manage several times that. Local (plain-http)
  providers get ``fasthttp.FastHTTPTransport``; https providers get
  ``ShardedTransport``, which spreads requests over a few httpcore pools, always onto
  the least busy one.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import AsyncIterator

import httpx

from .fasthttp import FastHTTPTransport

MAX_SHARDS = 16
CONNECTIONS_PER_SHARD = 4


def _unused_tls_context() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname


_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


def tls_verification(url: str) -> ssl.SSLContext | bool:
    """``verify`` for a client that must honour proxy variables (so: no custom
    transport): the lean context for a plain-http URL without a proxy, else httpx's
    default (the CA bundle, or SSL_CERT_FILE)."""
    proxied = any(os.environ.get(name) or os.environ.get(name.lower())
                  for name in _PROXY_VARIABLES)
    if url.lower().startswith("http://") and not proxied:
        return _unused_tls_context()
    return True


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
    verify = ssl.create_default_context()
    import certifi  # httpx's own CA bundle, as its default transport would use

    verify.load_verify_locations(certifi.where())
    return ShardedTransport(shards, verify=verify)
