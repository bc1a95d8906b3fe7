"""Network helpers for tests: a port nothing listens on, and waiting on conditions.

Children (gateways, provider test servers) never get a port from here: they bind port 0
and report theirs, or are handed a bound socket (tests/support/gateway.py), so parallel
tests cannot race for a port.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable


def closed_port() -> int:
    """A loopback port nothing listens on now: for "connection refused" checks only (it is
    released on return, so a child told to bind it could lose it to another test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


free_port = closed_port  # the former name, for tests written before the rename


def wait_until(condition: Callable[[], object], timeout: float = 10.0,
               interval: float = 0.02, what: str = "condition") -> object:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may fail until ready
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


async def async_wait_until(condition: Callable[[], Awaitable[object]], timeout: float = 10.0,
                           interval: float = 0.02, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = await condition()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))
