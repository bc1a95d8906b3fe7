"""``/readyz`` of a real gateway fails while its PostgreSQL or Redis is unreachable and
recovers with it; ``/healthz`` (liveness) stays 200 throughout. The gateway reaches both
through a forwarder the test can cut (every connection dropped, new ones refused)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import async_wait_until
from tests.support.redis_keys import redis_prefix

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

REDIS = ("127.0.0.1", 6379)


class Forwarder:
    """127.0.0.1:<port> -> ``target`` on its own event loop thread (the gateway's start
    blocks the test's loop), until ``cut()``; ``start()`` again listens on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def start(self) -> None:
        self._run(self._start())

    def cut(self) -> None:
        self._run(self._cut())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        copies = {asyncio.ensure_future(_copy(reader, up_writer)),
                  asyncio.ensure_future(_copy(up_reader, writer))}
        try:
            await asyncio.wait(copies, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for copy in copies:
                copy.cancel()
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2
                                     else host))


@pytest.fixture
def forwarded(postgres_url: str) -> Iterator[tuple[GatewayProcess, Forwarder, Forwarder]]:
    parts = urlsplit(postgres_url)
    database = Forwarder((parts.hostname or "127.0.0.1", parts.port or 5432))
    redis = Forwarder(REDIS)
    database.start()
    redis.start()
    with redis_prefix() as prefix, \
            run_gateway(through(postgres_url, database.port),
                        redis_url=f"redis://127.0.0.1:{redis.port}/0",
                        redis_prefix=prefix) as gw:
        yield gw, database, redis
    database.close()
    redis.close()


async def status_of(client: httpx.AsyncClient, path: str) -> tuple[int, str]:
    response = await client.get(path)
    return response.status_code, response.text


@pytest.mark.parametrize("part", ["database", "redis"])
async def test_readyz_fails_while_the_database_or_redis_is_unreachable(
        forwarded: tuple[GatewayProcess, Forwarder, Forwarder], part: str) -> None:
    gw, database, redis = forwarded
    forwarder = database if part == "database" else redis
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == (await client.get("/healthz")).json()  # {ok, version}
        forwarder.cut()

        async def not_ready() -> bool:
            code, body = await status_of(client, "/readyz")
            return code == 503 and f"the {part} is unreachable" in body \
                and '"code":"service_unavailable"' in body

        await async_wait_until(not_ready, timeout=10, what=f"/readyz to fail without the {part}")
        assert (await client.get("/healthz")).status_code == 200  # liveness is unaffected
        forwarder.start()  # the same port again

        async def ready() -> bool:
            return (await status_of(client, "/readyz"))[0] == 200

        await async_wait_until(ready, timeout=15, what=f"/readyz to recover with the {part}")
