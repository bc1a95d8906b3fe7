"""Faults on the daemon <-> gateway link and on the daemon's machine: a connection cut
mid-stream (FIN and RST), a path that goes silent one way, a blackholed path, the daemon
SIGKILLed and restarted, a provider that hangs, the daemon's clock jumping.

Not repeated here (tests/e2e/test_faults.py, test_streaming.py, test_gateway_restart.py):
the app's bounded error when the daemon is SIGKILLed, a daemon reconnecting after an idle
gateway restart.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.harness import ctl_env, ctl_json, daemon_pid, wait_relay_state
from tests.faults.conftest import (
    CLOCKSHIFT,
    PROVIDER_FIRST_TOKEN,
    Background,
    Link,
    Machine,
    ask,
    linked_gateway,
    stream_text,
)
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

WORDS = " ".join(f"w{i}" for i in range(30))
MakeMachine = Callable[..., Machine]


@pytest.fixture(scope="module")
def module_link() -> Iterator[Link]:
    with linked_gateway() as link:
        yield link


@pytest.fixture
def link(module_link: Link) -> Iterator[Link]:
    module_link.proxy.heal()
    yield module_link
    module_link.proxy.heal()


def served_again(machine: Machine, prompt: str, timeout: float = 20.0) -> None:
    """The runtime answers a new request within ``timeout`` (the daemon reconnected)."""
    def answered() -> bool:
        try:
            return ask(machine, prompt, timeout=10.0) == machine_reply(machine)
        except openai.APIError:
            return False

    wait_until(answered, timeout=timeout, interval=0.2, what="the runtime to answer again")


def machine_reply(machine: Machine) -> str:
    control = machine.provider.control
    try:
        return str(control.configure()["reply"])
    finally:
        control.close()


@pytest.mark.parametrize("cut", ["drop", "reset"])
def test_link_cut_mid_stream_finishes_or_fails_once(link: Link, make_machine: MakeMachine,
                                                    cut: str) -> None:
    machine = make_machine(link, reply=WORDS, chunk_delay=0.05)
    prompt = f"cut-{cut}"

    def on_chunk(n: int) -> None:
        if n == 3:
            getattr(link.proxy, cut)()  # every relay connection of the daemon, both sides

    started = time.monotonic()
    call = Background(lambda: stream_text(machine.openai(), machine.model, prompt, on_chunk))
    call.join(20)
    # The daemon re-posts what it had not delivered once it reconnects: the app gets the
    # whole answer. An error would also be honest; a truncated "success" would not.
    if call.error is None:
        assert call.value == WORDS
    else:
        assert isinstance(call.error, openai.APIError), repr(call.error)
    assert call.ended_at is not None and call.ended_at - started < 15
    assert machine.prompt_count(prompt) == 1
    served_again(machine, f"after-{cut}")


def test_slow_link_delivers_everything_once(link: Link, make_machine: MakeMachine) -> None:
    """0.15 s added to every piece each way (a congested uplink): a stream still arrives
    whole and in order, the job runs once."""
    machine = make_machine(link, reply=" ".join(f"s{i}" for i in range(8)))
    link.proxy.delay(0.15)
    started = time.monotonic()
    text = stream_text(machine.openai(), machine.model, "slow-link", lambda n: None)
    assert text == " ".join(f"s{i}" for i in range(8))
    assert time.monotonic() - started < 10
    assert machine.prompt_count("slow-link") == 1


def test_silent_gateway_to_daemon_path_fails_the_job_then_recovers(
        link: Link, make_machine: MakeMachine) -> None:
    """Polls still arrive at the gateway, their answers (the leased job) never reach the
    daemon: the app gets a timeout error, the job never runs, and the daemon notices the
    dead connection by its poll read timeout and reconnects."""
    machine = make_machine(link)
    link.proxy.half_open("down")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        ask(machine, "lost-lease")
    assert info.value.status_code in (503, 504), info.value
    assert time.monotonic() - started < 12
    # The path comes back only for new connections (as after a NAT or link change): the
    # held answer carrying the lease is never delivered. The daemon reconnects; the job
    # leased to its old session must not be handed to the new one.
    link.proxy.reset()
    link.proxy.heal()
    served_again(machine, "after-half-open", timeout=25)
    assert machine.prompt_count("lost-lease") == 0  # its start deadline passed: refused


def test_a_lease_delivered_after_the_app_was_told_it_failed_never_runs(
        link: Link, make_machine: MakeMachine) -> None:
    """The poll answer carrying a job stalls on the way to the daemon (TCP holds it, as
    during retransmissions) past the presence window: the gateway declares the session
    dead and tells the app 503 runtime_unreachable, which the app may retry. When the
    stalled answer then arrives, within the job's start deadline, the daemon must not run
    the job: the app was told it failed, and a retry would reach the provider twice."""
    machine = make_machine(link)
    link.proxy.half_open("down")
    with pytest.raises(openai.APIStatusError) as info:
        ask(machine, "told-it-failed")
    assert info.value.status_code in (503, 504), info.value
    link.proxy.heal()  # the stalled answer (with the lease) reaches the daemon now
    served_again(machine, "after-stall")  # the daemon is past the stalled answer
    assert machine.prompt_count("told-it-failed") == 0


def test_blackholed_link_turns_offline_and_recovers(link: Link, make_machine: MakeMachine
                                                    ) -> None:
    machine = make_machine(link)
    link.proxy.blackhole()
    link.proxy.reset()  # existing connections die; new ones go nowhere
    api = httpx.Client(base_url=machine.gateway_url, headers={"x-api-key": machine.key},
                       timeout=10)
    wait_until(lambda: api.get(f"/v1/personal-runtimes/{machine.lattice_id}").json()
               ["runtime"]["status"] == "offline", timeout=6, what="offline")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        ask(machine, "into-the-void")
    assert info.value.status_code == 503 and info.value.code == "runtime_unreachable"
    assert time.monotonic() - started < 2  # said at once, not after a timeout
    link.proxy.heal()
    link.proxy.reset()  # the daemon's held connect attempts fail fast; it retries
    served_again(machine, "after-blackhole", timeout=25)
    assert machine.prompt_count("into-the-void") == 0
    api.close()


def test_daemon_sigkill_and_restart_runs_nothing_twice(link: Link, make_machine: MakeMachine
                                                       ) -> None:
    """A job at the provider when the daemon dies fails for the app; the daemon started
    again at once (within the job's start deadline) must not run it again, and a job
    queued while no daemon ran is served exactly once."""
    machine = make_machine(link, reply="once", first_byte_delay=1.5)
    pid = daemon_pid(machine.home)
    first = Background(lambda: ask(machine, "in-flight-at-kill"))
    wait_until(lambda: machine.prompt_count("in-flight-at-kill") == 1, timeout=5,
               what="the job to reach the provider")
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    second = Background(lambda: ask(machine, "queued-while-dead"))
    machine.start()
    first.join(15)
    assert isinstance(first.error, openai.APIStatusError), (first.value, first.error)
    assert first.ended_at is not None and first.ended_at - killed_at < 12
    # It reached the provider: an SDK must not retry it by itself (the prompt would run
    # twice); the app decides.
    assert first.error.response.headers["x-should-retry"] == "false"
    second.join(20)
    if second.error is None:
        assert second.value == "once"
    else:  # picked up too late for its start deadline: an error, not silence
        assert isinstance(second.error, openai.APIStatusError), second.error
    machine.configure(first_byte_delay=0)
    assert ask(machine, "after-restart") == "once"
    assert machine.prompt_count("in-flight-at-kill") == 1
    assert machine.prompt_count("queued-while-dead") <= 1


@pytest.mark.parametrize("stream", [False, True])
def test_provider_hang_fails_the_job_and_frees_the_slot(link: Link, make_machine: MakeMachine,
                                                        stream: bool) -> None:
    # Non-streaming: no first byte for 30 s. Streaming: one chunk, then 30 s of silence.
    behaviour = {"chunks": ["first", " never"], "chunk_delay": 30} if stream \
        else {"first_byte_delay": 30}
    machine = make_machine(link, **behaviour)
    prompt = f"hang-{stream}"
    started = time.monotonic()
    with pytest.raises(openai.APIError) as info:
        if stream:
            stream_text(machine.openai(), machine.model, prompt, lambda n: None)
        else:
            ask(machine, prompt)
    took = time.monotonic() - started
    assert took < PROVIDER_FIRST_TOKEN + 4, took  # the daemon's deadline, not 30 s
    assert "timeout" in str(info.value).lower() or "timed out" in str(info.value).lower() \
        or getattr(info.value, "code", None) in ("runtime_timeout", "provider_error"), info.value
    assert machine.prompt_count(prompt) == 1
    machine.configure(first_byte_delay=0, chunk_delay=0, chunks=None, reply="free")
    assert ask(machine, "after-hang") == "free"  # the slot was freed


def test_daemon_clock_jump(link: Link, make_machine: MakeMachine, lattice_home: Path,
                           tmp_path: Path) -> None:
    """The daemon judges each job's start deadline by its wall clock. The daemon has no
    injectable clock, so its process loads tests/faults/clockshift/sitecustomize.py, which
    adds the offset in a file to time.time(). Ahead by an hour: every job is refused at
    once with runtime_timeout saying to check the clock (never run, never silent).
    Behind by an hour: jobs run, each once."""
    offset_file = tmp_path / "clock-offset"
    offset_file.write_text("0")
    env = ctl_env(lattice_home, PYTHONPATH=os.pathsep.join(
        [str(CLOCKSHIFT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        LATTICE_TEST_CLOCK_OFFSET_FILE=str(offset_file))
    machine = make_machine(link, env=env, reply="on time")
    assert ask(machine, "before-jump") == "on time"

    offset_file.write_text("3600")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        ask(machine, "clock-ahead")
    assert time.monotonic() - started < 3
    assert info.value.code == "runtime_timeout", info.value
    assert "clock" in str(info.value)
    assert machine.prompt_count("clock-ahead") == 0
    assert ctl_json(machine.home, "status")["state"] == "connected"  # the relay is fine

    offset_file.write_text("-3600")
    assert ask(machine, "clock-behind") == "on time"
    assert ask(machine, "clock-behind-2") == "on time"
    offset_file.write_text("0")
    assert ask(machine, "clock-back") == "on time"
    for prompt in ("before-jump", "clock-behind", "clock-behind-2", "clock-back"):
        assert machine.prompt_count(prompt) == 1, prompt
    wait_relay_state(machine.home, "connected")
