"""`lattice-ctl doctor` against broken setups: every failure is named, with its fix.

The daemon is the CLI tests' fake control socket, the gateway a stub that only answers
/healthz (with a chosen Date header), the provider the fake Ollama; a fully working setup
with the real gateway and daemon is in test_doctor_e2e.py.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lattice_daemon.config import (
    DaemonConfig,
    ProviderConfig,
    RelayConfig,
    load_or_create_keypair,
    save_config,
)
from lattice_daemon.paths import get_paths
from tests.ctl.conftest import RunCtl, stdout_json
from tests.ctl.fake_control import FakeControlServer, status_body
from tests.servers import run_ollama_server
from tests.support.net import closed_port

DAEMON_TOKEN = "lrdt_v1_" + "DoctorNeverPrintsThis" * 2


class StubGateway:
    """Answers GET /healthz with 200 and a Date header ``clock_offset`` seconds off."""

    def __init__(self) -> None:
        self.clock_offset = 0.0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def date_time_string(self, timestamp: float | None = None) -> str:
                return formatdate(time.time() + stub.clock_offset, usegmt=True)

            def do_GET(self) -> None:
                body = b'{"ok": true}'
                self.send_response(200 if self.path == "/healthz" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_gateway() -> Iterator[StubGateway]:
    gateway = StubGateway()
    yield gateway
    gateway.close()


def write_config(gateway: str | None, provider_url: str, default_model: str | None = None
                 ) -> None:
    paths = get_paths()
    relay = None if gateway is None else RelayConfig(
        gateway=gateway, relay_url=f"{gateway}/v1/relay", lattice_id="rt_doc",
        account_id="acc_1", display_name="Doctor's laptop", execution_backend="local-model",
        daemon_token=DAEMON_TOKEN, gateway_public_key="pk",
        paired_at="2026-01-01T00:00:00.000Z")
    save_config(paths, DaemonConfig(relay=relay, provider=ProviderConfig(
        kind="ollama", url=provider_url, default_model=default_model)))
    if relay is not None:
        load_or_create_keypair(paths)


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in data["checks"]}


def dead_url() -> str:
    return f"http://127.0.0.1:{closed_port()}"  # nothing listens there


def test_broken_setup_names_each_failure_with_a_fix(run_ctl: RunCtl) -> None:
    write_config(gateway=None, provider_url=dead_url())
    result = run_ctl("doctor", "--timeout", "1")
    assert result.exit_code == 1
    text = result.stdout
    assert "not paired" in text and "lattice-ctl relay connect --gateway" in text
    assert "the daemon is not running" in text and "lattice-ctl daemon start" in text
    assert "not running" in text and "ollama serve" in text
    assert "3 check(s) failed: Pairing, Daemon, Provider." in text

    data = stdout_json(run_ctl("--json", "doctor", "--timeout", "1"))
    checks = by_name(data)
    assert data["ok"] is False
    assert [c["name"] for c in data["checks"]] == [
        "config", "paired", "daemon", "relay", "gateway", "clock", "provider", "model"]
    assert {n for n, c in checks.items() if c["status"] == "fail"} == {
        "paired", "daemon", "provider"}
    assert all(checks[n]["fix"] for n in ("paired", "daemon", "provider"))
    assert checks["relay"]["status"] == checks["gateway"]["status"] == "skip"


def test_loose_file_modes_and_a_broken_config(run_ctl: RunCtl) -> None:
    write_config(gateway="http://127.0.0.1:9", provider_url=dead_url())
    paths = get_paths()
    paths.config_file.chmod(0o644)
    paths.key_file.chmod(0o640)
    checks = by_name(stdout_json(run_ctl("--json", "doctor", "--timeout", "0.5")))
    assert checks["config"]["status"] == "fail"
    assert "mode 0644" in checks["config"]["detail"]
    assert f"chmod 600 '{paths.config_file}'" in checks["config"]["fix"]
    assert f"chmod 600 '{paths.key_file}'" in checks["config"]["fix"]

    paths.config_file.write_text("[relay\nthis is not toml")
    paths.config_file.chmod(0o600)
    result = run_ctl("--json", "doctor", "--timeout", "0.5")
    checks = by_name(stdout_json(result))
    assert result.exit_code == 1
    assert checks["config"]["status"] == "fail" and "cannot read" in checks["config"]["detail"]
    assert "lattice-ctl relay connect" in checks["config"]["fix"]
    assert checks["paired"]["status"] == "skip"


def test_a_paired_config_without_its_key(run_ctl: RunCtl) -> None:
    write_config(gateway="http://127.0.0.1:9", provider_url=dead_url())
    get_paths().key_file.unlink()
    checks = by_name(stdout_json(run_ctl("--json", "doctor", "--timeout", "0.5")))
    assert "private key" in checks["config"]["detail"] and "missing" in checks["config"]["detail"]
    assert "--replace" in checks["config"]["fix"]


def test_unreachable_gateway_names_the_proxy_without_its_password(
        run_ctl: RunCtl, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = dead_url()
    write_config(gateway=gateway, provider_url=dead_url())
    result = run_ctl("--json", "doctor", "--timeout", "1")
    gateway_check = by_name(stdout_json(result))["gateway"]
    assert gateway_check["status"] == "fail"
    assert f"{gateway} is not reachable" in gateway_check["detail"]
    assert "network" in gateway_check["fix"]

    proxy_port = closed_port()
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("HTTP_PROXY", f"http://alice:Pr0xySecret@127.0.0.1:{proxy_port}")
    result = run_ctl("--json", "doctor", "--timeout", "1")
    gateway_check = by_name(stdout_json(result))["gateway"]
    assert gateway_check["status"] == "fail"
    assert f"through the proxy http://***@127.0.0.1:{proxy_port} (HTTP_PROXY)" in \
        gateway_check["detail"]
    assert "NO_PROXY" in gateway_check["fix"]
    assert "Pr0xySecret" not in result.stdout + result.stderr
    assert DAEMON_TOKEN not in result.stdout + result.stderr


def test_clock_skew_beyond_a_minute_fails(run_ctl: RunCtl, stub_gateway: StubGateway) -> None:
    write_config(gateway=stub_gateway.url, provider_url=dead_url())
    checks = by_name(stdout_json(run_ctl("--json", "doctor", "--timeout", "2")))
    assert checks["gateway"]["status"] == "pass"
    assert checks["clock"]["status"] == "pass"

    stub_gateway.clock_offset = 600.0  # the gateway is 10 min ahead: we are behind
    checks = by_name(stdout_json(run_ctl("--json", "doctor", "--timeout", "2")))
    assert checks["clock"]["status"] == "fail"
    behind = re.search(r"this machine is (\d+) s behind the gateway", checks["clock"]["detail"])
    assert behind and 595 <= int(behind.group(1)) <= 605, checks["clock"]["detail"]
    assert "ntp" in checks["clock"]["fix"].lower() or "time automatically" in \
        checks["clock"]["fix"]


@pytest.mark.parametrize(("relay", "status", "says", "fix"), [
    ({"state": "connected", "gateway": "http://gw", "lastPollAt": "2026-01-01T00:00:00.000Z"},
     "pass", "connected to http://gw", None),
    ({"state": "reconnecting", "since": "2026-01-01T00:00:00.000Z",
      "lastError": "gateway unreachable: connection refused"},
     "fail", "reconnecting since 2026-01-01T00:00:00.000Z: gateway unreachable", "retries"),
    ({"state": "repair_required", "lastError": "runtime revoked: re-pair required"},
     "fail", "re-pair required: runtime revoked", "--replace"),
])
def test_relay_state_from_the_daemon(run_ctl: RunCtl, fake_daemon: FakeControlServer,
                                     relay: dict[str, Any], status: str, says: str,
                                     fix: str | None) -> None:
    write_config(gateway=dead_url(), provider_url=dead_url())
    fake_daemon.answer("GET /v1/status", 200, status_body(relay=relay))
    checks = by_name(stdout_json(run_ctl("--json", "doctor", "--timeout", "1")))
    assert checks["daemon"]["status"] == "pass"
    assert checks["relay"]["status"] == status
    assert says in checks["relay"]["detail"]
    if fix:
        assert fix in checks["relay"]["fix"]


def test_missing_default_model_says_how_to_pull_it(run_ctl: RunCtl) -> None:
    with run_ollama_server(models=["qwen3:latest"]) as ollama:
        write_config(gateway=None, provider_url=ollama.url, default_model="llama3.2")
        checks = by_name(stdout_json(run_ctl("--json", "doctor", "--timeout", "2")))
        assert checks["provider"]["status"] == "pass"
        assert checks["provider"]["detail"].endswith(": running, 1 model(s)")  # said once
        assert checks["model"]["status"] == "fail"
        assert "llama3.2 is not on the provider" in checks["model"]["detail"]
        assert checks["model"]["fix"] == "ollama pull llama3.2"

        write_config(gateway=None, provider_url=ollama.url, default_model="qwen3")
        checks = by_name(stdout_json(run_ctl("--json", "doctor", "--timeout", "2")))
        assert checks["model"]["status"] == "pass"  # "qwen3" is "qwen3:latest"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd unit path")
def test_daemon_down_with_the_service_installed_points_at_its_log(
        run_ctl: RunCtl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    unit = tmp_path / "xdg" / "systemd" / "user" / "lattice-daemon.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    write_config(gateway=None, provider_url=dead_url())
    checks = by_name(stdout_json(run_ctl("--json", "doctor", "--timeout", "0.5")))
    assert checks["daemon"]["status"] == "fail"
    assert "service is installed but not running" in checks["daemon"]["fix"]
    assert "journalctl --user -u lattice-daemon" in checks["daemon"]["fix"]


def test_embedded_engine_not_installed_says_the_install_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import providers.embedded
    from lattice_ctl.commands.doctor import check_engine
    from lattice_daemon.config import AssistantConfig

    monkeypatch.setattr(providers.embedded, "engine_installed", lambda: False)
    checks = check_engine(DaemonConfig(provider=ProviderConfig(kind="embedded"),
                                       assistant=AssistantConfig(model="/m.gguf")))
    assert [(c.name, c.status) for c in checks] == [
        ("engine", "fail"), ("model", "skip"), ("generation", "skip")]
    assert checks[0].fix is not None
    assert providers.embedded.INSTALL_COMMAND in checks[0].fix
