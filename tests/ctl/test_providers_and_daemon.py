"""`providers`, `models`, `daemon logs -f` and the service hand-off rule."""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lattice_daemon.config import DaemonConfig, ProviderConfig, save_config
from lattice_daemon.paths import get_paths
from tests.ctl.conftest import RunCtl, stdout_json, write_config_text
from tests.ctl.fake_control import FakeControlServer, ping_body
from tests.e2e.harness import CTL, ctl_env
from tests.servers import run_ollama_server, run_openai_server
from tests.support.net import closed_port


def _configure(kind: str, url: str, model: str | None = None) -> None:
    save_config(get_paths(), DaemonConfig(provider=ProviderConfig(kind=kind, url=url,
                                                                  default_model=model)))


def test_providers_lists_the_configured_one_with_models(run_ctl: RunCtl) -> None:
    with run_openai_server(models=["m-a", "m-b"]) as server:
        _configure("openai", server.url)
        result = run_ctl("--json", "providers", "--timeout", "0.5")
    assert result.exit_code == 0, result.stderr
    items = stdout_json(result)["providers"]
    kinds = [item["kind"] for item in items]
    assert kinds[:2] == ["ollama", "lmstudio"]  # the usual ports are always probed
    configured = [item for item in items if item["configured"]]
    assert len(configured) == 1
    assert configured[0]["ok"] is True and configured[0]["models"] == ["m-a", "m-b"]


def test_providers_still_probes_the_usual_ports_with_a_broken_config(
        run_ctl: RunCtl, lattice_home: Path) -> None:
    write_config_text("not = = toml\n")
    result = run_ctl("--json", "providers", "--timeout", "0.5")
    assert result.exit_code == 0, result.stderr
    assert [item["kind"] for item in stdout_json(result)["providers"]] == ["ollama", "lmstudio"]
    assert "cannot read" in result.stderr and "probing the usual ports only" in result.stderr
    assert run_ctl("models").exit_code == 1  # models needs the configured provider


def test_providers_human_output_marks_unreachable(run_ctl: RunCtl) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    _configure("ollama", url)
    result = run_ctl("providers", "--timeout", "0.5")
    assert result.exit_code == 0
    assert f"ollama at {url} (configured): not reachable" in result.stdout


def test_models_directly_from_the_provider_when_daemon_is_down(run_ctl: RunCtl) -> None:
    with run_ollama_server(models=["llama3.2:latest", "qwen3:8b"]) as server:
        _configure("ollama", server.url, model="qwen3:8b")
        data = stdout_json(run_ctl("--json", "models"))
        human = run_ctl("models").stdout
    assert data["via"] == "provider"
    assert data["models"] == ["llama3.2:latest", "qwen3:8b"]
    assert "qwen3:8b  (default)" in human


def test_models_unreachable_provider_fails_naming_it(run_ctl: RunCtl) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    _configure("ollama", url)
    result = run_ctl("models")
    assert result.exit_code == 1
    assert "Ollama" in result.stderr and url in result.stderr


def test_models_through_the_daemon_when_it_runs(run_ctl: RunCtl,
                                               fake_daemon: FakeControlServer) -> None:
    data = stdout_json(run_ctl("--json", "models"))
    data.pop("gguf")  # the files on this machine: tests/ctl/test_models.py
    assert data == {"kind": "ollama", "url": "http://localhost:11434",
                    "models": ["llama3.2", "qwen3"], "defaultModel": "llama3.2",
                    "via": "daemon", "modelsDir": str(get_paths().models_dir)}


def test_daemon_status_running_shows_pid_and_uptime(run_ctl: RunCtl,
                                                    fake_daemon: FakeControlServer) -> None:
    fake_daemon.answer("GET /v1/ping", 200, ping_body(pid=4242, uptimeSeconds=3725))
    result = run_ctl("daemon", "status")
    assert result.exit_code == 0
    assert "pid 4242" in result.stdout and "up 1h 2m" in result.stdout


def test_daemon_start_when_running_says_so(run_ctl: RunCtl,
                                           fake_daemon: FakeControlServer) -> None:
    result = run_ctl("--json", "daemon", "start")
    assert result.exit_code == 0
    data = stdout_json(result)
    assert data["alreadyRunning"] is True and data["started"] is False


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """One line of the process's stdout, or fail after ``timeout`` (never hang)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return process.stdout.readline()


def test_daemon_logs_follow_prints_new_lines(lattice_home: Path) -> None:
    log = get_paths().log_file
    log.parent.mkdir(parents=True)
    log.write_text("old line\n")
    follower = subprocess.Popen([CTL, "daemon", "logs", "-f"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=ctl_env(lattice_home))
    try:
        assert _read_line(follower, 10) == "old line\n"
        with log.open("a") as f:
            f.write("new line\n")
        assert _read_line(follower, 10) == "new line\n"
    finally:
        follower.kill()
        follower.wait(5)


@pytest.mark.parametrize(("unit_home", "env_home", "expected"), [
    (None, None, True),
    ("/srv/lh", "/srv/lh", True),
    ("/srv/lh", None, False),
    (None, "/srv/other", False),
    ("/srv/lh", "/srv/other", False),
])
def test_service_is_used_only_for_this_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              unit_home: str | None, env_home: str | None,
                                              expected: bool) -> None:
    from lattice_ctl import service_manager
    from lattice_ctl.commands import daemon

    unit = tmp_path / "lattice-daemon.service"
    unit.write_text("[Service]\n" + (f"Environment=LATTICE_HOME={unit_home}\n"
                                     if unit_home else ""))
    monkeypatch.setattr(service_manager, "installed", lambda: True)
    monkeypatch.setattr(service_manager, "current", lambda: SimpleNamespace(unit_file=unit))
    monkeypatch.delenv("LATTICE_SOCKET", raising=False)
    if env_home:
        monkeypatch.setenv("LATTICE_HOME", env_home)
    else:
        monkeypatch.delenv("LATTICE_HOME", raising=False)
    assert daemon._service_serves_this_config() is expected


def test_daemon_start_reports_an_immediate_exit(lattice_home: Path) -> None:
    get_paths().config_dir.mkdir(parents=True)
    get_paths().config_file.write_text("[relay]\nnot = 'valid'\n")  # unusable config
    started = time.monotonic()
    done = subprocess.run([CTL, "daemon", "start", "--timeout", "15"], capture_output=True,
                          text=True, env=ctl_env(lattice_home), timeout=30)
    assert done.returncode == 1
    assert "config" in done.stderr
    assert time.monotonic() - started < 10  # noticed the exit, did not wait the deadline
    assert os.environ.get("LATTICE_HOME") == str(lattice_home)


def test_daemon_start_on_a_socket_path_that_is_a_file_says_so(lattice_home: Path) -> None:
    not_a_socket = lattice_home / "not-a-socket"
    not_a_socket.write_text("")
    env = {**ctl_env(lattice_home), "LATTICE_SOCKET": str(not_a_socket)}
    done = subprocess.run([CTL, "daemon", "start", "--timeout", "15"], capture_output=True,
                          text=True, env=env, timeout=30)
    assert done.returncode == 1
    assert f"{not_a_socket} exists and is not a socket" in done.stderr
    assert "already runs" not in done.stderr  # no daemon runs: that would mislead
    assert not_a_socket.read_text() == ""  # left alone


_WEDGED = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("LOCKED", flush=True)
while True:
    time.sleep(1)  # a daemon that holds its lock but never answers its socket
"""


def test_silent_daemon_holding_the_lock_is_found_and_stopped(lattice_home: Path) -> None:
    import sys

    lock = get_paths().lock_file
    lock.parent.mkdir(parents=True)
    wedged = subprocess.Popen([sys.executable, "-c", _WEDGED, str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert _read_line(wedged, 10) == "LOCKED\n"
        start = subprocess.run([CTL, "daemon", "start"], capture_output=True, text=True,
                               env=ctl_env(lattice_home), timeout=30)
        assert start.returncode == 1
        assert f"pid {wedged.pid}" in start.stderr and "does not answer" in start.stderr
        stop = subprocess.run([CTL, "--json", "daemon", "stop", "--timeout", "5"],
                              capture_output=True, text=True, env=ctl_env(lattice_home),
                              timeout=30)
        assert stop.returncode == 0, stop.stderr
        assert '"wasRunning": true' in stop.stdout
        assert wedged.wait(5) == -15  # SIGTERM
    finally:
        wedged.kill()
        wedged.wait(5)
