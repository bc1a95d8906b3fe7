"""At most once across restarts (lattice_daemon/replay.py): a sealed job delivered again
after the daemon restarted does not reach the provider a second time. Real processes:
the daemon as a subprocess, a scripted relay that re-delivers the captured envelope,
the Ollama test server counting the chat requests it received."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lattice_daemon.config import RelayConfig, load_or_create_keypair
from lattice_daemon.paths import Paths, get_paths
from lattice_daemon.replay import COMPACT_MIN_LINES, PersistentReplayGuard
from lattice_protocol import JobEnvelope, JobSpec, KeyPair, ProtocolError, ResultEvent, Sealer
from tests.daemon.support import DaemonProcess, write_config
from tests.servers import run_ollama_server
from tests.support.net import wait_until
from tests.support.scripted_relay import ScriptedRelay, run_scripted_relay

MODEL = "llama3.2:3b"
LATTICE_ID = "lat_replaytest"


@pytest.fixture
def paths(lattice_home: Path) -> Paths:
    return get_paths()


@pytest.fixture
def relay() -> Iterator[ScriptedRelay]:
    with run_scripted_relay() as relay:
        yield relay


def _pair(paths: Paths, relay: ScriptedRelay, provider_url: str) -> Sealer:
    """Pair this LATTICE_HOME with the scripted relay; the gateway's side of the Box."""
    gateway_keys = KeyPair.generate()
    daemon_keys = load_or_create_keypair(paths)
    write_config(paths, provider_url=provider_url, default_model=MODEL, relay=RelayConfig(
        gateway=relay.url, relay_url=relay.url, lattice_id=LATTICE_ID, account_id="acct_t",
        display_name="replay test", execution_backend="local-model",
        daemon_token="lrdt_v1_" + "a" * 43, gateway_public_key=gateway_keys.public_text(),
        paired_at="2026-01-01T00:00:00.000Z"))
    return Sealer(gateway_keys, daemon_keys.public_text())


def _final_events(relay: ScriptedRelay, sealer: Sealer, job_id: str) -> list[ResultEvent]:
    events = [ResultEvent.from_dict(sealer.open_json(e.sealed)) for e in relay.events
              if e.job_id == job_id]
    return [e for e in events if e.final]


def _chats(server: Any) -> int:
    return sum(1 for r in server.stats()["requests"] if r["path"] == "/api/chat")


@pytest.mark.e2e
def test_a_job_delivered_again_after_a_restart_does_not_run_again(
        paths: Paths, relay: ScriptedRelay) -> None:
    with run_ollama_server(models=[MODEL], reply="once") as ollama:
        sealer = _pair(paths, relay, ollama.url)
        spec = JobSpec(job_id="job_captured", lattice_id=LATTICE_ID,
                       deadline=time.time() + 120, stream=False,
                       request={"messages": [{"role": "user", "content": "hi"}]})
        envelope = JobEnvelope(spec.job_id, spec.deadline, sealer.seal_json(spec.to_dict()))

        with DaemonProcess(paths).start() as daemon:
            wait_until(lambda: len(relay.registers) == 1, timeout=15, what="a session")
            relay.queue(envelope)
            wait_until(lambda: _final_events(relay, sealer, spec.job_id), timeout=15,
                       what="the first delivery's result")
            first = _final_events(relay, sealer, spec.job_id)
            assert [e.kind for e in first] == ["result"], daemon.output()
        assert _chats(ollama) == 1

        # The daemon restarted (killed above: no graceful stop is needed for the record);
        # the captured envelope comes again well within its start deadline.
        relay.events.clear()
        with DaemonProcess(paths).start() as daemon:
            wait_until(lambda: len(relay.registers) == 2, timeout=15, what="a new session")
            relay.queue(envelope)
            wait_until(lambda: _final_events(relay, sealer, spec.job_id), timeout=15,
                       what="the answer to the second delivery")
            second = _final_events(relay, sealer, spec.job_id)
            assert [e.kind for e in second] == ["error"], daemon.output()
            assert "replay refused" in (second[0].message or "")
        assert _chats(ollama) == 1  # the prompt reached the provider once

    record = paths.replay_file
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.parent.stat().st_mode) == 0o700


# ------------------------------------------------------------- the guard's file itself


def _spec(job_id: str, deadline: float) -> JobSpec:
    return JobSpec(job_id=job_id, lattice_id=LATTICE_ID, deadline=deadline, stream=False,
                   request={})


def test_the_guard_remembers_across_instances_and_forgets_after_the_deadline(
        tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "state" / "replay-guard.jsonl"
    guard = PersistentReplayGuard(path, clock=lambda: now[0])
    guard.admit(_spec("job_a", 1010.0))
    guard.admit(_spec("job_b", 1100.0))
    guard.close()

    again = PersistentReplayGuard(path, clock=lambda: now[0])
    with pytest.raises(ProtocolError) as refused:
        again.admit(_spec("job_a", 1010.0))
    assert refused.value.reason == "replay"
    again.close()

    now[0] = 1050.0  # job_a's deadline passed: its entry is dropped from the file
    later = PersistentReplayGuard(path, clock=lambda: now[0])
    assert len(later) == 1
    assert [json.loads(line)[0] for line in path.read_text().splitlines()] == ["job_b"]
    later.close()


def test_a_torn_line_is_ignored_and_the_file_is_compacted(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "replay-guard.jsonl"
    guard = PersistentReplayGuard(path, clock=lambda: now[0])
    for i in range(COMPACT_MIN_LINES + 10):  # each expires before the next one comes
        now[0] += 1
        guard.admit(_spec(f"job_{i}", now[0] + 0.5))
    # Rewritten along the way: the file holds about the live entries, not every job.
    assert len(path.read_text().splitlines()) <= COMPACT_MIN_LINES
    guard.close()
    with path.open("a") as f:
        f.write('["job_torn", 99')  # a write cut short
    again = PersistentReplayGuard(path, clock=lambda: now[0])
    assert "job_torn" not in path.read_text()
    again.close()


def test_a_job_that_cannot_be_recorded_is_refused(tmp_path: Path) -> None:
    guard = PersistentReplayGuard(tmp_path / "replay-guard.jsonl")
    os.close(guard._fd)  # the disk went away under it
    try:
        with pytest.raises(ProtocolError) as refused:
            guard.admit(_spec("job_x", time.time() + 60))
        assert refused.value.reason == "unrecorded"
    finally:
        guard._fd = -1
