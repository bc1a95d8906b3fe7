"""The owner's controls on real processes: a gateway under uvicorn, the daemon as a
process, `lattice-ctl` as a command, the Ollama test server.

Two apps of the owning account (a named API key and a named access token) use one
runtime. Blocking one refuses only it; a spent per-app budget is 429 with Retry-After
and stays spent across a daemon restart; `max_tokens` is clamped; a prompt over
`max_prompt_chars` and a model not allowed are refused with their codes. `pause`
takes the runtime out of `reachable` and a request fails at once; `resume` and the
end of `pause --for` serve again. Serving hours and the battery go through the
daemon's test hooks file (the local time and the sensor reading it sees).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lattice_daemon.controls import TEST_HOOKS_ENV
from tests.e2e.conftest import MachineFactory
from tests.e2e.harness import (
    PairedMachine,
    auth,
    ctl,
    ctl_env,
    ctl_json,
    home_paths,
    pair_machine,
    provider_process,
    start_daemon,
    stop_daemon,
    wait_relay_state,
    wait_runtime_status,
)
from tests.support.gateway import GatewayProcess
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

ACCOUNT = "e2e-app"  # the account of the conftest's api_key, which pairs the machine


def chat(machine: PairedMachine, key: str, content: str = "hi", **extra: Any
         ) -> httpx.Response:
    body = {"model": machine.model, "messages": [{"role": "user", "content": content}],
            **extra}
    return httpx.post(f"{machine.gateway_url}/v1/chat/completions", json=body,
                      headers=auth(key), timeout=20)


def record(machine: PairedMachine) -> dict[str, Any]:
    response = httpx.get(f"{machine.gateway_url}/v1/personal-runtimes/{machine.lattice_id}",
                         headers=auth(machine.key), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["runtime"]  # type: ignore[no-any-return]


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def limits(home: Path, *args: str) -> dict[str, Any]:
    done = ctl(home, "--json", "limits", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def apps(gateway: GatewayProcess) -> tuple[str, str]:
    """Two apps of the owning account: ("Notes app" API key, "Mail app" access token)."""
    return (gateway.create_key(ACCOUNT, name="Notes app"),
            gateway.create_token(ACCOUNT, name="Mail app"))


def test_per_app_rules_budgets_and_request_limits(machine_factory: MachineFactory,
                                                  apps: tuple[str, str]) -> None:
    machine = machine_factory("ollama")
    notes, mail = apps
    assert chat(machine, notes).status_code == 200
    assert chat(machine, mail).status_code == 200
    used = limits(machine.home, "show")["today"]["apps"]
    assert set(used) == {"Notes app", "Mail app"}  # each job counted for its own app
    assert used["Notes app"]["tokens"] > 0 and used["Mail app"]["tokens"] > 0

    # Block one app: only it is refused, with its own code, at once.
    block = ctl(machine.home, "limits", "block", "Notes app")
    assert block.returncode == 0, block.stderr
    refused = chat(machine, notes)
    assert refused.status_code == 403 and error_code(refused) == "app_not_allowed"
    assert "block" not in refused.json()["error"]["message"]  # not the owner's lists
    assert chat(machine, mail).status_code == 200
    assert ctl(machine.home, "limits", "unblock", "Notes app").returncode == 0
    assert chat(machine, notes).status_code == 200

    # A per-app daily budget: Mail app has used more than 1 token today.
    limits(machine.home, "set", "tokens_per_day", "1", "--app", "Mail app")
    spent = chat(machine, mail)
    assert spent.status_code == 429 and error_code(spent) == "budget_exceeded"
    retry_after = int(spent.headers["retry-after"])
    assert 0 < retry_after <= 24 * 3600  # until local midnight
    assert chat(machine, notes).status_code == 200  # another app's budget is its own

    # max_tokens is clamped, with or without the app's own value.
    limits(machine.home, "set", "max_tokens", "5")
    control = machine.provider.control  # type: ignore[union-attr]
    assert chat(machine, notes, max_tokens=100).status_code == 200
    assert control.last_request()["body"]["options"]["num_predict"] == 5
    assert chat(machine, notes, max_tokens=3).status_code == 200
    assert control.last_request()["body"]["options"]["num_predict"] == 3
    assert chat(machine, notes).status_code == 200
    assert control.last_request()["body"]["options"]["num_predict"] == 5

    # max_prompt_chars and allowed_models, set live.
    limits(machine.home, "set", "max_prompt_chars", "10")
    long = chat(machine, notes, content="x" * 11)
    assert long.status_code == 400 and error_code(long) == "prompt_too_long"
    assert chat(machine, notes, content="x" * 10).status_code == 200
    limits(machine.home, "set", "allowed_models", "some-other-model")
    other = chat(machine, notes)
    assert other.status_code == 403 and error_code(other) == "model_not_allowed"
    limits(machine.home, "unset", "allowed_models")
    limits(machine.home, "unset", "max_prompt_chars")
    shown = limits(machine.home, "set", "max_concurrency", "2")
    assert shown["limits"]["max_concurrency"] == 2
    assert ctl_json(machine.home, "status")["jobs"]["maxConcurrency"] == 2  # no restart
    assert chat(machine, notes).status_code == 200

    # Everything set live is in daemon.toml, and the day's use in the state file: a
    # restarted daemon keeps the budget spent.
    from lattice_daemon.config import load_config

    config = load_config(home_paths(machine.home))
    assert config.limits.apps["Mail app"].tokens_per_day == 1
    assert config.limits.max_tokens == 5 and config.limits.max_prompt_chars is None
    stop_daemon(machine.home)
    start_daemon(machine.home)
    wait_relay_state(machine.home, "connected")
    still = chat(machine, mail)
    assert still.status_code == 429 and error_code(still) == "budget_exceeded"
    assert chat(machine, notes).status_code == 200


def test_pause_resume_and_pause_for(machine: PairedMachine, apps: tuple[str, str]) -> None:
    notes, _ = apps
    assert record(machine)["status"] == "reachable" and record(machine)["paused"] is None

    paused = ctl_json(machine.home, "pause")
    assert paused["paused"] == {"reason": "owner", "until": None}
    # The gateway hears it at once (well within the presence window of 1.5 s).
    wait_until(lambda: record(machine)["status"] == "offline", timeout=1.5,
               interval=0.02, what="the runtime to stop being reachable")
    assert record(machine)["paused"] == {"reason": "owner", "until": None}
    started = time.monotonic()
    refused = chat(machine, notes)
    assert refused.status_code == 503 and error_code(refused) == "runtime_paused"
    assert time.monotonic() - started < 2.0  # at once, not after a pickup timeout
    assert "paused" in refused.json()["error"]["message"]
    assert "retry-after" not in refused.headers  # no known end
    status = ctl(machine.home, "status")
    assert status.returncode == 8, status.stdout  # connected, but not serving
    assert status.stdout.startswith("Connected") and "paused by you" in status.stdout

    ctl_json(machine.home, "resume")
    wait_runtime_status(machine.gateway_url, machine.key, machine.lattice_id, "reachable",
                        timeout=1.5)
    assert chat(machine, notes).status_code == 200

    timed = ctl_json(machine.home, "pause", "--for", "3s")
    assert timed["paused"]["reason"] == "owner" and timed["paused"]["until"]
    wait_runtime_status(machine.gateway_url, machine.key, machine.lattice_id, "offline",
                        timeout=1.5)
    refused = chat(machine, notes)
    assert refused.status_code == 503 and error_code(refused) == "runtime_paused"
    assert 1 <= int(refused.headers["retry-after"]) <= 3
    # ...and it ends by itself.
    wait_runtime_status(machine.gateway_url, machine.key, machine.lattice_id, "reachable",
                        timeout=10)
    assert chat(machine, notes).status_code == 200
    assert ctl_json(machine.home, "limits", "show")["paused"] is None

    # The pause watcher sleeps up to a minute between looks; a stop must not wait for it
    # (it held every graceful stop for the daemon's 5 s background grace).
    started = time.monotonic()
    stopped = ctl(machine.home, "daemon", "stop", "--timeout", "10")
    assert stopped.returncode == 0, stopped.stderr
    assert time.monotonic() - started < 3.0


def test_serve_hours_and_battery(tmp_path: Path, lattice_home: Path, gateway: GatewayProcess,
                                 api_key: str, apps: tuple[str, str]) -> None:
    notes, _ = apps
    hooks = tmp_path / "hooks.json"

    def set_hooks(**values: Any) -> None:
        tmp = hooks.with_suffix(".tmp")
        tmp.write_text(json.dumps(values))
        tmp.replace(hooks)  # the daemon never reads half a file

    set_hooks(now="2026-12-06T03:00:00")  # a Sunday, 03:00 local time
    with provider_process("ollama") as provider:
        machine = pair_machine(lattice_home, gateway.url, api_key, provider, start=False)
        try:
            done = ctl(lattice_home, "--json", "daemon", "start", "--timeout", "20",
                       env=ctl_env(lattice_home, **{TEST_HOOKS_ENV: str(hooks)}))
            assert done.returncode == 0, done.stdout + done.stderr
            wait_relay_state(lattice_home, "connected")
            assert chat(machine, notes).status_code == 200

            shown = limits(lattice_home, "set", "serve_hours", "Mon-Fri 09:00-18:00")
            assert shown["paused"]["reason"] == "schedule"
            wait_until(lambda: record(machine)["paused"] is not None, timeout=1.5,
                       interval=0.02, what="the gateway to hear of the schedule")
            assert record(machine)["status"] == "offline"
            refused = chat(machine, notes)
            assert refused.status_code == 503 and error_code(refused) == "runtime_paused"
            # until Monday 09:00: 30 hours from Sunday 03:00
            assert abs(int(refused.headers["retry-after"]) - 30 * 3600) < 60

            set_hooks(now="2026-12-07T10:00:00")  # Monday 10:00: inside the window
            wait_runtime_status(gateway.url, api_key, machine.lattice_id, "reachable",
                                timeout=5)
            assert chat(machine, notes).status_code == 200

            limits(lattice_home, "set", "pause_on_battery", "true")
            set_hooks(now="2026-12-07T10:00:00", battery={"powerPlugged": False,
                                                          "percent": 40})
            wait_until(lambda: record(machine)["paused"] == {"reason": "battery",
                                                             "until": None},
                       timeout=5, interval=0.05, what="the battery pause")
            refused = chat(machine, notes)
            assert refused.status_code == 503 and error_code(refused) == "runtime_paused"
            assert "battery" in refused.json()["error"]["message"]

            set_hooks(now="2026-12-07T10:00:00", battery={"powerPlugged": True,
                                                          "percent": 41})
            wait_runtime_status(gateway.url, api_key, machine.lattice_id, "reachable",
                                timeout=5)
            assert chat(machine, notes).status_code == 200
        finally:
            stop_daemon(lattice_home)
