"""A TCP load balancer in front of gateway replicas, for tests of scale-out and draining.

    async with Balancer([a.url, b.url], enabled=[True, False]) as lb:
        daemon = await paired_daemon(lb.url, key)      # its connections go to a
        lb.enable(1)                                   # b takes new connections too
        ...
        lb.first_connection_to(1, after=t0, path="/poll")  # b's first poll after t0

From synchronous code (a real daemon driven by ``lattice-ctl``), ``ThreadedBalancer``
runs one on its own event loop thread; ``set_backends`` once the replicas are up (they
need the balancer's URL as their public URL first).

New connections go round robin to the enabled backends whose ``GET /readyz`` answered 200
at the last check (every 50 ms), as a cloud load balancer or a Kubernetes Service does
(there, every few seconds). An open connection stays with its backend until one side
closes it. Bytes are copied both ways unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

CHECK_INTERVAL = 0.05


class Balancer:
    def __init__(self, backends: list[str], enabled: list[bool] | None = None) -> None:
        self.set_backends(backends, enabled)
        # (monotonic time, backend index, the connection's first request line)
        self.connections: list[tuple[float, int, str]] = []
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._checker: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def set_backends(self, backends: list[str], enabled: list[bool] | None = None) -> None:
        self.backends = [(urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 80)
                         for url in backends]
        self.urls = backends
        self.enabled = list(enabled) if enabled is not None else [True] * len(backends)
        self.ready = [False] * len(backends)

    def enable(self, index: int, enabled: bool = True) -> None:
        self.enabled[index] = enabled

    def first_connection_to(self, index: int, after: float, path: str = "") -> float | None:
        """Monotonic time of the first connection sent to backend ``index`` after ``after``
        whose first request line contains ``path``."""
        times = [at for at, to, line in self.connections
                 if to == index and at > after and path in line]
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
        urls = self.urls  # set_backends may replace it meanwhile (another thread)
        ready = []
        async with httpx.AsyncClient(timeout=0.5, trust_env=False) as client:
            for url in urls:
                try:
                    ready.append((await client.get(url + "/readyz")).status_code == 200)
                except httpx.HTTPError:
                    ready.append(False)
        if urls is self.urls:
            self.ready = ready

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
            first = await reader.read(65536)  # an HTTP client speaks first
            line = first.split(b"\r\n", 1)[0].decode("latin-1")
            self.connections.append((time.monotonic(), index, line))
            up_writer.write(first)
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


class ThreadedBalancer:
    """A ``Balancer`` on its own event loop thread (``with ThreadedBalancer() as lb``)."""

    def __init__(self) -> None:
        self.balancer = Balancer([])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def __enter__(self) -> Balancer:
        self._thread.start()
        self._run(self.balancer.__aenter__())
        return self.balancer

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._run(self.balancer.__aexit__(None, None, None))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
