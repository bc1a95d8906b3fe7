"""Real-process helpers for end-to-end tests: the app's HTTP calls, `lattice-ctl` as a
command, provider test servers as subprocesses, and a daemon started the documented way.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import wait_until

BIN = Path(sys.executable).parent
CTL = str(BIN / "lattice-ctl")
REPO = Path(__file__).resolve().parents[2]


# -- the app's side: the gateway's public API --------------------------------------------
def auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def create_runtime(gateway_url: str, key: str, name: str = "Test laptop",
                   backend: str = "local-model") -> dict[str, Any]:
    response = httpx.post(f"{gateway_url}/v1/personal-runtimes", headers=auth(key),
                          json={"displayName": name, "executionBackend": backend},
                          timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["runtime"]


def mint_bootstrap(gateway_url: str, key: str, lattice_id: str,
                   ttl_seconds: int | None = None) -> dict[str, Any]:
    body = {} if ttl_seconds is None else {"ttlSeconds": ttl_seconds}
    response = httpx.post(f"{gateway_url}/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                          headers=auth(key), json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def runtime_status(gateway_url: str, key: str, lattice_id: str) -> str:
    response = httpx.get(f"{gateway_url}/v1/personal-runtimes/{lattice_id}",
                         headers=auth(key), timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["runtime"]["status"])


def revoke_runtime(gateway_url: str, key: str, lattice_id: str) -> None:
    response = httpx.delete(f"{gateway_url}/v1/personal-runtimes/{lattice_id}",
                            headers=auth(key), timeout=10)
    assert response.status_code == 200, response.text


# -- lattice-ctl as a command ------------------------------------------------------------
def ctl_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["LATTICE_HOME"] = str(home)
    env.pop("LATTICE_SOCKET", None)
    env.pop("LATTICE_BOOTSTRAP_TOKEN", None)
    env.update(extra)
    return env


def ctl(home: Path, *args: str, input: str | None = None, timeout: float = 30.0,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `lattice-ctl ARGS...` with LATTICE_HOME=home; never raises on exit codes."""
    return subprocess.run([CTL, *args], capture_output=True, text=True, input=input,
                          timeout=timeout, env=env or ctl_env(home),
                          stdin=None if input is not None else subprocess.DEVNULL)


def ctl_json(home: Path, *args: str) -> Any:
    done = ctl(home, "--json", *args)
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"stdout of lattice-ctl {' '.join(args)} is not JSON: "
                             f"{done.stdout!r} (stderr {done.stderr!r})") from None


def run_command_string(home: Path, command: str, timeout: float = 30.0
                       ) -> subprocess.CompletedProcess[str]:
    """Execute the gateway's `command` string verbatim (as a user pastes it)."""
    argv = shlex.split(command)
    assert argv[0] == "lattice-ctl", command
    return subprocess.run([CTL, *argv[1:]], capture_output=True, text=True,
                          timeout=timeout, env=ctl_env(home), stdin=subprocess.DEVNULL)


# Short reconnect backoff and drain so fault tests finish in seconds.
FAST_DAEMON = {"backoff_initial_seconds": 0.1, "backoff_max_seconds": 0.5,
               "drain_seconds": 3.0}


def write_provider_config(home: Path, kind: str, url: str,
                          daemon: dict[str, Any] | None = None, **provider: Any) -> None:
    """Preset the provider (before `relay connect`, which keeps an existing provider)."""
    from lattice_daemon.config import DaemonConfig, DaemonSettings, ProviderConfig, save_config

    save_config(home_paths(home), DaemonConfig(
        provider=ProviderConfig(kind=kind, url=url, **provider),
        daemon=DaemonSettings(**{**FAST_DAEMON, **(daemon or {})})))


def write_assistant_config(home: Path, **assistant: Any) -> None:
    """Preset the embedded engine's settings and short test deadlines (before `relay
    connect`, which keeps them and fills in the model it finds)."""
    from lattice_daemon.config import (
        AssistantConfig,
        DaemonConfig,
        DaemonSettings,
        ProviderConfig,
        save_config,
    )

    save_config(home_paths(home), DaemonConfig(
        provider=ProviderConfig(first_token_timeout=60.0, idle_timeout=30.0),
        daemon=DaemonSettings(**FAST_DAEMON), assistant=AssistantConfig(**assistant)))


def home_paths(home: Path) -> Any:
    from lattice_daemon.paths import Paths

    return Paths(home / "config", home / "data", home / "run", home / "logs")


# -- provider test servers as processes --------------------------------------------------
@dataclass
class ProviderProcess:
    kind: str  # "ollama" | "openai"
    url: str
    process: subprocess.Popen[str]

    @property
    def control(self) -> Any:
        from tests.servers import ControlClient

        return ControlClient(self.url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def provider_process(kind: str, **behaviour: Any) -> Iterator[ProviderProcess]:
    """``python -m tests.servers.<kind>_server --port 0`` until its READY line."""
    module = {"ollama": "tests.servers.ollama_server",
              "openai": "tests.servers.openai_server"}[kind]
    process = subprocess.Popen([sys.executable, "-m", module, "--port", "0"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 20)  # a deadline on startup
    line = process.stdout.readline() if ready else ""
    if not line.startswith("READY "):
        process.kill()
        raise AssertionError(f"{module} did not start: {line!r}")
    handle = ProviderProcess(kind, line.split()[1], process)
    if behaviour:
        control = handle.control
        control.configure(**behaviour)
        control.close()
    try:
        yield handle
    finally:
        handle.stop()


# -- the daemon --------------------------------------------------------------------------
def daemon_pid(home: Path) -> int:
    data = ctl_json(home, "ping")
    assert data.get("pid"), data
    return int(data["pid"])


def start_daemon(home: Path) -> int:
    done = ctl(home, "--json", "daemon", "start", "--timeout", "20")
    assert done.returncode == 0, f"daemon start failed: {done.stdout} {done.stderr}"
    return int(json.loads(done.stdout)["pid"])


def stop_daemon(home: Path) -> None:
    """Graceful stop; SIGKILL of whatever is left so no test leaks a process."""
    with contextlib.suppress(Exception):
        ctl(home, "daemon", "stop", "--timeout", "10", timeout=30)
    kill_daemons_of(home)


def kill_daemons_of(home: Path) -> None:
    """SIGKILL every daemon of ``home``: by its environment, and by its instance lock."""
    import fcntl

    import psutil

    with contextlib.suppress(OSError):
        fd = os.open(home_paths(home).lock_file, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            if text.isdigit():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(text), signal.SIGKILL)
        finally:
            os.close(fd)

    for process in psutil.process_iter(["pid", "environ", "cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            environ = process.info.get("environ") or {}
            cmdline = " ".join(process.info.get("cmdline") or [])
            if environ.get("LATTICE_HOME") == str(home) and "lattice" in cmdline \
                    and "daemon" in cmdline:
                process.send_signal(signal.SIGKILL)


def wait_relay_state(home: Path, state: str, timeout: float = 15.0) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        data = ctl_json(home, "status")
        return data if data.get("state") == state else None

    return wait_until(reached, timeout=timeout, interval=0.05,  # type: ignore[return-value]
                      what=f"relay state {state}")


def wait_runtime_status(gateway_url: str, key: str, lattice_id: str, status: str,
                        timeout: float = 15.0) -> None:
    wait_until(lambda: runtime_status(gateway_url, key, lattice_id) == status,
               timeout=timeout, interval=0.05, what=f"runtime {status}")


@dataclass
class PairedMachine:
    """A user's machine: its LATTICE_HOME, paired to a runtime, daemon maybe running."""

    home: Path
    lattice_id: str
    key: str
    gateway_url: str
    provider: ProviderProcess | None  # None: the embedded engine serves it

    @property
    def model(self) -> str:
        return f"lattice:personal:{self.lattice_id}"

    def openai(self, **options: Any) -> Any:
        from openai import OpenAI

        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 20.0)
        return OpenAI(base_url=f"{self.gateway_url}/v1", api_key=self.key, **options)


def pair_machine(home: Path, gateway_url: str, key: str, provider: ProviderProcess | None,
                 start: bool = True, **assistant: Any) -> PairedMachine:
    """The documented walkthrough: runtime over HTTP, command verbatim, daemon start.

    Without a provider process the runtime is an ``assistant-runtime`` one, served by the
    embedded engine (``assistant`` presets its [assistant] settings)."""
    backend = "local-model" if provider is not None else "assistant-runtime"
    runtime = create_runtime(gateway_url, key, backend=backend)
    minted = mint_bootstrap(gateway_url, key, runtime["latticeId"])
    if provider is not None:
        write_provider_config(home, provider.kind, provider.url, first_token_timeout=20.0,
                              idle_timeout=10.0)
    else:
        write_assistant_config(home, **assistant)
    done = run_command_string(home, minted["command"])
    assert done.returncode == 0, done.stderr
    machine = PairedMachine(home, runtime["latticeId"], key, gateway_url, provider)
    if start:
        start_daemon(home)
        wait_relay_state(home, "connected")
    return machine


def close_after(stream: Any, content_chunks: int) -> None:
    """Read an openai stream until ``content_chunks`` chunks with content came, then
    close it: the app goes away mid-stream."""
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
            if received == content_chunks:
                break
    stream.close()


def elapsed_since(started: float) -> float:
    return time.monotonic() - started
