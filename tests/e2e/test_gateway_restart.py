"""The gateway restarts (same port, same database): the daemon reconnects by itself.

Its own module: it restarts the module's gateway, which no other test may share.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import MachineFactory
from tests.e2e.harness import ctl_json, daemon_pid, wait_relay_state, wait_runtime_status
from tests.support.gateway import GatewayProcess
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e


def test_daemon_reconnects_after_gateway_restart_untouched(machine_factory: MachineFactory,
                                                          gateway: GatewayProcess) -> None:
    machine = machine_factory("ollama", reply="still here")
    pid = daemon_pid(machine.home)
    gateway.stop()
    wait_until(lambda: ctl_json(machine.home, "status")["state"] == "reconnecting",
               timeout=10, what="the daemon to notice the gateway is gone")
    status = ctl_json(machine.home, "status")
    assert status["relay"]["lastError"]  # says why (gateway unreachable)
    gateway.start()
    wait_relay_state(machine.home, "connected", timeout=15)
    wait_runtime_status(machine.gateway_url, machine.key, machine.lattice_id, "reachable")
    completion = machine.openai().chat.completions.create(
        model=machine.model, messages=[{"role": "user", "content": "you there?"}])
    assert completion.choices[0].message.content == "still here"
    assert daemon_pid(machine.home) == pid  # the same process: nobody touched it
