"""The SSE stream the app receives through gateway + relay + daemon has OpenAI's exact
shape, tool calls included: real processes, the official openai client as the app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from lattice_daemon.paths import Paths, get_paths
from tests.daemon.support import DaemonProcess, PairedRuntime, pair_runtime, ping, write_config
from tests.servers import run_ollama_server
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:3b"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    with run_gateway(None, poll_window_seconds=2, presence_window_seconds=1) as gw:
        yield gw


@pytest.fixture
def served(gateway: GatewayProcess, lattice_home: Path) -> Iterator[tuple[Any, PairedRuntime]]:
    paths: Paths = get_paths()
    with run_ollama_server(models=[MODEL]) as ollama:
        runtime = pair_runtime(gateway, paths)
        write_config(paths, relay=runtime.relay, provider_url=ollama.url)
        with DaemonProcess(paths).start():
            wait_until(lambda: ping(paths.socket)["relay"]["state"] == "connected",
                       timeout=5, what="daemon connected")
            yield ollama, runtime


def app(gateway: GatewayProcess, runtime: PairedRuntime) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=runtime.api_key, max_retries=0)


def test_streamed_tool_call_reaches_the_app_with_finish_reason_tool_calls(
        gateway: GatewayProcess, served: tuple[Any, PairedRuntime]) -> None:
    ollama, runtime = served
    ollama.configure(reply="", tool_calls=[{"name": "get_weather",
                                            "arguments": {"city": "Tokyo"}}])
    with app(gateway, runtime) as client:
        chunks = list(client.chat.completions.create(
            model=f"lattice:personal:{runtime.lattice_id}", stream=True, tools=TOOLS,
            messages=[{"role": "user", "content": "Weather in Tokyo?"}],
            stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert len(calls) == 1
    assert calls[0].id and calls[0].id.startswith("call_")  # Ollama sends none: generated
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Tokyo"}  # object -> string
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices
                and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # usage chunk last
    # The provider received the tools in its own wire format.
    chat_bodies = [r["body"] for r in ollama.stats()["requests"] if r["path"] == "/api/chat"]
    assert chat_bodies[-1]["tools"][0]["function"]["name"] == "get_weather"


def test_text_stream_chunks_share_id_and_created_and_end_with_usage(
        gateway: GatewayProcess, served: tuple[Any, PairedRuntime]) -> None:
    ollama, runtime = served
    ollama.configure(chunks=["Hello", " from", " Ollama"])
    with app(gateway, runtime) as client:
        chunks = list(client.chat.completions.create(
            model=f"lattice:personal:{runtime.lattice_id}", stream=True,
            messages=[{"role": "user", "content": "hi"}],
            stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert {c.model for c in chunks} == {f"lattice:personal:{runtime.lattice_id}"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from Ollama"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
