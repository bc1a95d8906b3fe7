"""The runtime's `status` and `lastSeenAt` as the app sees them, on real processes:
`unpaired` until a daemon registers (a redeemed token alone does not count), and
`lastSeenAt` frozen at revocation however long the old daemon keeps calling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import MachineFactory
from tests.e2e.harness import (
    auth,
    ctl,
    home_paths,
    revoke_runtime,
    start_daemon,
    stop_daemon,
    wait_runtime_status,
)
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e


def record(gateway_url: str, key: str, lattice_id: str) -> dict[str, Any]:
    response = httpx.get(f"{gateway_url}/v1/personal-runtimes/{lattice_id}",
                         headers=auth(key), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["runtime"]  # type: ignore[no-any-return]


def test_unpaired_until_the_daemon_first_registers(machine_factory: MachineFactory) -> None:
    # The app's command run verbatim on the user's machine, the daemon not started yet.
    machine = machine_factory("ollama", start=False)
    paired_only = record(machine.gateway_url, machine.key, machine.lattice_id)
    assert paired_only["status"] == "unpaired"
    assert paired_only["lastSeenAt"] is None

    start_daemon(machine.home)
    wait_runtime_status(machine.gateway_url, machine.key, machine.lattice_id, "reachable")
    assert record(machine.gateway_url, machine.key, machine.lattice_id)["lastSeenAt"]

    stop_daemon(machine.home)  # graceful: deregisters; registered before -> offline
    wait_runtime_status(machine.gateway_url, machine.key, machine.lattice_id, "offline",
                        timeout=5)
    assert record(machine.gateway_url, machine.key, machine.lattice_id)["lastSeenAt"]


def _daemon_token(home: Path) -> str:
    from lattice_daemon.config import load_config

    relay = load_config(home_paths(home)).relay
    assert relay is not None
    return relay.daemon_token


def test_last_seen_stops_at_revocation(machine_factory: MachineFactory) -> None:
    machine = machine_factory("ollama")
    url, key, lattice_id = machine.gateway_url, machine.key, machine.lattice_id
    registered_at = record(url, key, lattice_id)["lastSeenAt"]
    # Polls (every poll window, and the events of a chat) move lastSeenAt past registration.
    machine.openai().chat.completions.create(
        model=machine.model, messages=[{"role": "user", "content": "hi"}])
    moved = wait_until(lambda: (seen := record(url, key, lattice_id)["lastSeenAt"])
                       > registered_at and seen, what="lastSeenAt to move with polls")

    revoke_runtime(url, key, lattice_id)
    at_revocation = record(url, key, lattice_id)
    assert at_revocation["status"] == "revoked"
    # The last accepted contact, not the registration time from before.
    assert at_revocation["lastSeenAt"] >= moved  # type: ignore[operator]

    # The old daemon's credential keeps being refused; its calls do not move lastSeenAt.
    wait_until(lambda: "Re-pair required" in ctl(machine.home, "status").stdout,
               what="the daemon to say re-pair required")
    token = _daemon_token(machine.home)
    for _ in range(3):
        refused = httpx.post(f"{url}/v1/relay/sessions", timeout=10,
                             headers={"authorization": f"Bearer {token}"},
                             json={"daemonVersion": "0.1.0", "maxConcurrency": 1,
                                   "provider": {"kind": "ollama", "models": []}})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "runtime_revoked"
    assert record(url, key, lattice_id)["lastSeenAt"] == at_revocation["lastSeenAt"]
