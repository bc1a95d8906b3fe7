"""Helpers for the daemon's tests: pairing against a real gateway, a daemon subprocess,
and a raw client for the control socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lattice_daemon.config import (
    DaemonConfig,
    DaemonSettings,
    ProviderConfig,
    RelayConfig,
    load_or_create_keypair,
    save_config,
)
from lattice_daemon.paths import Paths, get_paths
from tests.support.net import wait_until

DAEMON_START_TIMEOUT = 15.0


# ------------------------------------------------------------------ control socket


@dataclass
class ControlAnswer:
    status: int
    headers: dict[str, str]
    body: Any

    def json(self) -> Any:
        return self.body


def control_request(socket_path: Path, method: str, path: str, *,
                    headers: dict[str, str] | None = None, body: bytes = b"",
                    timeout: float = 5.0) -> ControlAnswer:
    head = f"{method} {path} HTTP/1.1\r\nHost: lattice-daemon\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return raw_exchange(socket_path, head.encode() + b"\r\n" + body, timeout=timeout)


def raw_exchange(socket_path: Path, data: bytes, *, timeout: float = 5.0,
                 close_write: bool = False) -> ControlAnswer:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        if data:
            sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        return _read_answer(sock)


def _read_answer(sock: socket.socket) -> ControlAnswer:
    received = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            break
        received += piece
    head, _, payload = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return ControlAnswer(status, headers, json.loads(payload) if payload else None)


def ping(socket_path: Path) -> dict[str, Any]:
    answer = control_request(socket_path, "GET", "/v1/ping")
    assert answer.status == 200, answer.body
    return answer.body  # type: ignore[no-any-return]


# ------------------------------------------------------------------------ pairing


def write_config(paths: Paths, *, relay: RelayConfig | None = None,
                 provider_url: str | None = None, provider_kind: str = "ollama",
                 default_model: str | None = None, allowed_models: list[str] | None = None,
                 **daemon: Any) -> DaemonConfig:
    settings = {"backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.5,
                "drain_seconds": 10.0}
    settings.update(daemon)
    config = DaemonConfig(
        relay=relay,
        provider=ProviderConfig(kind=provider_kind, url=provider_url,
                                default_model=default_model,
                                allowed_models=list(allowed_models or []),
                                first_token_timeout=10.0, idle_timeout=5.0),
        daemon=DaemonSettings(**settings),
    )
    save_config(paths, config)
    return config


@dataclass
class PairedRuntime:
    api_key: str
    lattice_id: str
    relay: RelayConfig


def pair_runtime(gateway: Any, paths: Paths, name: str = "test runtime") -> PairedRuntime:
    """Create a runtime on a real gateway, mint a bootstrap token and redeem it with
    this LATTICE_HOME's daemon key (what `lattice-ctl relay connect` does)."""
    from lattice_ctl.pairing import redeem

    key = gateway.create_key("acme")
    headers = {"x-api-key": key}
    created = httpx.post(gateway.url + "/v1/personal-runtimes", headers=headers,
                         json={"displayName": name, "executionBackend": "local-model"})
    assert created.status_code == 201, created.text
    lattice_id = created.json()["runtime"]["latticeId"]
    minted = httpx.post(f"{gateway.url}/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                        headers=headers, json={"ttlSeconds": 600})
    assert minted.status_code == 201, minted.text
    keys = load_or_create_keypair(paths)
    redeemed = redeem(gateway.url, minted.json()["bootstrapToken"], keys.public_text())
    return PairedRuntime(key, lattice_id, redeemed.relay)


def runtime_status(gateway: Any, runtime: PairedRuntime) -> str:
    answer = httpx.get(f"{gateway.url}/v1/personal-runtimes/{runtime.lattice_id}",
                       headers={"x-api-key": runtime.api_key})
    return str(answer.json()["runtime"]["status"])


# ---------------------------------------------------------------- daemon process


class DaemonProcess:
    """``python -m lattice_daemon`` with this test's LATTICE_HOME."""

    def __init__(self, paths: Paths | None = None, env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        self.paths = paths or get_paths()
        self.command = command or [sys.executable, "-m", "lattice_daemon"]
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.env["PYTHONUNBUFFERED"] = "1"
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_path = self.paths.log_dir.parent / "daemon-stderr.txt"

    def start(self, wait: bool = True) -> DaemonProcess:
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with self.stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=stderr, stderr=stderr)
        if wait:
            wait_until(self._ready, timeout=DAEMON_START_TIMEOUT, what="daemon socket")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"daemon exited with {self.process.returncode}: "
                                 + self.output())
        try:
            return control_request(self.paths.socket, "GET", "/v1/ping").status == 200
        except OSError:
            return False

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        with contextlib.suppress(FileNotFoundError):
            text += self.paths.log_file.read_text(errors="replace")
        return text[-4000:]

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
