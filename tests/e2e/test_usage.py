"""Usage is what the provider reports for the same request, through gateway + relay +
daemon; a provider that reports none gives ``usage: null``, never made-up zeros.

Against the OpenAI-compatible test server in llama-cpp-python's manner (no usage in
streams), and against llama-cpp-python's own server with a real model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import MachineFactory
from tests.e2e.harness import PairedMachine, pair_machine, stop_daemon
from tests.e2e.llama_server import llama_cpp_server
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def direct(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The same request sent straight to the provider, as an app would without Lattice."""
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120,
                          trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


def direct_stream_usage(url: str, body: dict[str, Any]) -> list[Any]:
    """The usage objects a direct stream with ``include_usage`` carries (null ones left out)."""
    import json

    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    found = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=stream_body, timeout=120,
                      trust_env=False) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                usage = json.loads(line[5:]).get("usage")
                if usage is not None:
                    found.append(usage)
    return found


def relayed_usage_matches_direct(machine: PairedMachine, model: str,
                                 **sampling: Any) -> dict[str, Any]:
    """Non-streaming: relayed usage equals direct usage; returns it."""
    body = {"model": model, "messages": MESSAGES, **sampling}
    expected = direct(machine.provider.url, body)["usage"]
    with machine.openai(timeout=120.0) as client:
        reply = client.chat.completions.create(model=machine.model, messages=MESSAGES,
                                               **sampling)
    assert reply.usage is not None
    assert reply.usage.model_dump(exclude_none=True) == expected
    return expected


def streamed_usage(machine: PairedMachine, **sampling: Any) -> Any:
    with machine.openai(timeout=120.0) as client:
        chunks = list(client.chat.completions.create(
            model=machine.model, messages=MESSAGES, stream=True,
            stream_options={"include_usage": True}, **sampling))
    assert chunks[-1].choices == []  # the usage chunk is there, whatever it says
    assert all(c.usage is None for c in chunks[:-1])
    return chunks[-1].usage


def test_usage_equals_the_servers_and_a_stream_without_it_says_null(
        machine_factory: MachineFactory) -> None:
    machine = machine_factory("openai", stream_usage=False, prompt_tokens=34,
                              reply="red green blue")
    usage = relayed_usage_matches_direct(machine, "qwen2.5-7b-instruct")
    assert usage == {"prompt_tokens": 34, "completion_tokens": 3, "total_tokens": 37}
    assert streamed_usage(machine) is None
    with machine.openai() as client:  # the raw JSON says null too, not an absent key
        raw = client.chat.completions.with_raw_response.create(
            model=machine.model, messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        text = raw.http_response.read().decode()
    assert '"choices":[],"usage":null' in text.replace(" ", "")

    machine.provider.control.configure(stream_usage=True)
    assert streamed_usage(machine).model_dump(exclude_none=True) == usage


def test_llama_cpp_python_server_usage_direct_and_relayed_is_equal(
        lattice_home: Path, gateway: GatewayProcess, api_key: str) -> None:
    """llama-cpp-python's OpenAI-compatible server (a real server nobody here wrote) with
    SmolLM2: it reports usage for non-streaming answers only."""
    sampling = {"max_tokens": 12, "temperature": 0, "seed": 7}
    with llama_cpp_server() as server:
        try:
            machine = pair_machine(lattice_home, gateway.url, api_key, server)
            usage = relayed_usage_matches_direct(machine, server.model, **sampling)
            assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
            # Its streams carry no usage, even with include_usage; relayed, that is null.
            assert direct_stream_usage(server.url, {
                "model": server.model, "messages": MESSAGES, **sampling}) == []
            assert streamed_usage(machine, **sampling) is None
        finally:
            stop_daemon(lattice_home)
