"""The gateway restarts (SIGTERM, same port and database) while a job is in flight.

tests/e2e/test_gateway_restart.py proves an idle daemon reconnects; here a chat is in
flight: the app gets the answer or an error in the contract's envelope (a JSON error, or
an SSE error event once a stream started) within a bound, never a bare 500 or a silent
cut; the daemon reconnects by itself; the interrupted job is never run again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from tests.faults.conftest import Background, Link, ask, linked_gateway, stream_text
from tests.faults.test_relay_link import MakeMachine, served_again
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

WORDS = " ".join(f"w{i}" for i in range(40))


@pytest.fixture
def link() -> Iterator[Link]:
    with linked_gateway() as made:
        yield made


@pytest.mark.parametrize("stream", [False, True])
def test_gateway_restart_with_a_job_in_flight(link: Link, make_machine: MakeMachine,
                                              stream: bool) -> None:
    # Longer than the gateway's shutdown timeout (1 s): it cannot finish within the drain.
    behaviour = {"chunk_delay": 0.1} if stream else {"first_byte_delay": 3}
    machine = make_machine(link, reply=WORDS, **behaviour)
    prompt = f"restart-{stream}"
    if stream:
        call = Background(lambda: stream_text(machine.openai(), machine.model, prompt,
                                              lambda n: None))
    else:
        call = Background(lambda: ask(machine, prompt))
    wait_until(lambda: machine.prompt_count(prompt) == 1, timeout=5,
               what="the job to reach the provider")
    stopping = time.monotonic()
    link.gateway.stop()
    call.join(15)
    took = (call.ended_at or stopping) - stopping
    # Back up before judging, so the daemon is not left retrying a dead gateway.
    link.gateway.start()
    machine.configure(chunk_delay=0, first_byte_delay=0, reply="back")
    served_again(machine, "after-gateway-restart", timeout=20)
    assert machine.prompt_count(prompt) == 1  # the interrupted job never ran again
    assert took < 10
    if call.error is None:
        assert call.value == WORDS
    else:
        # In the envelope: a JSON error / an SSE error event, not a cut connection.
        assert isinstance(call.error, openai.APIError), repr(call.error)
        assert not isinstance(call.error, openai.APIConnectionError), repr(call.error)
        if isinstance(call.error, openai.APIStatusError):
            assert call.error.status_code != 500, call.error
            assert isinstance(call.error.body, dict) and call.error.code, call.error
