"""A TCP fault proxy: sits between two real processes and breaks their connection on cue.

    with run_fault_proxy() as proxy:            # listens on 127.0.0.1, port 0
        proxy.upstream = gateway.port           # forward to (set or change at any time)
        proxy.url                               # "http://127.0.0.1:PORT" for HTTP peers
        proxy.drop()                            # close every connection, both sides (FIN)
        proxy.reset()                           # the same with RST (SO_LINGER 0)
        proxy.delay(0.5)                        # hold every forwarded piece 0.5 s
        proxy.half_open("down")                 # stop forwarding upstream -> client
        proxy.blackhole()                       # accept, never forward (new and old)
        proxy.cut()                             # reset every connection, refuse new ones
        proxy.heal()                            # forward normally again

Modes apply to connections already open and to new ones. A stopped direction holds its
bytes (they are not lost, the stream stays valid) until ``heal``: to the peers that is a
path that went silent, as when a NAT entry or a link goes away without a packet.
``drop``/``reset`` act once on the open connections; new ones then forward normally.

Runs its own event loop in a daemon thread, so sync and async tests use it alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

UP = "up"  # client -> upstream
DOWN = "down"  # upstream -> client
READ_SIZE = 65536


@dataclass(eq=False)  # hashed by identity: pipes live in a set
class _Pipe:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    def __init__(self, upstream: int | None = None, host: str = "127.0.0.1") -> None:
        self.upstream = upstream  # the port forwarded to; None: refuse (close at once)
        self.host = host
        self.port = 0
        self.accepted = 0  # connections accepted since start
        self.forwarded = 0  # of those, connected upstream (not refused, not blackholed)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._pipes: set[_Pipe] = set()
        self._delay = 0.0
        self._blackhole = False
        self._cut = False
        self._flowing = {UP: asyncio.Event(), DOWN: asyncio.Event()}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        ready = threading.Event()

        async def listen() -> None:
            for event in self._flowing.values():
                event.set()
            self._server = await asyncio.start_server(self._accept, self.host, 0)
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()

        self._thread.start()
        asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)
        ready.wait(10)
        return self

    def close(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            self._abort_all(rst=True)
            await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def open_connections(self) -> int:
        return len(self._pipes)

    # -- faults (callable from any thread) ------------------------------------------------
    def _call(self, function: object, *args: object) -> None:
        async def run() -> None:
            function(*args)  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def drop(self) -> None:
        """Close every open connection on both sides (FIN)."""
        self._call(self._abort_all, False)

    def reset(self) -> None:
        """Abort every open connection on both sides with RST."""
        self._call(self._abort_all, True)

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    def half_open(self, direction: str) -> None:
        """Stop forwarding one direction (``"up"``: client -> upstream, ``"down"``)."""
        self._call(self._flowing[direction].clear)

    def blackhole(self) -> None:
        """Accept connections, forward nothing either way, never connect upstream."""
        self._blackhole = True
        self._call(self._flowing[UP].clear)
        self._call(self._flowing[DOWN].clear)

    def cut(self) -> None:
        """Reset every open connection and refuse new ones (closed at once) until
        ``heal``: a path that went away, as a restarting peer or a failover looks."""
        self._cut = True
        self.reset()

    def heal(self) -> None:
        self._delay = 0.0
        self._blackhole = False
        self._cut = False
        self._call(self._flowing[UP].set)
        self._call(self._flowing[DOWN].set)

    # -- the loop's side -----------------------------------------------------------------
    def _abort_all(self, rst: bool) -> None:
        for pipe in list(self._pipes):
            self._close_pipe(pipe, rst)

    def _close_pipe(self, pipe: _Pipe, rst: bool) -> None:
        self._pipes.discard(pipe)
        for writer in (pipe.client, pipe.upstream):
            if writer is None:
                continue
            if rst:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
        for task in pipe.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        pipe = _Pipe(client=writer)
        self._pipes.add(pipe)
        if self._blackhole:
            # Accepted and read, never answered: the peer's only way out is a timeout.
            with contextlib.suppress(Exception):
                while await reader.read(READ_SIZE):
                    pass
            self._close_pipe(pipe, rst=False)
            return
        if self.upstream is None or self._cut:
            self._close_pipe(pipe, rst=self._cut)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream)
        except OSError:
            self._close_pipe(pipe, rst=True)  # as a refused connection looks to the client
            return
        pipe.upstream = up_writer
        self.forwarded += 1
        if pipe not in self._pipes:  # dropped while connecting
            up_writer.close()
            return
        pipe.tasks = [asyncio.ensure_future(self._pump(pipe, reader, up_writer, UP)),
                      asyncio.ensure_future(self._pump(pipe, up_reader, writer, DOWN))]

    async def _pump(self, pipe: _Pipe, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                if self._delay:
                    await asyncio.sleep(self._delay)
                await self._flowing[direction].wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        if pipe in self._pipes:  # one side closed: pass the close on, as TCP would
            self._close_pipe(pipe, rst=False)


@contextlib.contextmanager
def run_fault_proxy(upstream: int | None = None) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.close()
