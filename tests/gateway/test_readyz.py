"""``/readyz`` of a real gateway fails while its PostgreSQL or Redis is unreachable and
recovers with it; ``/healthz`` (liveness) stays 200 throughout. The gateway reaches both
through a fault proxy the test can cut (every connection reset, new ones refused)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.support.faultproxy import FaultProxy, run_fault_proxy
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import async_wait_until
from tests.support.redis_keys import redis_prefix

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2
                                     else host))


@pytest.fixture
def forwarded(postgres_url: str) -> Iterator[tuple[GatewayProcess, FaultProxy, FaultProxy]]:
    with run_fault_proxy(urlsplit(postgres_url).port or 5432) as database, \
            run_fault_proxy(6379) as redis, redis_prefix() as prefix, \
            run_gateway(through(postgres_url, database.port), redis_url=redis.redis_url,
                        redis_prefix=prefix) as gw:
        yield gw, database, redis


async def status_of(client: httpx.AsyncClient, path: str) -> tuple[int, str]:
    response = await client.get(path)
    return response.status_code, response.text


@pytest.mark.parametrize("part", ["database", "redis"])
async def test_readyz_fails_while_the_database_or_redis_is_unreachable(
        forwarded: tuple[GatewayProcess, FaultProxy, FaultProxy], part: str) -> None:
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
        forwarder.heal()

        async def ready() -> bool:
            return (await status_of(client, "/readyz"))[0] == 200

        await async_wait_until(ready, timeout=15, what=f"/readyz to recover with the {part}")
