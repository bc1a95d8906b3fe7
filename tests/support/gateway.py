"""Run a REAL Lattice gateway for tests.

Subprocess (what e2e, daemon and SDK tests use)::

    from tests.support.gateway import run_gateway

    with run_gateway(tmp_path, poll_window_seconds=2, presence_window_seconds=1) as gw:
        key = gw.create_key("acme")                   # sk_..., both scopes by default
        httpx.get(gw.url + "/v1/personal-runtimes", headers={"x-api-key": key})
        gw.restart()                                   # same port, same database
        print(gw.log_text())

``run_gateway(where, **settings)``: ``where`` is a directory (the SQLite file and the log go
there), a database URL (``postgresql://...?schema=NAME`` keeps tables in their own schema),
or None (a fresh temporary directory). ``settings`` are ``Settings`` field names, passed as
``LATTICE_GATEWAY_<NAME>`` variables (e.g. ``poll_window_seconds=2``); ``env`` adds more.
The process gets the caller's environment, so ``LATTICE_HOME`` from the ``lattice_home``
fixture applies.

In-process (fast API tests; no sockets)::

    async with inprocess_gateway(tmp_path) as gw:
        key = await gw.create_key("acme", [SCOPE_MANAGE])
        response = await gw.client.get("/v1/personal-runtimes", headers={"x-api-key": key})
        gw.clock.advance(700)                          # the store's clock; tokens expire

Both handles create credentials straight through the store of the same database.
``httpx.ASGITransport`` buffers whole responses: SSE streaming and anything that needs a
real socket (daemons, the openai client) belong on ``run_gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lattice_gateway.services import ALL_SCOPES
from lattice_gateway.settings import Settings
from lattice_gateway.store import SqlStore
from tests.support.net import wait_until

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def run_coroutine_blocking(coro: Any) -> Any:
    """Run a coroutine to completion from sync or async code (own loop in a thread)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


async def _issue(database: str, kind: str, account: str, scopes: Sequence[str],
                 ttl: int, name: str | None = None) -> str:
    store = await SqlStore.open(database)
    try:
        if kind == "key":
            issued = await store.create_api_key(account, scopes, name=name)
        else:
            issued = await store.create_access_token(account, scopes, ttl, name=name)
        return issued.secret
    finally:
        await store.close()


def reserved_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound on 127.0.0.1 (port 0: the kernel picks one), not listening: the
    port is this process's, and a connection to it is refused until a gateway listens."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


@dataclass
class GatewayProcess:
    """A ``lattice-gateway serve`` subprocess on a fixed port and database.

    The port is held by ``sock``, which each start hands to the child (``--fd``): no
    other process can take the port between runs, and no bind can race another test.
    """

    sock: socket.socket
    database: str
    public_url: str
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    shutdown_timeout: float = 1.0  # short: tests restart gateways often

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def create_key(self, account: str = "acme", scopes: Sequence[str] = ALL_SCOPES, *,
                   name: str | None = None) -> str:
        return run_coroutine_blocking(_issue(self.database, "key", account, scopes, 0, name))

    def create_token(self, account: str = "acme", scopes: Sequence[str] = ALL_SCOPES,
                     ttl: int = 3600, *, name: str | None = None) -> str:
        return run_coroutine_blocking(
            _issue(self.database, "token", account, scopes, ttl, name))

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        if self.process and self.process.poll() is None:
            raise RuntimeError("gateway already running")
        command = [sys.executable, "-m", "lattice_gateway", "serve",
                   "--fd", str(self.sock.fileno()), "--database", self.database,
                   "--public-url", self.public_url,
                   "--shutdown-timeout", str(self.shutdown_timeout)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            pass_fds=(self.sock.fileno(),))

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n"
                                   + self.log_text()[-4000:])
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200
            return False

        try:
            wait_until(healthy, timeout=timeout, what="gateway /healthz")
        except AssertionError:
            self.stop()
            raise AssertionError("gateway did not become healthy:\n"
                                 + self.log_text()[-4000:]) from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (graceful), then SIGKILL after ``timeout``. The exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._refuse_connections()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, for tests of what survives one."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
            self._refuse_connections()

    def _refuse_connections(self) -> None:
        """The child made the socket listen; with the child gone, connections would wait
        in its backlog. A fresh bound, not listening socket refuses them, as a stopped
        gateway does, and keeps the port for the next start."""
        port = self.port
        self.sock.close()
        self.sock = reserved_socket(port)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def run_gateway(where: Path | str | None = None, *, env: dict[str, str] | None = None,
                public_url: str | None = None, shutdown_timeout: float = 1.0,
                **settings: object) -> Iterator[GatewayProcess]:
    """Start a gateway subprocess, wait for /healthz, yield it, stop it.

    A directory made here (``where`` None or a database URL) is removed afterwards.
    """
    made_directory = where is None or "://" in str(where)
    if made_directory:
        directory = Path(tempfile.mkdtemp(prefix="gw-"))
    else:
        assert where is not None
        directory = Path(where)
        directory.mkdir(parents=True, exist_ok=True)
    database = str(where) if where is not None and "://" in str(where) \
        else str(directory / "gateway.db")
    sock = reserved_socket()
    port = sock.getsockname()[1]
    process_env = dict(os.environ)
    process_env["PYTHONUNBUFFERED"] = "1"
    for name, value in settings.items():
        if name not in Settings.__dataclass_fields__:
            raise TypeError(f"unknown gateway setting {name!r}")
        process_env["LATTICE_GATEWAY_" + name.upper()] = str(value)
    process_env.update(env or {})
    if "://" in database and "LATTICE_GATEWAY_KEY_FILE" not in process_env:
        # Replicas of one PostgreSQL database share a relay key file, as in production;
        # never the user's own data dir.
        process_env["LATTICE_GATEWAY_KEY_FILE"] = str(shared_key_file(database))
    gateway = GatewayProcess(sock=sock, database=database,
                             public_url=public_url or f"http://127.0.0.1:{port}",
                             log_path=directory / f"gateway-{port}.log", env=process_env,
                             shutdown_timeout=shutdown_timeout)
    try:
        gateway.start()
        try:
            yield gateway
        finally:
            gateway.stop()
    finally:
        gateway.sock.close()
        if made_directory:
            shutil.rmtree(directory, ignore_errors=True)


def shared_key_file(database: str) -> Path:
    """The relay key file the test gateways of ``database`` (a URL) share."""
    import hashlib

    digest = hashlib.sha256(database.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "lattice-test-relay-keys" / f"{digest}.key"


class MovableClock:
    """A wall clock tests can move forward (expiry without sleeping)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class InProcessGateway:
    app: Any
    client: httpx.AsyncClient
    database: str
    clock: MovableClock

    @property
    def services(self) -> Any:
        return self.app.state.services

    @property
    def store(self) -> SqlStore:
        return self.services.store  # type: ignore[no-any-return]

    async def create_key(self, account: str = "acme",
                         scopes: Sequence[str] = ALL_SCOPES) -> str:
        return (await self.store.create_api_key(account, scopes)).secret

    async def create_token(self, account: str = "acme", scopes: Sequence[str] = ALL_SCOPES,
                           ttl: int = 3600) -> str:
        return (await self.store.create_access_token(account, scopes, ttl)).secret


@contextlib.asynccontextmanager
async def inprocess_gateway(where: Path | str, **settings: Any) -> AsyncIterator[InProcessGateway]:
    """``create_app`` with its lifespan running, and an httpx client bound to it."""
    from lattice_gateway.app import create_app

    database = (str(Path(where) / "gateway.db") if isinstance(where, Path) or "://" not in where
                else where)
    settings.setdefault("public_url", "http://gateway.test")
    if "://" in database:
        settings.setdefault("key_file", str(shared_key_file(database)))
    clock = MovableClock()
    app = create_app(Settings.from_env(database=database, **settings), store_clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield InProcessGateway(app=app, client=client, database=database, clock=clock)
