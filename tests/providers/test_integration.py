"""Both adapters against the real wire-format test servers (tests/servers)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from providers import Provider, ProviderError, detect_providers, make_provider
from tests.servers import ServerHandle, run_ollama_server, run_openai_server, server_process
from tests.support.net import async_wait_until, closed_port


@dataclass
class Setup:
    kind: str
    server: ServerHandle
    provider: Provider
    model: str

    def request(self, **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": "hi"}],
                **extra}


@pytest.fixture(params=["ollama", "lmstudio"])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    kind = request.param
    runner = run_ollama_server if kind == "ollama" else run_openai_server
    model = "llama3.2" if kind == "ollama" else "qwen2.5-7b-instruct"
    with runner() as server:
        provider = make_provider(kind, server.url, first_token_timeout=5.0, idle_timeout=2.0)
        yield Setup(kind, server, provider, model)
        await provider.aclose()


def contents(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["delta"]["content"] for c in chunks
            if c["choices"] and c["choices"][0]["delta"].get("content")]


async def test_chat_returns_the_reply_with_usage_over_one_kept_alive_connection(
        setup: Setup) -> None:
    setup.server.configure(reply="The sky is blue.", prompt_tokens=7)
    for _ in range(3):
        completion = await setup.provider.chat(setup.request())
        assert completion["choices"][0]["message"]["content"] == "The sky is blue."
        assert completion["choices"][0]["finish_reason"] == "stop"
        assert completion["usage"] == {"prompt_tokens": 7, "completion_tokens": 4,
                                       "total_tokens": 11}
    stats = setup.server.stats()
    assert stats["completed"] == 3
    assert stats["connections_opened"] == 1  # keep-alive: no per-request connection


async def test_openai_compatible_usage_is_what_the_server_reports_for_the_same_request(
        openai_server: ServerHandle) -> None:
    """A server without usage in streams (llama-cpp-python's): chat() still carries the
    usage the server gives a non-streaming request; a stream says null, not zeros."""
    import httpx

    openai_server.configure(stream_usage=False, prompt_tokens=34, reply="one two three")
    request = {"model": "qwen2.5-7b-instruct",
               "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(trust_env=False) as client:
        direct = (await client.post(f"{openai_server.url}/v1/chat/completions",
                                    json=request)).json()
    provider = make_provider("lmstudio", openai_server.url)
    completion = await provider.chat(request)
    assert completion["usage"] == direct["usage"] == {
        "prompt_tokens": 34, "completion_tokens": 3, "total_tokens": 37}
    assert openai_server.last_request()["body"]["stream"] is False
    chunks = [c async for c in provider.stream(
        {**request, "stream_options": {"include_usage": True}})]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is None
    openai_server.configure(stream_usage=True)
    chunks = [c async for c in provider.stream(
        {**request, "stream_options": {"include_usage": True}})]
    assert chunks[-1]["usage"] == direct["usage"]
    await provider.aclose()


async def test_ollama_receives_the_mapped_native_request(ollama_server: ServerHandle
                                                         ) -> None:
    provider = make_provider("ollama", ollama_server.url)
    await provider.chat({"model": "llama3.2", "max_completion_tokens": 9, "stop": "END",
                         "messages": [{"role": "developer", "content": "terse"},
                                      {"role": "user", "content": "hi"}]})
    sent = ollama_server.last_request()
    assert sent["path"] == "/api/chat"
    assert sent["body"]["stream"] is True
    assert sent["body"]["options"] == {"num_predict": 9, "stop": ["END"]}
    assert sent["body"]["messages"][0] == {"role": "system", "content": "terse"}
    await provider.aclose()


async def test_tool_calls_round_trip(setup: Setup) -> None:
    setup.server.configure(chunks=[], tool_calls=[{"name": "get_weather",
                                                   "arguments": {"city": "Tokyo"}}])
    completion = await setup.provider.chat(setup.request(tools=[
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}}]))
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}
    assert call["id"]


async def test_chunks_arrive_spread_over_time_as_the_server_sends_them(setup: Setup
                                                                        ) -> None:
    delay = 0.2
    setup.server.configure(chunks=["a", "b", "c", "d"], chunk_delay=delay)
    arrivals: list[float] = []
    started = time.monotonic()
    async for chunk in setup.provider.stream(setup.request(stream=True)):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    # Chunk i leaves the server i * delay after the request: nothing arrives early...
    assert all(at >= i * delay - 0.01 for i, at in enumerate(arrivals)), arrivals
    # ...and nothing is held back until the end (buffering would bunch them up).
    assert arrivals[-1] - arrivals[0] >= 2 * delay, arrivals
    assert sum(later - earlier >= delay / 2
               for earlier, later in itertools.pairwise(arrivals)) >= 2, arrivals


async def test_cancelling_the_consumer_mid_stream_closes_the_connection(setup: Setup
                                                                        ) -> None:
    setup.server.configure(chunks=["one", "two", "three"], chunk_delay=5.0)
    first_seen = asyncio.Event()

    async def consume() -> None:
        async for chunk in setup.provider.stream(setup.request(stream=True)):
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first_seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_seen.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def server_saw_abort() -> bool:
        return setup.server.stats()["aborts"] == 1
    await async_wait_until(server_saw_abort, timeout=5, what="the server to see the abort")
    assert setup.server.stats()["completed"] == 0


async def test_cancelling_chat_while_the_model_loads_closes_the_connection(setup: Setup
                                                                           ) -> None:
    setup.server.configure(first_byte_delay=10.0)
    task = asyncio.create_task(setup.provider.chat(setup.request()))

    async def loading() -> bool:
        return setup.server.stats()["in_flight"] == 1
    await async_wait_until(loading, timeout=5, what="the request to reach the server")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def server_saw_abort() -> bool:
        return setup.server.stats()["aborts"] == 1
    await async_wait_until(server_saw_abort, timeout=5, what="the server to see the abort")


async def test_slow_model_load_within_first_token_timeout_succeeds(setup: Setup) -> None:
    setup.server.configure(first_byte_delay=0.4)
    provider = make_provider(setup.kind, setup.server.url, first_token_timeout=3.0,
                             idle_timeout=0.1)
    completion = await provider.chat(setup.request())
    assert completion["choices"][0]["message"]["content"] == "Hello from the test server!"
    await provider.aclose()


async def test_model_load_past_first_token_timeout_fails_and_aborts(setup: Setup) -> None:
    setup.server.configure(first_byte_delay=10.0)
    provider = make_provider(setup.kind, setup.server.url, first_token_timeout=0.3)
    with pytest.raises(ProviderError) as info:
        await provider.chat(setup.request())
    assert info.value.reason == "timeout" and "load" in info.value.message

    async def server_saw_abort() -> bool:
        return setup.server.stats()["aborts"] == 1
    await async_wait_until(server_saw_abort, timeout=5, what="the server to see the abort")
    await provider.aclose()


async def test_unknown_model_is_model_not_found_with_the_providers_message(setup: Setup
                                                                           ) -> None:
    with pytest.raises(ProviderError) as info:
        await setup.provider.chat(setup.request(model="nope"))
    assert info.value.reason == "model_not_found" and info.value.status == 404
    expected = ("model 'nope' not found" if setup.kind == "ollama"
                else 'Model "nope" not found. Please specify a valid model.')
    assert info.value.message == f"{setup.provider.display_name}: {expected}"


@pytest.mark.parametrize(("error", "reason", "status"), [
    ("bad_request", "bad_request", 400), ("busy", "busy", 503),
    ("internal", "internal", 500)])
async def test_injected_errors_map_to_reasons(setup: Setup, error: str, reason: str,
                                              status: int) -> None:
    setup.server.configure(error=error, error_message=f"injected {error}")
    with pytest.raises(ProviderError) as info:
        await setup.provider.chat(setup.request())
    assert (info.value.reason, info.value.status) == (reason, status)
    assert info.value.message == f"{setup.provider.display_name}: injected {error}"


async def test_error_after_streaming_started(setup: Setup) -> None:
    setup.server.configure(chunks=["a", "b", "c"], stream_error_after=2)
    received: list[dict[str, Any]] = []
    with pytest.raises(ProviderError) as info:
        async for chunk in setup.provider.stream(setup.request(stream=True)):
            received.append(chunk)
    assert contents(received) == ["a", "b"]
    assert info.value.reason == "stream_error"
    assert setup.provider.display_name in info.value.message


async def test_server_dropping_the_connection_mid_stream(setup: Setup) -> None:
    setup.server.configure(chunks=["a", "b", "c"], drop_after=1)
    received: list[dict[str, Any]] = []
    with pytest.raises(ProviderError) as info:
        async for chunk in setup.provider.stream(setup.request(stream=True)):
            received.append(chunk)
    assert contents(received) == ["a"]
    assert info.value.reason == "stream_error"
    assert setup.server.stats()["aborts"] == 0  # the server dropped it, not the client
    # The provider keeps serving after a broken connection.
    setup.server.configure(drop_after=None)
    completion = await setup.provider.chat(setup.request())
    assert completion["choices"][0]["message"]["content"] == "abc"


async def test_models_and_health(setup: Setup) -> None:
    setup.server.configure(models=["m-one", "m-two:latest"])
    assert await setup.provider.models() == ["m-one", "m-two:latest"]
    health = await setup.provider.health()
    assert health.ok and health.models == ["m-one", "m-two:latest"]
    assert health.version == ("0.5.1" if setup.kind == "ollama" else None)


def test_detect_providers_reports_running_and_missing_servers() -> None:
    with run_ollama_server() as ollama, run_openai_server() as lmstudio:
        found = detect_providers(timeout=1.0, urls={"ollama": ollama.url,
                                                    "lmstudio": lmstudio.url})
        assert [(h.kind, h.ok, h.url) for h in found] == [
            ("ollama", True, ollama.url), ("lmstudio", True, lmstudio.url)]
        assert found[0].version == "0.5.1" and "llama3.2:latest" in found[0].models
    dead = f"http://127.0.0.1:{closed_port()}"
    [missing] = detect_providers(timeout=0.5, urls={"ollama": dead})
    assert not missing.ok and "ollama serve" in missing.detail
    assert missing.to_dict()["url"] == dead


async def test_detect_providers_works_inside_a_running_event_loop(
        ollama_server: ServerHandle) -> None:
    [health] = detect_providers(timeout=1.0, urls={"ollama": ollama_server.url})
    assert health.ok


async def test_closing_the_stream_early_closes_the_connection(setup: Setup) -> None:
    """A caller that stops reading (``aclosing`` + break) frees the provider at once."""
    setup.server.configure(chunks=["one", "two", "three"], chunk_delay=5.0)
    async with contextlib.aclosing(setup.provider.stream(setup.request(stream=True))) as s:
        async for chunk in s:
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                break

    async def server_saw_abort() -> bool:
        return setup.server.stats()["aborts"] == 1
    await async_wait_until(server_saw_abort, timeout=5, what="the server to see the abort")


async def test_provider_client_ignores_proxy_settings(ollama_server: ServerHandle,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts to a local provider must never go through a proxy from the environment."""
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(var, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    provider = make_provider("ollama", ollama_server.url)
    completion = await provider.chat({"model": "llama3.2",
                                      "messages": [{"role": "user", "content": "hi"}]})
    assert completion["choices"][0]["message"]["content"] == "Hello from the test server!"
    await provider.aclose()


async def test_server_in_another_process_sees_a_cancelled_stream() -> None:
    with server_process("lmstudio") as server:
        server.configure(chunks=["a", "b"], chunk_delay=5.0)
        provider = make_provider("lmstudio", server.url)
        first_seen = asyncio.Event()

        async def consume() -> None:
            async for chunk in provider.stream({"model": "qwen2.5-7b-instruct",
                                                "messages": [{"role": "user",
                                                              "content": "hi"}]}):
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first_seen.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first_seen.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def aborted() -> bool:
            return (await asyncio.to_thread(server.stats))["aborts"] == 1
        await async_wait_until(aborted, timeout=5, what="the server process to see the abort")
        await provider.aclose()
