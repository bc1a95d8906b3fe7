"""Fault scenarios on real processes, with a TCP fault proxy (tests/support/faultproxy.py)
on the link under test.

What every scenario asserts: the app gets an answer or an error within a bound (never a
hang); the prompt reached the provider at most once (the test model server records each
request's body); and a job that cannot finish ends with an error the app sees.

Timings are short so the whole directory runs in about a minute on 2 cores.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    ProviderProcess,
    create_runtime,
    ctl,
    ctl_env,
    mint_bootstrap,
    provider_process,
    run_command_string,
    stop_daemon,
    wait_relay_state,
    write_provider_config,
)
from tests.support.faultproxy import FaultProxy, run_fault_proxy
from tests.support.gateway import GatewayProcess, run_gateway

CLOCKSHIFT = Path(__file__).resolve().parent / "clockshift"

# Relay timing for fault tests (docs/protocol.md: Presence, deadlines). The daemon's poll
# read timeout is the window plus 10 s, so a silent link is noticed within ~12 s.
FAULT_GATEWAY: dict[str, Any] = {
    "poll_window_seconds": 2,
    "presence_window_seconds": 1.5,
    "pickup_timeout_seconds": 4,
    "job_start_deadline_seconds": 4,
    "sse_keepalive_seconds": 0.25,
    "first_token_timeout_seconds": 6,
    "idle_timeout_seconds": 4,
}
# The daemon's own provider deadlines (shorter than the gateway's, so the app is told
# what happened at the provider rather than a bare timeout).
PROVIDER_FIRST_TOKEN = 2.0
PROVIDER_IDLE = 2.0


@dataclass
class Machine:
    """A paired daemon (subprocess) whose relay traffic crosses ``link``."""

    home: Path
    lattice_id: str
    key: str
    gateway_url: str  # the app talks to the gateway directly
    provider: ProviderProcess
    env: dict[str, str]

    @property
    def model(self) -> str:
        return f"lattice:personal:{self.lattice_id}"

    def openai(self, **options: Any) -> Any:
        from openai import OpenAI

        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 30.0)
        return OpenAI(base_url=f"{self.gateway_url}/v1", api_key=self.key, **options)

    def prompt_count(self, prompt: str) -> int:
        """How many times ``prompt`` reached the provider (the test server records it)."""
        control = self.provider.control
        try:
            requests = control.stats()["requests"]
        finally:
            control.close()
        count = 0
        for request in requests:
            body = request.get("body")
            messages = body.get("messages") if isinstance(body, dict) else None
            if messages and messages[-1].get("content") == prompt:
                count += 1
        return count

    def configure(self, **behaviour: Any) -> None:
        control = self.provider.control
        try:
            control.configure(**behaviour)
        finally:
            control.close()

    def start(self) -> int:
        done = ctl(self.home, "--json", "daemon", "start", "--timeout", "20", env=self.env)
        assert done.returncode == 0, f"daemon start failed: {done.stdout} {done.stderr}"
        wait_relay_state(self.home, "connected")
        import json

        return int(json.loads(done.stdout)["pid"])


def pair(home: Path, gateway: GatewayProcess, key: str, provider: ProviderProcess,
         env: dict[str, str] | None = None) -> Machine:
    """Runtime over HTTP, the minted command verbatim (its relay URL is the gateway's
    public URL: the proxy), provider deadlines short, daemon started."""
    runtime = create_runtime(gateway.url, key)
    minted = mint_bootstrap(gateway.url, key, runtime["latticeId"])
    write_provider_config(home, provider.kind, provider.url,
                          first_token_timeout=PROVIDER_FIRST_TOKEN, idle_timeout=PROVIDER_IDLE)
    done = run_command_string(home, minted["command"])
    assert done.returncode == 0, done.stderr
    machine = Machine(home, runtime["latticeId"], key, gateway.url, provider,
                      env or ctl_env(home))
    machine.start()
    return machine


@dataclass
class Link:
    """A gateway whose public URL (what daemons connect to) is a fault proxy."""

    gateway: GatewayProcess
    proxy: FaultProxy | None  # None: daemons connect to the gateway directly
    key: str


@contextlib.contextmanager
def linked_gateway(where: Path | str | None = None, **settings: Any) -> Iterator[Link]:
    with run_fault_proxy() as proxy, \
            run_gateway(where, public_url=proxy.url, **{**FAULT_GATEWAY, **settings}) as gw:
        proxy.upstream = gw.port
        yield Link(gw, proxy, gw.create_key("faults-app"))


@pytest.fixture
def make_machine(lattice_home: Path) -> Iterator[Callable[..., Machine]]:
    """``make(link, env=None, **behaviour)``: provider process + daemon paired via link."""
    with contextlib.ExitStack() as stack:
        def make(link: Link, env: dict[str, str] | None = None, **behaviour: Any) -> Machine:
            provider = stack.enter_context(provider_process("ollama", **behaviour))
            stack.callback(stop_daemon, lattice_home)
            return pair(lattice_home, link.gateway, link.key, provider, env)

        yield make


class Background:
    """A call on a thread: its value or error, and when it ended."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self._call = call
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.value = self._call()
        except BaseException as exc:
            self.error = exc
        self.ended_at = time.monotonic()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the app's request still hangs after {timeout}s"


def stream_text(client: Any, model: str, prompt: str, on_chunk: Callable[[int], None]
                ) -> str:
    """Stream a chat; ``on_chunk(n)`` after the n-th content chunk; the whole text."""
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], stream=True)
    texts: list[str] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
            on_chunk(len(texts))
    return "".join(texts)


def ask(machine: Machine, prompt: str, **options: Any) -> str:
    completion = machine.openai(**options).chat.completions.create(
        model=machine.model, messages=[{"role": "user", "content": prompt}])
    return str(completion.choices[0].message.content)
