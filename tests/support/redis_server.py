"""A private ``redis-server`` for tests that restart Redis (never the shared one).

    with private_redis() as redis_server:
        redis_server.url              # "redis://127.0.0.1:PORT/0"
        redis_server.restart()        # SIGTERM, then the same port again, empty

``redis-server --port 0`` does not listen on TCP at all, so the port comes from
tests/support/net.py (free now; the restart reuses it). Nothing is persisted: a restart
loses every key, as a failover to an empty replica would.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from tests.support.net import closed_port, wait_until


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.process.returncode}")
            client = redis.Redis(port=self.port, socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()

        wait_until(answers, timeout=10, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer(closed_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
