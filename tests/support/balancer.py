"""A TCP load balancer in front of gateway replicas, for tests of scale-out and draining.

    async with Balancer([a.url, b.url], enabled=[True, False]) as lb:
        daemon = await paired_daemon(lb.url, key)      # its connections go to a
        lb.enable(1)                                   # b takes new connections too
        ...
        lb.first_connection_to(1, after=t0)            # when b got its first one after t0

New connections go round robin to the enabled backends whose ``GET /readyz`` answered 200
at the last check (every 50 ms), as a cloud load balancer or a Kubernetes Service does
(there, every few seconds). An open connection stays with its backend until one side
closes it. Bytes are copied both ways unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from urllib.parse import urlsplit

import httpx

CHECK_INTERVAL = 0.05


class Balancer:
    def __init__(self, backends: list[str], enabled: list[bool] | None = None) -> None:
        self.backends = [(urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 80)
                         for url in backends]
        self.urls = backends
        self.enabled = list(enabled) if enabled is not None else [True] * len(backends)
        self.ready = [False] * len(backends)
        self.connections: list[tuple[float, int]] = []  # (monotonic time, backend index)
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._checker: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def enable(self, index: int, enabled: bool = True) -> None:
        self.enabled[index] = enabled

    def first_connection_to(self, index: int, after: float) -> float | None:
        """Monotonic time of the first connection sent to backend ``index`` after ``after``."""
        times = [at for at, to in self.connections if to == index and at > after]
        return min(times) if times else None

    async def __aenter__(self) -> Balancer:
        await self._check_once()
        self._checker = asyncio.get_running_loop().create_task(self._check_loop())
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        tasks = [t for t in (self._checker, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _check_once(self) -> None:
        async with httpx.AsyncClient(timeout=0.5, trust_env=False) as client:
            for index, url in enumerate(self.urls):
                try:
                    response = await client.get(url + "/readyz")
                    self.ready[index] = response.status_code == 200
                except httpx.HTTPError:
                    self.ready[index] = False

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)  # the check's period, as a balancer's
            await self._check_once()

    def _pick(self) -> int | None:
        count = len(self.backends)
        for offset in range(count):
            index = (self._next + offset) % count
            if self.enabled[index] and self.ready[index]:
                self._next = index + 1
                return index
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            index = self._pick()
            if index is None:
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.backends[index])
            except OSError:
                return
            self.connections.append((time.monotonic(), index))
            copies = {asyncio.ensure_future(_copy(reader, up_writer)),
                      asyncio.ensure_future(_copy(up_reader, writer))}
            try:
                await asyncio.wait(copies, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for copy in copies:
                    copy.cancel()
                up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
