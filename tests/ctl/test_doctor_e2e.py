"""`lattice-ctl doctor` on a real machine setup: the real gateway (subprocess), the real
daemon started the documented way, and the fake Ollama as a process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.harness import (
    ctl,
    pair_machine,
    provider_process,
    revoke_runtime,
    stop_daemon,
    wait_relay_state,
)
from tests.support.gateway import run_gateway

pytestmark = pytest.mark.e2e


def doctor(home: Path) -> tuple[int, dict[str, dict[str, str]]]:
    done = ctl(home, "--json", "doctor", "--timeout", "5")
    data = json.loads(done.stdout)
    assert data["ok"] is (done.returncode == 0)
    return done.returncode, {check["name"]: check for check in data["checks"]}


def test_doctor_passes_on_a_working_machine_then_names_what_broke(
        lattice_home: Path, tmp_path: Path) -> None:
    gateway_dir = tmp_path / "gateway"
    gateway_dir.mkdir()
    with run_gateway(gateway_dir, poll_window_seconds=5, presence_window_seconds=1.5) as gw, \
            provider_process("ollama") as provider:
        key = gw.create_key("doctor-app")
        try:
            machine = pair_machine(lattice_home, gw.url, key, provider)

            code, checks = doctor(lattice_home)
            assert code == 0, checks
            assert {c["status"] for c in checks.values()} == {"pass"}, checks
            assert checks["relay"]["detail"].startswith(f"connected to {gw.url}")
            human = ctl(lattice_home, "doctor", "--timeout", "5")
            assert human.returncode == 0 and "All checks passed." in human.stdout

            # The app's owner revokes the runtime: the daemon stays up, re-pair required.
            revoke_runtime(gw.url, key, machine.lattice_id)
            wait_relay_state(lattice_home, "repair_required")
            code, checks = doctor(lattice_home)
            assert code == 1
            assert checks["relay"]["status"] == "fail"
            assert checks["relay"]["detail"].startswith("re-pair required")
            assert "--replace" in checks["relay"]["fix"]
            assert checks["daemon"]["status"] == "pass"

            # The local model server goes away.
            provider.stop()
            code, checks = doctor(lattice_home)
            assert code == 1
            assert checks["provider"]["status"] == "fail"
            assert provider.url in checks["provider"]["detail"]
            assert "ollama serve" in checks["provider"]["fix"]
        finally:
            stop_daemon(lattice_home)
