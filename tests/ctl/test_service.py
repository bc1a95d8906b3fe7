"""`lattice-ctl service ...`: the rendered unit/plist, and install/uninstall/status against
a recording `systemctl` stand-in (a real user systemd is not available in CI)."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lattice_ctl import service_manager
from lattice_ctl.service_manager.launchd import LaunchAgentManager
from lattice_ctl.service_manager.systemd import SystemdUserManager, quote_value
from lattice_daemon.config import DaemonConfig, RelayConfig, load_or_create_keypair, save_config
from lattice_daemon.paths import get_paths
from tests.ctl.conftest import RunCtl, stdout_json
from tests.ctl.fake_control import FakeControlServer, ping_body

DAEMON_TOKEN = "lrdt_v1_" + "S3cretDaemonToken" * 2
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="drives the systemd backend through the CLI")

FAKE_SYSTEMCTL = """#!/bin/sh
# Records each call; answers like `systemctl --user` would with a running user manager.
echo "$*" >> "$FAKE_SYSTEMCTL_LOG"
state="${FAKE_SYSTEMD_STATE:-running}"
case "$*" in
  "--user is-system-running") echo "$state"; [ "$state" = running ] ;;
  "--user is-active"*) echo inactive; exit 3 ;;
  "--user is-enabled"*) echo disabled; exit 1 ;;
  *) [ "$state" = running ] || { echo "Failed to connect to bus" >&2; exit 1; } ;;
esac
"""


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture
def paired(lattice_home: Path) -> str:
    """A paired config (token on disk) and a key; returns the private key text."""
    paths = get_paths()
    save_config(paths, DaemonConfig(relay=RelayConfig(
        gateway="https://gw.example", relay_url="https://gw.example/v1/relay",
        lattice_id="rt_1", account_id="acc_1", display_name="Laptop",
        execution_backend="local-model", daemon_token=DAEMON_TOKEN,
        gateway_public_key="pk", paired_at="2026-01-01T00:00:00.000Z")))
    return load_or_create_keypair(paths).private_text()


@pytest.fixture
def systemctl_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `systemctl` stand-in first on PATH, and a private XDG_CONFIG_HOME for the unit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL)
    fake.chmod(0o755)
    log = tmp_path / "systemctl.log"
    log.touch()
    monkeypatch.setenv("FAKE_SYSTEMCTL_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    return log


def test_unit_has_the_restart_contract_and_the_daemon_path(lattice_home: Path) -> None:
    text, _ = SystemdUserManager().render()
    settings = unit_settings(text)
    exec_start = settings["ExecStart"][0].strip('"')
    assert Path(exec_start).is_absolute() and Path(exec_start).name == "lattice-daemon"
    assert os.access(exec_start, os.X_OK)
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartSec"] == ["5"]
    assert {"73", "78"} <= set(settings["RestartPreventExitStatus"][0].split())
    assert settings["After"] == ["network-online.target"]
    assert settings["Wants"] == ["network-online.target"]
    assert int(settings["TimeoutStopSec"][0]) > DaemonConfig().daemon.drain_seconds
    assert settings["KillMode"] == ["mixed"]
    assert settings["WantedBy"] == ["default.target"]
    assert f'"LATTICE_HOME={lattice_home}"' in settings["Environment"]


def test_unit_passes_systemd_analyze_verify(lattice_home: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # A home with a space, a quote and systemd's specifier character must survive quoting.
    monkeypatch.setenv("LATTICE_HOME", str(tmp_path / 'a "home" at 100%'))
    unit = tmp_path / "lattice-daemon.service"
    unit.write_text(SystemdUserManager().render()[0])
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    done = subprocess.run([analyze, "verify", "--user", str(unit)], capture_output=True,
                          text=True, timeout=30,
                          env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)})
    # verify prints unknown keys and bad values as warnings with exit 0: demand silence.
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_odd_paths_are_quoted_for_systemd() -> None:
    assert quote_value('/a b/100%"x"$HOME') == '"/a b/100%%\\"x\\"$$HOME"'


def test_no_secret_in_unit_or_plist(paired: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://alice:pr0xyPassw0rd@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    unit, unit_warnings = SystemdUserManager().render()
    plist, plist_warnings = LaunchAgentManager().render()
    for text in (unit, plist):
        assert DAEMON_TOKEN not in text
        assert paired not in text
        assert "pr0xyPassw0rd" not in text and "HTTPS_PROXY" not in text
        assert "NO_PROXY" in text  # harmless variables are passed on
    for warnings in (unit_warnings, plist_warnings):
        assert any("HTTPS_PROXY holds credentials" in w for w in warnings)
        assert all("pr0xyPassw0rd" not in w for w in warnings)


def test_plist_parses_and_has_the_launchd_contract(lattice_home: Path) -> None:
    text, _ = LaunchAgentManager().render()
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == "ai.lattice.daemon"
    daemon = Path(plist["ProgramArguments"][0])
    assert daemon.is_absolute() and daemon.name == "lattice-daemon"
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert isinstance(plist["ThrottleInterval"], int) and plist["ThrottleInterval"] >= 5
    assert plist["ProcessType"] == "Background"
    log_dir = get_paths().log_dir
    assert Path(plist["StandardOutPath"]).parent == log_dir
    assert Path(plist["StandardErrorPath"]).parent == log_dir
    assert plist["EnvironmentVariables"]["LATTICE_HOME"] == str(lattice_home)


@linux_only
def test_install_without_user_manager_fails_clearly(
        run_ctl: RunCtl, systemctl_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SYSTEMD_STATE", "offline")
    result = run_ctl("service", "install")
    assert result.exit_code != 0
    assert "no user service manager here (systemd user session not running" in result.stderr
    assert "lattice-ctl daemon start" in result.stderr
    assert not SystemdUserManager().unit_file.exists()  # nothing half-installed
    as_json = run_ctl("--json", "service", "install")
    assert as_json.exit_code != 0
    assert stdout_json(as_json)["code"] == "no_service_manager"


@linux_only
def test_status_reports_not_installed(run_ctl: RunCtl, systemctl_log: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SYSTEMD_STATE", "offline")
    result = run_ctl("service", "status")
    assert result.exit_code == 0
    assert "not installed" in result.stdout
    data = stdout_json(run_ctl("--json", "service", "status"))
    assert data["installed"] is False and data["active"] is False
    assert data["available"] is False and data["manager"] == "systemd"
    assert service_manager.installed() is False


@linux_only
def test_install_then_uninstall_drive_systemctl(run_ctl: RunCtl, systemctl_log: Path) -> None:
    result = run_ctl("--json", "service", "install", "--timeout", "0.1")
    assert result.exit_code == 0, result.stderr
    data = stdout_json(result)
    unit = Path(data["unitFile"])
    assert unit == Path(os.environ["XDG_CONFIG_HOME"]) / "systemd/user/lattice-daemon.service"
    assert "Restart=on-failure" in unit.read_text()
    assert data["installed"] is True and data["answering"] is False
    calls = systemctl_log.read_text().splitlines()
    assert calls.index("--user daemon-reload") < calls.index(
        "--user enable --now lattice-daemon.service")
    assert service_manager.installed() is True

    systemctl_log.write_text("")
    removed = run_ctl("--json", "service", "uninstall")
    assert removed.exit_code == 0 and stdout_json(removed)["removed"] is True
    assert "--user disable --now lattice-daemon.service" in systemctl_log.read_text()
    assert not unit.exists()
    again = run_ctl("service", "uninstall")
    assert again.exit_code == 0 and "not installed" in again.stdout


def test_print_shows_the_unit_without_installing(run_ctl: RunCtl, systemctl_log: Path) -> None:
    result = run_ctl("service", "install", "--print")
    assert result.exit_code == 0
    expected = "ExecStart=" if sys.platform.startswith("linux") else "<key>Label</key>"
    assert expected in result.stdout
    assert json.loads(run_ctl("--json", "service", "install", "--dry-run").stdout)["content"]
    assert systemctl_log.read_text() == ""  # no service-manager call at all
    assert not service_manager.installed()


@linux_only
def test_install_takes_over_from_a_detached_daemon(
        run_ctl: RunCtl, systemctl_log: Path, fake_daemon: FakeControlServer) -> None:
    # A daemon from `daemon start` holds the lock: the service's own would exit 73.
    # pid 0: the stand-in has no process to wait for once it has been asked to stop.
    fake_daemon.answer("GET /v1/ping", 200, ping_body(pid=0))
    fake_daemon.answer("POST /v1/shutdown", 200, {"ok": True})
    result = run_ctl("service", "install", "--timeout", "2")
    assert result.exit_code == 0, result.stderr
    asked = [route for route, _ in fake_daemon.requests]
    assert "POST /v1/shutdown" in asked
    assert "Stopped the daemon started by `lattice-ctl daemon start`" in result.stderr
    assert "--user enable --now lattice-daemon.service" in systemctl_log.read_text()


FAKE_LAUNCHCTL = """#!/bin/sh
# Records each call; keeps "loaded" in a state file like launchd's gui/<uid> domain.
echo "$*" >> "$FAKE_LAUNCHCTL_LOG"
loaded="$FAKE_LAUNCHCTL_LOG.loaded"
case "$1" in
  print) case "$2" in */ai.lattice.daemon) [ -f "$loaded" ] && echo "state = running" ;
         [ -f "$loaded" ] ;; *) exit 0 ;; esac ;;
  bootstrap) touch "$loaded" ;;
  bootout) rm -f "$loaded" ;;
  *) exit 0 ;;
esac
"""


def test_launch_agent_install_and_uninstall_drive_launchctl(
        lattice_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "launchctl"
    fake.write_text(FAKE_LAUNCHCTL)
    fake.chmod(0o755)
    log = tmp_path / "launchctl.log"
    monkeypatch.setenv("FAKE_LAUNCHCTL_LOG", str(log))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    manager = LaunchAgentManager(launchctl=str(fake))
    target = f"gui/{os.getuid()}/ai.lattice.daemon"

    assert manager.status().installed is False
    manager.install()
    plist_path = tmp_path / "home/Library/LaunchAgents/ai.lattice.daemon.plist"
    assert manager.unit_file == plist_path and plist_path.is_file()
    assert plistlib.loads(plist_path.read_bytes())["Label"] == "ai.lattice.daemon"
    assert f"bootstrap gui/{os.getuid()} {plist_path}" in log.read_text()
    assert get_paths().log_dir.is_dir()  # StandardOutPath's directory must exist
    status = manager.status()
    assert status.installed and status.active and status.available

    calls_before = len(log.read_text().splitlines())
    manager.install()  # a reinstall (upgrade) unloads the old definition first
    reinstall = log.read_text().splitlines()[calls_before:]
    assert reinstall.index(f"bootout {target}") < reinstall.index(
        f"bootstrap gui/{os.getuid()} {plist_path}")

    manager.stop()
    assert f"kill SIGTERM {target}" in log.read_text()
    assert manager.uninstall() is True
    assert not plist_path.exists() and manager.status().active is False
    assert manager.uninstall() is False


def test_an_unsupported_platform_says_to_use_daemon_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    status = service_manager.status()
    assert status.manager == "none" and not status.available and not status.installed
    assert "run `lattice-ctl daemon start` instead" in status.detail
    with pytest.raises(service_manager.ServiceUnavailable, match="not supported"):
        service_manager.install()
