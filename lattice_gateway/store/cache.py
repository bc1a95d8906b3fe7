"""A small in-memory TTL cache for hot-path lookups (credentials, runtimes).

Entries expire after ``ttl`` seconds so changes made by other processes (the CLI, other
replicas) show up soon; changes made in this process invalidate entries at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING = object()


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> tuple[bool, V | None]:
        """(hit, value); a miss or an expired entry is (False, None)."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        expires, value = entry
        if self._clock() >= expires:
            self._entries.pop(key, None)
            return False, None
        return True, value

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self._max:
            # Bounded memory under a flood of distinct keys; refilling is cheap.
            self._entries.clear()
        self._entries[key] = (self._clock() + self.ttl, value)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def drop_where(self, predicate: Callable[[V], bool]) -> None:
        for key in [k for k, (_, v) in self._entries.items() if predicate(v)]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
