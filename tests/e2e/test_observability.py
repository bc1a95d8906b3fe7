"""What an operator and an app developer see of real requests: Server-Timing whose parts
add up, the x-request-id in the answer and in the gateway's log lines (text and JSON),
no secret or prompt text in any log, and the chat metrics after a real chat.

Real processes: gateway under uvicorn, daemon started the documented way, the Ollama
test server as the model (a first-byte delay makes the provider's share visible).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lattice_daemon.config import load_config
from tests.e2e.conftest import GATEWAY_SETTINGS
from tests.e2e.harness import (
    PairedMachine,
    create_runtime,
    home_paths,
    mint_bootstrap,
    provider_process,
    run_command_string,
    start_daemon,
    stop_daemon,
    wait_relay_state,
    write_provider_config,
)
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

METRICS_TOKEN = "metrics-e2e-0123456789abcdef"
PROMPT = "Tell me about the purple-walrus-7781 in my diary"
PROVIDER_DELAY = 0.2  # the model server waits this long before answering
PARTS = ("gw", "pickup", "relay", "daemon", "provider")


def server_timing(value: str) -> dict[str, float]:
    parts = {}
    for entry in value.split(","):
        name, _, duration = entry.strip().partition(";dur=")
        parts[name] = float(duration)
    return parts


def assert_parts_add_up(timing: dict[str, float]) -> None:
    assert list(timing) == [*PARTS, "total"], timing
    assert all(timing[name] >= 0 for name in PARTS if name != "relay"), timing
    # Each part is rounded to 0.01 ms: the sum is the total within a few hundredths.
    assert abs(sum(timing[name] for name in PARTS) - timing["total"]) <= 0.1, timing
    # The provider's share is the model server's delay (and not the whole answer).
    assert PROVIDER_DELAY * 1000 <= timing["provider"] < timing["total"], timing
    # Relay transit is real time on this machine's loopback: small, but never hugely
    # negative (that would mean the parts were not measured on one clock each).
    assert -1.0 < timing["relay"] < timing["total"], timing


@pytest.fixture(params=["json", "text"])
def log_format(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gateway(tmp_path: Path, log_format: str) -> Iterator[GatewayProcess]:
    with run_gateway(tmp_path / "gw", metrics_token=METRICS_TOKEN,
                     env={"LATTICE_GATEWAY_LOG_FORMAT": log_format,
                          "LATTICE_GATEWAY_ACCESS_LOG": "1"},
                     **GATEWAY_SETTINGS) as gw:
        yield gw


def test_timing_request_ids_logs_and_metrics_of_a_real_chat(
        gateway: GatewayProcess, lattice_home: Path, log_format: str) -> None:
    key = gateway.create_key("obs-app")
    with provider_process("ollama", reply="Fine thanks", first_byte_delay=PROVIDER_DELAY) as model:
        # The documented walkthrough, keeping the bootstrap token to look for it in logs.
        runtime = create_runtime(gateway.url, key)
        minted = mint_bootstrap(gateway.url, key, runtime["latticeId"])
        write_provider_config(lattice_home, model.kind, model.url)
        assert run_command_string(lattice_home, minted["command"]).returncode == 0
        start_daemon(lattice_home)
        try:
            wait_relay_state(lattice_home, "connected")
            machine = PairedMachine(lattice_home, runtime["latticeId"], key, gateway.url, model)
            daemon_token = load_config(home_paths(lattice_home)).relay.daemon_token
            _chat_and_check(gateway, machine)
        finally:
            stop_daemon(lattice_home)

    log = gateway.log_text()
    secrets = {"API key": key, "daemon token": daemon_token,
               "bootstrap token": minted["bootstrapToken"], "metrics token": METRICS_TOKEN,
               "prompt": "purple-walrus"}
    for what, secret in secrets.items():
        assert secret not in log, f"the {what} is in the gateway's log"
    daemon_logs = "".join(p.read_text(errors="replace")
                          for p in (lattice_home / "logs").rglob("*") if p.is_file())
    assert "job_" in daemon_logs  # the daemon logged the jobs: its log was looked at
    for what in ("API key", "bootstrap token", "daemon token", "prompt"):
        assert secrets[what] not in daemon_logs, f"the {what} is in the daemon's log"
    _check_access_lines(log, log_format)


def _chat_and_check(gateway: GatewayProcess, machine: PairedMachine) -> None:
    body = {"model": machine.model, "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"authorization": f"Bearer {machine.key}", "x-request-id": "app-trace-001"}
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        # Non-streaming: the header has every part, and they add up to the total.
        answer = http.post("/v1/chat/completions", headers=headers, json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "Fine thanks"
        assert answer.headers["x-request-id"] == "app-trace-001"
        assert_parts_add_up(server_timing(answer.headers["server-timing"]))

        # Streaming: pickup and time to first byte in the header; the full set in a
        # comment line just before [DONE].
        with http.stream("POST", "/v1/chat/completions",
                         headers={**headers, "x-request-id": "app-trace-002"},
                         json={**body, "stream": True}) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["x-request-id"] == "app-trace-002"
            first = server_timing(streamed.headers["server-timing"])
            assert list(first) == ["pickup", "ttfb"] and first["ttfb"] >= PROVIDER_DELAY * 1000
            lines = [line for line in streamed.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        comment = lines[-2]
        assert comment.startswith(": server-timing ")
        final = server_timing(comment.removeprefix(": server-timing "))
        assert_parts_add_up(final)
        assert final["pickup"] == pytest.approx(first["pickup"], abs=0.01)

        # The official client reads the same stream: the comment is invisible to it.
        stream = machine.openai().chat.completions.create(
            model=machine.model, messages=body["messages"], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "Fine thanks"

        scraped = http.get("/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
    assert scraped.status_code == 200
    metrics = scraped.text
    assert 'lattice_gateway_chat_duration_seconds_count{stream="false"} 1.0' in metrics
    assert 'lattice_gateway_chat_duration_seconds_count{stream="true"} 2.0' in metrics
    assert "lattice_gateway_chat_time_to_first_token_seconds_count 2.0" in metrics
    assert "lattice_gateway_chat_pickup_seconds_count 3.0" in metrics
    assert ('lattice_gateway_http_requests_total{method="POST",'
            'route="/v1/chat/completions",status="200"} 3.0') in metrics
    assert ('lattice_gateway_bootstrap_redemptions_total{outcome="ok"} 1.0') in metrics
    assert "lattice_gateway_relay_sessions 1.0" in metrics
    assert "lattice_gateway_jobs_queued 0.0" in metrics


def _check_access_lines(log: str, log_format: str) -> None:
    """One access line per chat, naming the request id, route, status and duration."""
    def chat_lines() -> list[str]:
        return [line for line in log.splitlines()
                if "/v1/chat/completions" in line and "app-trace-00" in line]

    wait_until(lambda: len(chat_lines()) >= 2, timeout=5, what="access lines")
    if log_format == "json":
        entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert entries and len(entries) == len(log.splitlines()), "not one object per line"
        access = {e["request_id"]: e for e in entries
                  if e.get("route") == "/v1/chat/completions"}
        for request_id in ("app-trace-001", "app-trace-002"):
            entry = access[request_id]
            assert entry["status"] == 200 and entry["duration_ms"] > PROVIDER_DELAY * 1000
            assert entry["level"] == "info" and entry["time"].endswith("Z")
            assert entry["message"].startswith("POST /v1/chat/completions 200 ")
    else:
        for request_id in ("app-trace-001", "app-trace-002"):
            assert any(re.search(r"POST /v1/chat/completions 200 [0-9.]+ ms \[request "
                                 + request_id + r"\]$", line) for line in chat_lines())


async def test_a_daemon_without_timing_gets_runtime_in_place_of_its_parts(
        tmp_path: Path, lattice_home: Path) -> None:
    from tests.support.fake_daemon import Reply, paired_daemon

    with run_gateway(tmp_path / "gw", **GATEWAY_SETTINGS) as gateway:
        key = gateway.create_key("older")
        daemon = await paired_daemon(gateway.url, key, reply=Reply(text="hi"))  # no timing
        try:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
                answer = await http.post("/v1/chat/completions", headers={"x-api-key": key},
                                         json={"model": f"lattice:personal:{daemon.lattice_id}",
                                               "messages": [{"role": "user", "content": "x"}]})
        finally:
            await daemon.stop()
    assert answer.status_code == 200, answer.text
    timing = server_timing(answer.headers["server-timing"])
    assert list(timing) == ["gw", "pickup", "runtime", "total"]
    assert abs(timing["gw"] + timing["pickup"] + timing["runtime"] - timing["total"]) <= 0.05
