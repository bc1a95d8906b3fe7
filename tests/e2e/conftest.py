"""End-to-end fixtures: a real gateway per module, provider servers and daemons per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import PairedMachine, pair_machine, provider_process, stop_daemon
from tests.support.gateway import GatewayProcess, run_gateway

# Short windows so faults show within a second or two (docs/protocol.md: Presence).
GATEWAY_SETTINGS: dict[str, Any] = {
    "poll_window_seconds": 5,
    "presence_window_seconds": 1.5,
    "pickup_timeout_seconds": 5,
    "job_start_deadline_seconds": 5,
    "sse_keepalive_seconds": 0.25,
    "first_token_timeout_seconds": 20,
    "idle_timeout_seconds": 10,
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(tmp_path_factory.mktemp("gw"), **GATEWAY_SETTINGS) as gw:
        yield gw


@pytest.fixture(scope="module")
def api_key(gateway: GatewayProcess) -> str:
    return gateway.create_key("e2e-app")


MachineFactory = Callable[..., PairedMachine]


@pytest.fixture
def machine_factory(lattice_home: Path, gateway: GatewayProcess, api_key: str
                    ) -> Iterator[MachineFactory]:
    """``make(kind="ollama", **behaviour)``: provider process + paired, running daemon."""
    with ExitStack() as stack:
        def make(kind: str = "ollama", start: bool = True, **behaviour: Any) -> PairedMachine:
            provider = stack.enter_context(provider_process(kind, **behaviour))
            stack.callback(stop_daemon, lattice_home)
            return pair_machine(lattice_home, gateway.url, api_key, provider, start=start)

        yield make


@pytest.fixture
def machine(machine_factory: MachineFactory) -> PairedMachine:
    return machine_factory("ollama")
