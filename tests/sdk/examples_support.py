"""Shared by the example tests of both SDKs: a paired runtime and a clean environment."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.fake_daemon import Reply, ThreadedFakeDaemon
from tests.support.gateway import GatewayProcess
from tests.support.net import wait_until

REPO = Path(__file__).resolve().parents[2]
REPLY = "Hello from the fake daemon."
COMMAND_RE = (r"lattice-ctl relay connect --gateway '(?P<gateway>[^']+)' "
              r"--bootstrap-token '(?P<token>plrt_v1[^']+)'")


@dataclass
class PairedAccount:
    """An account with a manage+inference key and one reachable runtime served by a fake
    daemon that replies ``REPLY``."""

    gateway: GatewayProcess
    account: str
    api_key: str
    lattice_id: str
    daemon: ThreadedFakeDaemon


@contextlib.contextmanager
def paired_account(gateway: GatewayProcess, account: str) -> Iterator[PairedAccount]:
    key = gateway.create_key(account)
    headers = {"x-api-key": key}
    with httpx.Client(base_url=gateway.url, headers=headers, trust_env=False,
                      timeout=10) as http:
        created = http.post("/v1/personal-runtimes", json={
            "displayName": "example box", "executionBackend": "local-model"})
        created.raise_for_status()
        lattice_id = created.json()["runtime"]["latticeId"]
        minted = http.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens", json={})
        minted.raise_for_status()
        daemon = ThreadedFakeDaemon(gateway.url, reply=Reply(text=REPLY))
        daemon.redeem(minted.json()["bootstrapToken"])
        daemon.start()
        wait_until(lambda: http.get(f"/v1/personal-runtimes/{lattice_id}")
                   .json()["runtime"]["status"] == "reachable", timeout=10,
                   what="example runtime reachable")
    try:
        yield PairedAccount(gateway, account, key, lattice_id, daemon)
    finally:
        daemon.kill()


def example_env(**values: str) -> dict[str, str]:
    """The caller's environment without any Lattice credentials, plus ``values``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOVELACE_", "LATTICE_GATEWAY", "LATTICE_TEST_"))}
    env.update(values)
    return env


def run_example(argv: Sequence[str], env: dict[str, str],
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{' '.join(argv)} exited {result.returncode}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}")
    return result
