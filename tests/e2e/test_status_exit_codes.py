"""`lattice-ctl status` exit codes on a real machine (docs/operations.md): 0 only when
connected and the model server answers; the relay and the model server side by side
when only the relay is up."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.e2e.harness import (
    PairedMachine,
    ctl,
    revoke_runtime,
    stop_daemon,
    wait_relay_state,
)
from tests.support.net import wait_until


def test_status_exit_codes_follow_what_the_machine_can_serve(machine: PairedMachine,
                                                             tmp_path: Path) -> None:
    serving = ctl(machine.home, "status")
    assert serving.returncode == 0, serving.stdout + serving.stderr
    assert serving.stdout.splitlines()[0] == "Connected"

    machine.provider.stop()
    down = wait_until(lambda: (lambda done: done if done.returncode == 7 else None)(
        ctl(machine.home, "status")), timeout=20, what="status exit 7")
    assert down.stdout.splitlines()[0] == "Relay: Connected; model server: not answering"
    assert "ollama serve" in down.stdout  # advice for the owner, at the owner's terminal
    with pytest.raises(openai.APIStatusError) as refused:
        machine.openai().chat.completions.create(
            model=machine.model, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 502
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "provider_error"
    assert error["message"] == "the runtime's local model server is not running"

    revoke_runtime(machine.gateway_url, machine.key, machine.lattice_id)
    wait_relay_state(machine.home, "repair_required")
    assert ctl(machine.home, "status").returncode == 6

    stop_daemon(machine.home)
    stopped = ctl(machine.home, "status")
    assert stopped.returncode == 3 and stopped.stdout.startswith("Daemon not running")

    unpaired = ctl(tmp_path / "fresh", "status")
    assert unpaired.returncode == 4 and unpaired.stdout.startswith("Not paired")
