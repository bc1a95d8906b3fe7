"""Streaming end to end: openai client -> gateway -> relay -> daemon -> provider process."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import MachineFactory
from tests.e2e.harness import close_after, ctl_json, daemon_pid
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

WORDS = "one two three four five six seven eight"


@pytest.mark.parametrize("include_usage", [False, True], ids=["plain", "usage"])
@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_stream_text_equals_the_providers(machine_factory: MachineFactory, kind: str,
                                          include_usage: bool) -> None:
    machine = machine_factory(kind, reply=WORDS)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = machine.openai().chat.completions.create(
        model=machine.model, messages=[{"role": "user", "content": "count"}], stream=True,
        **options)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == WORDS
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and chunks[-1].usage is not None
        assert chunks[-1].choices == []
        assert usage_chunks[0].usage.completion_tokens > 0
    else:
        assert usage_chunks == []


def test_chunks_arrive_spread_over_time(machine_factory: MachineFactory) -> None:
    delay = 0.15
    machine = machine_factory("ollama", reply=WORDS, chunk_delay=delay)
    started = time.monotonic()
    arrivals: list[float] = []
    stream = machine.openai().chat.completions.create(
        model=machine.model, messages=[{"role": "user", "content": "slowly"}], stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == len(WORDS.split())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # live tokens: the first arrives long before the last, and each gap reflects the
    # provider's pacing (not one batch at the end)
    assert arrivals[-1] - arrivals[0] >= delay * (len(arrivals) - 1) * 0.7, arrivals
    assert sum(1 for gap in gaps if gap >= delay * 0.5) >= len(gaps) - 1, gaps


def test_client_disconnect_aborts_the_provider_call(machine_factory: MachineFactory) -> None:
    machine = machine_factory("ollama", reply=" ".join(["word"] * 60), chunk_delay=0.1)
    control = machine.provider.control
    stream = machine.openai().chat.completions.create(
        model=machine.model, messages=[{"role": "user", "content": "long"}], stream=True)
    close_after(stream, 2)  # the app goes away mid-stream
    closed_at = time.monotonic()
    wait_until(lambda: control.stats()["aborts"] >= 1, timeout=5,
               what="the provider to see the call aborted")
    assert time.monotonic() - closed_at < 5
    stats = control.stats()
    control.close()
    assert stats["in_flight"] == 0  # the generation was not left running
    wait_until(lambda: ctl_json(machine.home, "status")["jobs"]["inFlight"] == 0,
               timeout=5, what="zero jobs in flight")


def test_provider_error_mid_stream_raises_in_the_client(machine_factory: MachineFactory
                                                        ) -> None:
    machine = machine_factory("ollama", reply=WORDS, stream_error_after=2)
    stream = machine.openai().chat.completions.create(
        model=machine.model, messages=[{"role": "user", "content": "fail"}], stream=True)
    texts: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(chunk.choices[0].delta.content)
    assert len(texts) == 2
    assert "Ollama" in str(info.value)


def test_daemon_sigkill_mid_stream_raises_in_bounded_time(machine_factory: MachineFactory
                                                          ) -> None:
    machine = machine_factory("ollama", reply=" ".join(["word"] * 100), chunk_delay=0.1)
    pid = daemon_pid(machine.home)
    stream = machine.openai(timeout=30.0).chat.completions.create(
        model=machine.model, messages=[{"role": "user", "content": "long"}], stream=True)
    killed_at = None
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for chunk in stream:
            if killed_at is None and chunk.choices and chunk.choices[0].delta.content:
                os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic()
    assert killed_at is not None
    assert time.monotonic() - killed_at < 12  # presence window + idle bound, not a hang


def test_slow_first_token_gets_keepalives_and_succeeds(machine_factory: MachineFactory
                                                       ) -> None:
    machine = machine_factory("openai", reply="loaded at last", first_byte_delay=1.2)
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    with httpx.stream("POST", f"{machine.gateway_url}/v1/chat/completions",
                      headers={"Authorization": f"Bearer {machine.key}"}, timeout=20,
                      json={"model": machine.model, "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                lines.append((time.monotonic() - started, line))
    keepalives = [t for t, line in lines if line.startswith(":")]
    data = [line[len("data: "):] for _, line in lines if line.startswith("data: ")]
    assert keepalives, lines  # the app sees traffic while the model loads
    first_data_at = next(t for t, line in lines if line.startswith("data: "))
    assert min(keepalives) < first_data_at
    assert data[-1] == "[DONE]"
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content") or ""
                   for d in data[:-1] if json.loads(d).get("choices"))
    assert text == "loaded at last"
