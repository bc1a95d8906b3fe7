"""A real gateway subprocess per test module (and xdist worker); accounts keep tests apart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.gateway import GatewayProcess, run_gateway

# Short windows keep presence and timeouts test-sized; the poll window bounds shutdown.
GATEWAY_SETTINGS = {
    "poll_window_seconds": 2,
    "presence_window_seconds": 2,
    "pickup_timeout_seconds": 5,
    "sse_keepalive_seconds": 0.2,
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(tmp_path_factory.mktemp("gateway"), **GATEWAY_SETTINGS) as gw:
        yield gw


@pytest.fixture
def account() -> str:
    """A fresh account name: runtimes of other tests never show up in this one's lists."""
    return "acct-" + uuid.uuid4().hex[:12]
