"""A private key prefix on the shared test Redis, so parallel tests never meet."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

REDIS_URL = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def redis_prefix(url: str = REDIS_URL) -> Iterator[str]:
    """A new ``lattice-test:<hex>:`` prefix; every key under it is deleted afterwards."""
    import redis

    prefix = f"lattice-test:{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
