"""Deadlines for awaits that never swallow a cancellation (providers and the daemon).

Python 3.11+ has ``asyncio.timeout``. On 3.10 ``asyncio.wait_for`` is the usual
stand-in, but it runs the awaitable in a new task and, when a cancellation arrives just
as that task finishes, returns the result and drops the cancellation (bpo-42130): a
cancelled job then runs on, and a stopping relay loop polls again. The 3.10 fallback
here cancels the current task itself when the deadline passes, like ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

if sys.version_info >= (3, 11):
    timeout = asyncio.timeout
else:  # pragma: no cover - exercised on Python 3.10 only

    class timeout:  # mirrors asyncio.timeout, name included
        def __init__(self, seconds: float | None) -> None:
            self._seconds = seconds
            self._handle: asyncio.TimerHandle | None = None
            self._expired = False

        async def __aenter__(self) -> timeout:
            if self._seconds is not None:
                task = asyncio.current_task()
                assert task is not None
                self._handle = asyncio.get_running_loop().call_later(
                    self._seconds, self._expire, task)
            return self

        def _expire(self, task: asyncio.Task[object]) -> None:
            self._expired = True
            task.cancel()

        async def __aexit__(self, exc_type: type[BaseException] | None,
                            exc: BaseException | None, tb: TracebackType | None) -> None:
            if self._handle is not None:
                self._handle.cancel()
            if exc_type is asyncio.CancelledError and self._expired:
                raise asyncio.TimeoutError from None


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """``await awaitable`` with a deadline (None: none); raises asyncio.TimeoutError."""
    if seconds is None:
        return await awaitable
    async with timeout(seconds):
        return await awaitable
