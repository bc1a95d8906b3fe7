"""Faults on real processes: crashes, a dead provider, revocation, misuse of the socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any

import openai
import pytest

from lattice_daemon import exitcodes
from tests.e2e.conftest import MachineFactory
from tests.e2e.harness import (
    BIN,
    ctl,
    ctl_env,
    ctl_json,
    daemon_pid,
    home_paths,
    revoke_runtime,
    wait_relay_state,
    wait_runtime_status,
)
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e


def _in_background(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_daemon_sigkill_mid_request_fails_the_app_in_bounded_time(
        machine_factory: MachineFactory) -> None:
    machine = machine_factory("ollama", reply="never seen", first_byte_delay=30)
    control = machine.provider.control
    pid = daemon_pid(machine.home)
    client = machine.openai(timeout=30.0)
    thread, outcome = _in_background(lambda: client.chat.completions.create(
        model=machine.model, messages=[{"role": "user", "content": "hang"}]))
    wait_until(lambda: control.stats()["in_flight"] >= 1, timeout=5,
               what="the job to reach the provider")
    control.close()
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    thread.join(15)
    assert not thread.is_alive(), "the app's request hung after the daemon died"
    error = outcome.get("error")
    assert isinstance(error, openai.APIStatusError), outcome
    assert error.status_code in (503, 504), error
    assert error.code in ("runtime_unreachable", "runtime_timeout"), error
    assert time.monotonic() - killed_at < 12
    wait_runtime_status(machine.gateway_url, machine.key, machine.lattice_id, "offline",
                        timeout=5)


def test_provider_stopped_gives_provider_error_saying_so(machine_factory: MachineFactory
                                                         ) -> None:
    machine = machine_factory("ollama")
    machine.provider.stop()
    with pytest.raises(openai.APIStatusError) as info:
        machine.openai().chat.completions.create(
            model=machine.model, messages=[{"role": "user", "content": "anyone?"}])
    assert info.value.status_code == 502
    body = info.value.body if isinstance(info.value.body, dict) else {}
    error = body.get("error", body)
    assert error.get("code") == "provider_error"
    # Said for the app: no owner advice (`ollama serve`), no URL on the owner's machine.
    assert error.get("message") == "the runtime's local model server is not running"
    assert ctl(machine.home, "ping").returncode == 0  # the daemon itself is fine


def test_revoked_runtime_makes_status_say_repair_required(machine_factory: MachineFactory
                                                          ) -> None:
    machine = machine_factory("ollama")
    revoke_runtime(machine.gateway_url, machine.key, machine.lattice_id)
    wait_relay_state(machine.home, "repair_required", timeout=10)
    status = ctl(machine.home, "status")
    assert status.returncode == 6
    assert status.stdout.splitlines()[0] == "Re-pair required"
    with pytest.raises(openai.PermissionDeniedError) as info:
        machine.openai().chat.completions.create(
            model=machine.model, messages=[{"role": "user", "content": "hi"}])
    assert "revoked" in str(info.value)
    assert ctl(machine.home, "ping").returncode == 0  # stays up, says why


def test_second_daemon_on_the_same_config_is_refused(machine_factory: MachineFactory) -> None:
    machine = machine_factory("ollama")
    first = daemon_pid(machine.home)
    second = subprocess.run([str(BIN / "lattice-daemon")], env=ctl_env(machine.home),
                            capture_output=True, text=True, timeout=20,
                            stdin=subprocess.DEVNULL)
    assert second.returncode == exitcodes.ALREADY_RUNNING, second.stderr
    again = ctl(machine.home, "--json", "daemon", "start")
    assert again.returncode == 0
    assert ctl_json(machine.home, "ping")["pid"] == first
    assert '"alreadyRunning": true' in again.stdout


def _raw_exchange(path: str, payload: bytes) -> bytes:
    """Send raw bytes to the control socket; everything it answers until it closes."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def test_garbage_and_browser_requests_on_the_socket_are_refused(
        machine_factory: MachineFactory) -> None:
    machine = machine_factory("ollama", start=True)
    path = str(home_paths(machine.home).socket)
    garbage = _raw_exchange(path, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    assert garbage == b"" or garbage.startswith(b"HTTP/1.1 400")
    browser = _raw_exchange(path, b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n"
                                  b"Origin: https://evil.example\r\nConnection: close\r\n\r\n")
    assert browser.startswith(b"HTTP/1.1 403"), browser[:200]
    assert b"runtime" not in browser.split(b"\r\n\r\n", 1)[-1]  # no status leaked
    fetch = _raw_exchange(path, b"POST /v1/shutdown HTTP/1.1\r\nHost: x\r\n"
                                b"Sec-Fetch-Mode: no-cors\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
    assert fetch.startswith(b"HTTP/1.1 403"), fetch[:200]
    assert ctl(machine.home, "ping").returncode == 0  # still serving, not shut down
