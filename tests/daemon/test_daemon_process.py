"""The daemon as a real process, against a real gateway process and the Ollama test server:
exit codes, the single-instance lock, reload, signals and drain, revocation, reconnects."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lattice_daemon import exitcodes
from lattice_daemon.paths import Paths, get_paths
from tests.daemon.support import (
    DaemonProcess,
    PairedRuntime,
    control_request,
    pair_runtime,
    ping,
    runtime_status,
    write_config,
)
from tests.servers import run_ollama_server
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:3b"


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    with run_gateway(None, poll_window_seconds=2, presence_window_seconds=1) as gw:
        yield gw


@pytest.fixture
def ollama() -> Iterator[Any]:
    with run_ollama_server(models=[MODEL]) as server:
        yield server


@pytest.fixture
def paths(lattice_home: Path) -> Paths:
    return get_paths()


@pytest.fixture
def paired(gateway: GatewayProcess, ollama: Any, paths: Paths) -> PairedRuntime:
    runtime = pair_runtime(gateway, paths)
    write_config(paths, relay=runtime.relay, provider_url=ollama.url)
    return runtime


def chat(gateway: GatewayProcess, runtime: PairedRuntime, *, stream: bool = False,
         timeout: float = 10.0) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions",
                      headers={"authorization": f"Bearer {runtime.api_key}"},
                      json={"model": f"lattice:personal:{runtime.lattice_id}", "stream": stream,
                            "messages": [{"role": "user", "content": "hi"}]},
                      timeout=timeout)


def relay_state(paths: Paths) -> str:
    return str(ping(paths.socket)["relay"]["state"])


def run_once(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lattice_daemon", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- startup and lock


def test_version() -> None:
    result = run_once("--version")
    assert result.returncode == 0 and result.stdout.strip().startswith("lattice-daemon ")


def test_unknown_log_level_from_the_environment_is_a_usage_error(
        paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATTICE_LOG_LEVEL", "verbose")  # argparse never checks a default
    result = run_once()
    assert result.returncode == exitcodes.USAGE
    assert "LATTICE_LOG_LEVEL must be one of debug, info, warning, error" in result.stderr
    assert "Traceback" not in result.stderr


def test_unusable_config_exits_with_config_code(paths: Paths) -> None:
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text("[provider\nkind = ")
    result = run_once()
    assert result.returncode == exitcodes.CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "daemon.toml" in lines[0] and "config error" in lines[0]


def test_invalid_setting_exits_with_config_code(paths: Paths) -> None:
    write_config(paths, provider_url="http://127.0.0.1:9", max_concurrency=0)
    result = run_once()
    assert result.returncode == exitcodes.CONFIG
    assert "max_concurrency" in result.stderr


@pytest.mark.parametrize(("settings", "named"), [
    ({"backoff_initial_seconds": 0}, "backoff_initial_seconds"),
    ({"backoff_initial_seconds": 5.0, "backoff_max_seconds": 1.0}, "backoff_initial_seconds"),
    ({"drain_seconds": float("inf")}, "drain_seconds"),
])
def test_unusable_timing_setting_exits_with_config_code(paired: PairedRuntime, paths: Paths,
                                                       settings: dict[str, float],
                                                       named: str) -> None:
    # Checked up front: a paired daemon would otherwise die with a traceback (exit 1,
    # restarted forever), or wait forever for its drain.
    write_config(paths, relay=paired.relay, provider_url="http://127.0.0.1:9", **settings)
    result = run_once()
    assert result.returncode == exitcodes.CONFIG, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("section", "line", "named"), [
    ("provider", "url = 5", "[provider] url must be a string"),
    ("provider", 'first_token_timeout = "5m"', "[provider] first_token_timeout must be a number"),
    ("provider", 'allowed_models = "llama3.2"', "[provider] allowed_models must be a list"),
    ("daemon", 'log_prompts = "false"', "[daemon] log_prompts must be true or false"),
    ("provider", 'url = "http://[::1"', "[provider] provider URL 'http://[::1' is not a valid"),
])
def test_a_setting_of_the_wrong_type_exits_with_config_code(
        paths: Paths, section: str, line: str, named: str) -> None:
    # Not a traceback (exit 1: the service manager restarts it forever), and never
    # silently taken: the string "false" is truthy and would log every prompt.
    paths.config_dir.mkdir(parents=True, mode=0o700)
    paths.config_file.write_text(f"[{section}]\n{line}\n")
    paths.config_file.chmod(0o600)
    result = run_once(timeout=10)
    assert result.returncode == exitcodes.CONFIG, result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_readable_config_and_key_are_made_private_at_start_and_reload(
        paired: PairedRuntime, paths: Paths) -> None:
    def loosen() -> None:  # as a copy, a restore or an editor may leave them
        paths.config_dir.chmod(0o755)
        paths.config_file.chmod(0o644)
        paths.key_file.chmod(0o644)

    def assert_private() -> None:
        assert stat.S_IMODE(paths.config_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(paths.config_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(paths.key_file.stat().st_mode) == 0o600

    loosen()
    with DaemonProcess(paths).start():
        assert_private()
        log = paths.log_file.read_text()
        assert f"{paths.config_file} had mode 0644, which let other users read it" in log
        assert paired.relay.daemon_token not in log
        loosen()
        assert control_request(paths.socket, "POST", "/v1/reload").status == 200
        assert_private()


def test_a_malformed_relay_url_exits_with_config_code(paired: PairedRuntime,
                                                     paths: Paths) -> None:
    from dataclasses import replace

    write_config(paths, relay=replace(paired.relay, relay_url="http://[::1"),
                 provider_url="http://127.0.0.1:9")
    result = run_once(timeout=10)
    assert result.returncode == exitcodes.CONFIG, result.stderr
    assert "[relay] relay_url must be an https:// or http:// URL" in result.stderr


def test_a_socket_path_too_long_for_unix_sockets_is_named_with_the_fix(
        paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(paths, provider_url="http://127.0.0.1:9")
    too_long = paths.runtime_dir / ("s" * 120 + ".sock")
    monkeypatch.setenv("LATTICE_SOCKET", str(too_long))
    result = run_once()
    assert result.returncode == exitcodes.FAILURE
    assert f"cannot listen on {too_long}" in result.stderr
    assert "set LATTICE_SOCKET to another (shorter) path" in result.stderr


def test_second_instance_is_refused(paths: Paths) -> None:
    write_config(paths, provider_url="http://127.0.0.1:9")
    with DaemonProcess(paths).start() as first:
        result = run_once()
        assert result.returncode == exitcodes.ALREADY_RUNNING
        assert "already running" in result.stderr
        assert ping(paths.socket)["pid"] == first.process.pid  # the first one is unharmed
        first.signal(signal.SIGTERM)
        assert first.wait() == exitcodes.OK
    assert not paths.socket.exists()


def test_unpaired_daemon_says_so_and_files_are_private(paths: Paths) -> None:
    write_config(paths, provider_url="http://127.0.0.1:9")
    with DaemonProcess(paths).start() as daemon:
        answer = ping(paths.socket)
        assert answer["relay"]["state"] == "not_paired"
        assert answer["pid"] == daemon.process.pid
        status = control_request(paths.socket, "GET", "/v1/status").body
        assert status["runtime"] is None and status["provider"]["ok"] is False
        assert stat.S_IMODE(paths.socket.stat().st_mode) == 0o600
        assert stat.S_IMODE(paths.runtime_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(paths.log_file.stat().st_mode) == 0o600
        assert control_request(paths.socket, "POST", "/v1/shutdown").body["ok"] is True
        assert daemon.wait() == exitcodes.OK


# -------------------------------------------------------------------- serving


def test_reload_picks_up_a_new_pairing_at_once(gateway: GatewayProcess, ollama: Any,
                                                       paths: Paths) -> None:
    write_config(paths, provider_url=ollama.url)
    with DaemonProcess(paths).start() as daemon:
        assert relay_state(paths) == "not_paired"
        runtime = pair_runtime(gateway, paths)  # what `lattice-ctl relay connect` does
        write_config(paths, relay=runtime.relay, provider_url=ollama.url)
        started = time.monotonic()
        answer = control_request(paths.socket, "POST", "/v1/reload").body
        assert answer["ok"] is True and answer["relay"]["state"] == "connected"
        wait_until(lambda: runtime_status(gateway, runtime) == "reachable", timeout=2.0,
                   what="runtime reachable")
        # Budget: 1 s; typically ~0.1 s here. The margin absorbs a loaded CI box.
        assert time.monotonic() - started < 2.0
        response = chat(gateway, runtime)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == \
            "Hello from the test server!"
        streamed = chat(gateway, runtime, stream=True)
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
        log_text = paths.log_file.read_text()
        assert runtime.relay.daemon_token not in log_text and "hi" not in log_text.split()
        cmdline = Path(f"/proc/{daemon.process.pid}/cmdline").read_bytes()
        assert runtime.relay.daemon_token.encode() not in cmdline


def test_sigterm_drains_the_in_flight_job_then_exits(gateway: GatewayProcess, ollama: Any,
                                                    paired: PairedRuntime, paths: Paths) -> None:
    ollama.configure(chunks=[f"w{i} " for i in range(10)], chunk_delay=0.1)  # ~1 s
    with DaemonProcess(paths).start() as daemon:
        wait_until(lambda: relay_state(paths) == "connected", timeout=5)
        results: list[httpx.Response] = []
        app = threading.Thread(target=lambda: results.append(chat(gateway, paired,
                                                                  stream=True)))
        app.start()
        wait_until(lambda: control_request(paths.socket, "GET", "/v1/status")
                   .body["jobs"]["inFlight"] == 1, timeout=5, what="job in flight")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == exitcodes.OK
        app.join(10)
        assert results and results[0].status_code == 200
        text = results[0].text
        assert "w9" in text and text.rstrip().endswith("data: [DONE]")  # finished, not cut
        # Deregistered on the way out: offline at once, not after the presence window.
        assert runtime_status(gateway, paired) == "offline"


def test_second_signal_exits_at_once(gateway: GatewayProcess, ollama: Any,
                                     paired: PairedRuntime, paths: Paths) -> None:
    ollama.configure(chunks=["slow "] * 10, chunk_delay=3.0)
    with DaemonProcess(paths).start() as daemon:
        wait_until(lambda: relay_state(paths) == "connected", timeout=5)
        app = threading.Thread(target=lambda: chat(gateway, paired, stream=True), daemon=True)
        app.start()
        wait_until(lambda: control_request(paths.socket, "GET", "/v1/status")
                   .body["jobs"]["inFlight"] == 1, timeout=5, what="job in flight")
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: "draining" in paths.log_file.read_text(), timeout=3)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=5) == exitcodes.OK
        assert time.monotonic() - started < 2.0


def test_app_disconnect_aborts_the_provider_call(gateway: GatewayProcess, ollama: Any,
                                                 paired: PairedRuntime, paths: Paths) -> None:
    ollama.configure(chunks=["tok "] * 100, chunk_delay=0.1)
    with DaemonProcess(paths).start():
        wait_until(lambda: relay_state(paths) == "connected", timeout=5)
        with httpx.stream("POST", gateway.url + "/v1/chat/completions",
                          headers={"authorization": f"Bearer {paired.api_key}"},
                          json={"model": f"lattice:personal:{paired.lattice_id}", "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]},
                          timeout=10) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            while "tok" not in next(lines):
                pass
        # The app went away: gateway -> cancel notice -> daemon closes the provider stream.
        wait_until(lambda: ollama.stats()["aborts"] >= 1, timeout=5, what="provider abort")
        wait_until(lambda: control_request(paths.socket, "GET", "/v1/status")
                   .body["jobs"]["inFlight"] == 0, timeout=3, what="slot freed")


def test_revocation_means_repair_required_until_a_new_pairing(
        gateway: GatewayProcess, ollama: Any, paired: PairedRuntime, paths: Paths) -> None:
    with DaemonProcess(paths).start() as daemon:
        wait_until(lambda: relay_state(paths) == "connected", timeout=5)
        revoked = httpx.delete(f"{gateway.url}/v1/personal-runtimes/{paired.lattice_id}",
                               headers={"x-api-key": paired.api_key})
        assert revoked.status_code == 200
        wait_until(lambda: relay_state(paths) == "repair_required", timeout=5)
        relay = ping(paths.socket)["relay"]
        assert "re-pair required" in relay["lastError"]
        assert daemon.process.poll() is None  # stays up, says so
        # A new pairing, then a reload: serving again without a restart.
        fresh = pair_runtime(gateway, paths, name="second machine")
        write_config(paths, relay=fresh.relay, provider_url=ollama.url)
        answer = control_request(paths.socket, "POST", "/v1/reload").body
        assert answer["relay"]["state"] == "connected"
        assert chat(gateway, fresh).status_code == 200
        assert paths.log_file.read_text().count("polling stopped") == 1  # no retry loop


def test_reconnects_after_the_gateway_restarts(gateway: GatewayProcess, ollama: Any,
                                               paired: PairedRuntime, paths: Paths) -> None:
    with DaemonProcess(paths).start():
        wait_until(lambda: relay_state(paths) == "connected", timeout=5)
        gateway.restart()  # sessions live in memory: the old one is gone
        wait_until(lambda: runtime_status(gateway, paired) == "reachable", timeout=5,
                   what="reachable again")
        response = chat(gateway, paired)
        assert response.status_code == 200, response.text
        assert relay_state(paths) == "connected"


def test_bad_config_on_reload_is_refused_and_the_old_one_keeps_serving(
        gateway: GatewayProcess, ollama: Any, paired: PairedRuntime, paths: Paths) -> None:
    with DaemonProcess(paths).start():
        wait_until(lambda: relay_state(paths) == "connected", timeout=5)
        paths.config_file.write_text("[daemon]\nmax_concurrency = 'many'\n")
        answer = control_request(paths.socket, "POST", "/v1/reload")
        assert answer.status == 400 and answer.body["error"]["code"] == "config_error"
        assert "max_concurrency" in answer.body["error"]["message"]
        assert relay_state(paths) == "connected"
        assert chat(gateway, paired).status_code == 200


def test_relay_disconnect_deregisters_at_once(gateway: GatewayProcess, paired: PairedRuntime,
                                             paths: Paths) -> None:
    with DaemonProcess(paths).start() as daemon:
        wait_until(lambda: runtime_status(gateway, paired) == "reachable", timeout=5)
        answer = control_request(paths.socket, "POST", "/v1/relay/disconnect")
        assert answer.status == 200 and answer.body["ok"] is True
        assert relay_state(paths) == "not_paired"
        assert runtime_status(gateway, paired) == "offline"
        assert daemon.process.poll() is None
        # "Not paired" with the forgotten runtime still listed would contradict itself
        assert control_request(paths.socket, "GET", "/v1/status").body["runtime"] is None


def test_sighup_reloads(gateway: GatewayProcess, ollama: Any, paths: Paths) -> None:
    write_config(paths, provider_url=ollama.url)
    with DaemonProcess(paths).start() as daemon:
        assert relay_state(paths) == "not_paired"
        runtime = pair_runtime(gateway, paths)
        write_config(paths, relay=runtime.relay, provider_url=ollama.url)
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: relay_state(paths) == "connected", timeout=5)
        assert chat(gateway, runtime).status_code == 200
        daemon.signal(signal.SIGINT)  # SIGINT stops like SIGTERM
        assert daemon.wait() == exitcodes.OK


def test_a_pairing_without_its_key_is_a_config_error(gateway: GatewayProcess,
                                                    paired: PairedRuntime, paths: Paths) -> None:
    paths.key_file.unlink()
    result = run_once()
    assert result.returncode == exitcodes.CONFIG
    assert "key file" in result.stderr and "relay connect --replace" in result.stderr
    assert not paths.key_file.exists()  # no new key was made behind the user's back


def test_disconnect_with_a_job_in_flight_answers_the_app_at_once(
        gateway: GatewayProcess, ollama: Any, paired: PairedRuntime, paths: Paths) -> None:
    ollama.configure(chunks=["slow "] * 10, chunk_delay=1.0)
    with DaemonProcess(paths).start():
        wait_until(lambda: relay_state(paths) == "connected", timeout=5)
        results: list[httpx.Response] = []
        app = threading.Thread(target=lambda: results.append(chat(gateway, paired)))
        app.start()
        wait_until(lambda: control_request(paths.socket, "GET", "/v1/status")
                   .body["jobs"]["inFlight"] == 1, timeout=5, what="job in flight")
        started = time.monotonic()
        assert control_request(paths.socket, "POST", "/v1/relay/disconnect").body["ok"]
        app.join(5)
        assert results, "the app's request did not finish"
        assert time.monotonic() - started < 3
        assert results[0].status_code == 503
        assert results[0].json()["error"]["code"] == "runtime_unreachable"


def test_gateway_crash_shows_reconnecting_then_recovers(gateway: GatewayProcess, ollama: Any,
                                                        paired: PairedRuntime,
                                                        paths: Paths) -> None:
    with DaemonProcess(paths).start() as daemon:
        wait_until(lambda: relay_state(paths) == "connected", timeout=5)
        gateway.kill()  # the held poll's connection drops; nothing answers any more
        wait_until(lambda: relay_state(paths) == "reconnecting", timeout=5)
        relay = ping(paths.socket)["relay"]
        assert relay["lastError"].startswith(("gateway unreachable", "connection to the"))
        assert relay["since"] is not None
        gateway.start()
        wait_until(lambda: relay_state(paths) == "connected", timeout=10,
                   what="connected again")
        assert chat(gateway, paired).status_code == 200
        log_text = paths.log_file.read_text()
        assert log_text.count("retrying until reconnected") <= 2  # once per outage
        assert daemon.process.poll() is None
