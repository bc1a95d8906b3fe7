"""`lattice-ctl --version`, the not-running message, --json purity and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lattice_ctl.control_client import NOT_RUNNING_MESSAGE
from lattice_protocol._version import __version__
from tests.ctl.conftest import RunCtl, stdout_json, write_config_text

CTL = [str(Path(sys.executable).parent / "lattice-ctl")]


def test_version_prints_the_package_version(lattice_home: Path) -> None:
    # How fast: benchmarks/ctl_latency.py (budget 100 ms); what keeps it fast is
    # checked below (what it imports).
    done = subprocess.run([*CTL, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout == f"lattice-ctl {__version__}\n"
    via_click = subprocess.run([*CTL, "--json", "--version"], capture_output=True, text=True,
                               check=True)
    assert via_click.stdout == done.stdout  # the fast path says what click says


def test_bare_version_is_answered_before_click_loads(lattice_home: Path) -> None:
    # lattice_protocol's package init is light: the version alone, no schema or PyNaCl.
    code = ("import sys\nsys.argv = ['lattice-ctl', '--version']\nimport lattice_ctl\n"
            "lattice_ctl.main()\nprint('LOADED=' + ','.join(sorted(m for m in sys.modules if "
            "m in ('click', 'nacl', 'typing') or m.startswith(('lattice_', 'providers')))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines() == [
        f"lattice-ctl {__version__}",
        "LOADED=lattice_ctl,lattice_protocol,lattice_protocol._version"]


def test_version_does_not_import_httpx_rich_or_nacl(lattice_home: Path) -> None:
    code = ("import sys\nfrom lattice_ctl.cli import cli\n"
            "try:\n    cli.main(['--version'], standalone_mode=False)\nexcept SystemExit: pass\n"
            "print('HEAVY=' + ','.join(m for m in ('httpx', 'rich', 'providers', 'nacl')"
            " if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip().splitlines()[-1] == "HEAVY="


def test_ping_when_not_running_says_so_and_how_to_start(run_ctl: RunCtl) -> None:
    result = run_ctl("ping")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert NOT_RUNNING_MESSAGE in result.stderr
    assert "lattice-ctl daemon start" in result.stderr


def test_ping_json_when_not_running_is_pure_json(run_ctl: RunCtl) -> None:
    result = run_ctl("--json", "ping")
    assert result.exit_code == 1
    data = stdout_json(result)
    assert data["ok"] is False and data["running"] is False
    assert data["code"] == "daemon_not_running"


def test_ping_subprocess_not_running_exit_code_and_stderr(lattice_home: Path) -> None:
    done = subprocess.run([*CTL, "ping"], capture_output=True, text=True,
                          env={**os.environ, "LATTICE_HOME": str(lattice_home)})
    assert done.returncode == 1
    assert "not running" in done.stderr and "lattice-ctl daemon start" in done.stderr
    assert done.stdout == ""


def test_status_works_without_daemon_from_config(run_ctl: RunCtl) -> None:
    result = run_ctl("status")
    assert result.exit_code == 4
    assert "Not paired" in result.stdout
    assert "not running" in result.stdout
    data = stdout_json(run_ctl("--json", "status"))
    assert data["running"] is False and data["state"] == "not_paired"


def test_daemon_status_exits_3_when_not_running(run_ctl: RunCtl) -> None:
    result = run_ctl("daemon", "status")
    assert result.exit_code == 3
    assert "not running" in result.stdout
    assert stdout_json(run_ctl("--json", "daemon", "status")) == {"running": False}


def test_daemon_stop_when_not_running_is_a_no_op(run_ctl: RunCtl) -> None:
    result = run_ctl("--json", "daemon", "stop")
    assert result.exit_code == 0
    assert stdout_json(result)["wasRunning"] is False


def test_daemon_logs_without_a_log_file_fails_clearly(run_ctl: RunCtl) -> None:
    result = run_ctl("daemon", "logs")
    assert result.exit_code == 1
    assert "no log file yet" in result.stderr


def test_daemon_logs_prints_the_last_lines(run_ctl: RunCtl, lattice_home: Path) -> None:
    from lattice_daemon.paths import get_paths

    log = get_paths().log_file
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    result = run_ctl("daemon", "logs", "-n", "3")
    assert result.exit_code == 0
    assert result.stdout == "line 47\nline 48\nline 49\n"
    data = stdout_json(run_ctl("--json", "daemon", "logs", "-n", "2"))
    assert data == {"logFile": str(log), "lines": ["line 48", "line 49"]}
    none = run_ctl("daemon", "logs", "-n", "0")
    assert none.exit_code == 0 and none.stdout == ""  # like tail -n 0, not the whole file
    assert stdout_json(run_ctl("--json", "daemon", "logs", "-n", "0"))["lines"] == []
    assert run_ctl("daemon", "logs", "-n", "-3").exit_code == 2


def test_unknown_command_is_a_usage_error(run_ctl: RunCtl) -> None:
    result = run_ctl("frobnicate")
    assert result.exit_code == 2


def test_json_output_is_valid_for_relay_status_unpaired(run_ctl: RunCtl) -> None:
    data = json.loads(run_ctl("--json", "relay", "status").stdout)
    assert data == {"paired": False, "daemon": {"running": False}}


def test_json_flag_after_the_subcommand_works_like_the_global_one(run_ctl: RunCtl) -> None:
    # `lattice-ctl status --json`, as people type it (tailscale status --json).
    status = run_ctl("status", "--json")
    assert status.exit_code == 4, status.output  # not paired
    assert stdout_json(status)["state"] == "not_paired"
    assert stdout_json(run_ctl("relay", "status", "--json")) == {
        "paired": False, "daemon": {"running": False}}
    assert stdout_json(run_ctl("daemon", "status", "--json")) == {"running": False}
    ping = run_ctl("ping", "--json")
    assert ping.exit_code == 1 and stdout_json(ping)["code"] == "daemon_not_running"


def test_bracketed_words_in_messages_are_printed_not_taken_for_markup(
        run_ctl: RunCtl, lattice_home: Path) -> None:
    # rich ate "[provider]" as a style tag: "error:  url must be a string"
    write_config_text("[provider]\nurl = 5\n")
    result = run_ctl("status")
    assert result.exit_code == 1
    assert "error: [provider] url must be a string" in result.stderr
