"""Files on disk and process arguments: private modes, and no secret anywhere visible."""

from __future__ import annotations

import stat

import psutil
import pytest

from tests.e2e.conftest import MachineFactory
from tests.e2e.harness import (
    PairedMachine,
    create_runtime,
    ctl,
    home_paths,
    mint_bootstrap,
    provider_process,
    run_command_string,
    start_daemon,
    stop_daemon,
    wait_relay_state,
    write_provider_config,
)
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.e2e


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_config_key_socket_and_log_are_private(machine_factory: MachineFactory) -> None:
    machine = machine_factory("ollama")
    paths = home_paths(machine.home)
    assert _mode(paths.config_file) == 0o600
    assert _mode(paths.key_file) == 0o600
    assert _mode(paths.config_dir) == 0o700
    assert stat.S_ISSOCK(paths.socket.stat().st_mode)
    assert _mode(paths.socket) == 0o600
    assert _mode(paths.socket.parent) == 0o700
    assert _mode(paths.log_file) == 0o600


def test_no_token_in_logs_or_process_arguments(lattice_home, gateway: GatewayProcess,
                                               api_key: str) -> None:
    with provider_process("ollama", reply="secret-free") as provider:
        runtime = create_runtime(gateway.url, api_key)
        minted = mint_bootstrap(gateway.url, api_key, runtime["latticeId"])
        write_provider_config(lattice_home, provider.kind, provider.url)
        assert run_command_string(lattice_home, minted["command"]).returncode == 0
        try:
            start_daemon(lattice_home)
            wait_relay_state(lattice_home, "connected")
            machine = PairedMachine(lattice_home, runtime["latticeId"], api_key, gateway.url,
                                    provider)
            machine.openai().chat.completions.create(
                model=machine.model, messages=[{"role": "user", "content": "hi"}])
            paths = home_paths(lattice_home)
            config_text = paths.config_file.read_text()
            daemon_token = next(line.split('"')[1] for line in config_text.splitlines()
                                if line.startswith("daemon_token"))
            assert daemon_token.startswith("lrdt_v1")
            secrets = [daemon_token, minted["bootstrapToken"], api_key]
            logs = "".join(p.read_text(errors="replace") for p in paths.log_dir.iterdir()
                           if p.is_file())
            assert runtime["latticeId"] in logs  # the log is really written
            logs += gateway.log_text()
            for secret in secrets:
                assert secret not in logs
            for process in psutil.process_iter(["cmdline"]):
                cmdline = " ".join(process.info.get("cmdline") or [])
                for secret in secrets:
                    assert secret not in cmdline, process.info
            assert "lattice-daemon" in " ".join(
                " ".join(p.info.get("cmdline") or []) for p in psutil.process_iter(["cmdline"]))
            assert ctl(lattice_home, "daemon", "logs").returncode == 0
        finally:
            stop_daemon(lattice_home)
