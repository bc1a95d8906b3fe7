"""Gateway test fixtures: an in-process gateway per test, PostgreSQL schemas per test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.gateway import InProcessGateway, inprocess_gateway, run_coroutine_blocking

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
async def gateway(tmp_path: Path, lattice_home: Path) -> AsyncIterator[InProcessGateway]:
    """A gateway app on a fresh SQLite file, lifespan running, with an httpx client."""
    async with inprocess_gateway(tmp_path) as gw:
        yield gw


async def _drop_schema(schema: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The test PostgreSQL with a private schema (``?schema=``), dropped afterwards.

    The store creates the schema on open; parallel tests never see each other's tables.
    """
    schema = "t_" + secrets.token_hex(6)
    yield f"{POSTGRES_URL}?schema={schema}"
    run_coroutine_blocking(_drop_schema(schema))


def api_headers(secret: str, form: str = "x-api-key") -> dict[str, str]:
    """Credential headers in either accepted form: ``x-api-key`` or ``bearer``."""
    if form == "bearer":
        return {"authorization": f"Bearer {secret}"}
    return {"x-api-key": secret}
