"""Ollama adapter against canned /api/chat responses: reverse mapping and every error."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from providers import ProviderError
from tests.providers.mock import (
    NAMES,
    collect,
    mock_provider,
    ndjson,
    ollama_done,
    ollama_line,
    paced,
    request_json,
)
from tests.support.net import closed_port

REQUEST = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
NAME = NAMES["ollama"]


def answering(body: bytes, status: int = 200, seen: list[Any] | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request_json(request))
        return httpx.Response(status, content=body)
    return handler


async def test_chat_maps_content_usage_created_and_streams_underneath() -> None:
    seen: list[Any] = []
    body = ndjson(ollama_line("Hello"), ollama_line(" world"), ollama_done())
    provider = mock_provider("ollama", answering(body, seen=seen))
    completion = await provider.chat({**REQUEST, "temperature": 0.1})
    assert seen[0]["stream"] is True  # streamed so deadlines are about silence
    assert seen[0]["options"] == {"temperature": 0.1}
    assert completion["object"] == "chat.completion"
    assert completion["created"] == 1691164339
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", completion["id"])
    choice = completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello world"}
    assert choice["finish_reason"] == "stop"
    assert completion["usage"] == {"prompt_tokens": 26, "completion_tokens": 282,
                                   "total_tokens": 308}
    await provider.aclose()


async def test_missing_prompt_eval_count_counts_as_zero_and_length_maps() -> None:
    done = ollama_done(done_reason="length")
    del done["prompt_eval_count"]
    provider = mock_provider("ollama", answering(ndjson(ollama_line("x"), done)))
    completion = await provider.chat(REQUEST)
    assert completion["usage"] == {"prompt_tokens": 0, "completion_tokens": 282,
                                   "total_tokens": 282}
    assert completion["choices"][0]["finish_reason"] == "length"


async def test_tool_call_in_an_earlier_chunk_makes_finish_tool_calls_with_generated_id(
) -> None:
    call = {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}
    body = ndjson(ollama_line("", message={"role": "assistant", "content": "",
                                           "tool_calls": [call]}),
                  ollama_done())  # done arrives in a separate chunk, done_reason "stop"
    provider = mock_provider("ollama", answering(body))
    chunks = await collect(provider, REQUEST)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    tool_delta = next(d for d in deltas if "tool_calls" in d)["tool_calls"][0]
    assert re.fullmatch(r"call_[0-9a-f]{24}", tool_delta["id"])
    assert tool_delta["index"] == 0 and tool_delta["type"] == "function"
    assert tool_delta["function"] == {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    completion = await mock_provider("ollama", answering(body)).chat(REQUEST)
    message = completion["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == '{"city":"Tokyo"}'
    assert completion["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_call_id_from_ollama_is_kept() -> None:
    call = {"id": "call_fromollama", "function": {"name": "f", "arguments": {}}}
    body = ndjson(ollama_line("", message={"role": "assistant", "content": "",
                                           "tool_calls": [call]}), ollama_done())
    completion = await mock_provider("ollama", answering(body)).chat(REQUEST)
    assert completion["choices"][0]["message"]["tool_calls"][0]["id"] == "call_fromollama"


async def test_thinking_becomes_reasoning_content() -> None:
    body = ndjson(ollama_line("", message={"role": "assistant", "content": "",
                                           "thinking": "Let me think."}),
                  ollama_line("42"), ollama_done())
    completion = await mock_provider("ollama", answering(body)).chat(REQUEST)
    message = completion["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think."
    assert message["content"] == "42"


async def test_stream_order_same_id_and_usage_chunk_iff_include_usage() -> None:
    body = ndjson(ollama_line("Hel"), ollama_line("lo"), ollama_done())
    provider = mock_provider("ollama", answering(body))
    with_usage = await collect(provider, {**REQUEST, "stream": True,
                                          "stream_options": {"include_usage": True}})
    assert with_usage[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in with_usage[1:3]] == ["Hel", "lo"]
    assert with_usage[3]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop",
                                           "logprobs": None}
    assert with_usage[4]["choices"] == []
    assert with_usage[4]["usage"] == {"prompt_tokens": 26, "completion_tokens": 282,
                                      "total_tokens": 308}
    assert all(c["usage"] is None for c in with_usage[:4])
    assert len({(c["id"], c["created"]) for c in with_usage}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in with_usage)

    without = await collect(provider, {**REQUEST, "stream": True})
    assert len(without) == 4 and without[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in without)


async def test_logprobs_are_passed_back_per_chunk() -> None:
    logprobs = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    body = ndjson(ollama_line("Hi", logprobs=logprobs), ollama_done())
    completion = await mock_provider("ollama", answering(body)).chat(
        {**REQUEST, "logprobs": True})
    assert completion["choices"][0]["logprobs"] == {"content": logprobs}


@pytest.mark.parametrize(("status", "message", "reason"), [
    (404, "model 'x' not found", "model_not_found"),
    (400, "registry.ollama.ai/library/x:latest does not support tools", "bad_request"),
    (503, "server busy, please try again.  maximum pending requests exceeded", "busy"),
    (500, "model requires more system memory (5.3 GiB) than is available (4.4 GiB)",
     "internal"),
])
async def test_error_statuses_carry_reason_status_and_ollamas_own_message(
        status: int, message: str, reason: str) -> None:
    provider = mock_provider("ollama", answering(ndjson({"error": message}), status))
    with pytest.raises(ProviderError) as info:
        await provider.chat({**REQUEST, "model": "x"})
    assert info.value.reason == reason and info.value.status == status
    assert info.value.message == f"{NAME}: {message}"


async def test_error_line_after_streaming_started_raises_after_the_chunks() -> None:
    body = ndjson(ollama_line("Once"), ollama_line(" upon"),
                  {"error": "an error was encountered while running the model"})
    provider = mock_provider("ollama", answering(body))
    received: list[dict[str, Any]] = []
    with pytest.raises(ProviderError) as info:
        async for chunk in provider.stream(REQUEST):
            received.append(chunk)
    assert [c["choices"][0]["delta"].get("content") for c in received] == ["", "Once", " upon"]
    assert info.value.reason == "stream_error"
    assert info.value.message == f"{NAME}: an error was encountered while running the model"


async def test_connection_dropped_mid_stream_is_a_stream_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=paced(
            [(0, ndjson(ollama_line("partial")))],
            fail=httpx.RemoteProtocolError("peer closed connection without sending "
                                           "complete message body")))
    with pytest.raises(ProviderError) as info:
        await collect(mock_provider("ollama", handler), REQUEST)
    assert info.value.reason == "stream_error"
    assert NAME in info.value.message and "peer closed" in info.value.message


async def test_body_ending_without_done_line_is_a_stream_error() -> None:
    provider = mock_provider("ollama", answering(ndjson(ollama_line("cut"))))
    with pytest.raises(ProviderError) as info:
        await provider.chat(REQUEST)
    assert info.value.reason == "stream_error" and "done" in info.value.message


async def test_non_json_line_is_a_stream_error() -> None:
    provider = mock_provider("ollama", answering(b"<html>proxy error</html>\n"))
    with pytest.raises(ProviderError) as info:
        await provider.chat(REQUEST)
    assert info.value.reason == "stream_error" and "not JSON" in info.value.message


async def test_request_rejected_before_sending_for_n_greater_than_one() -> None:
    seen: list[Any] = []
    provider = mock_provider("ollama", answering(b"", seen=seen))
    with pytest.raises(ProviderError) as info:
        await provider.chat({**REQUEST, "n": 3})
    assert info.value.reason == "unsupported" and seen == []


async def test_connection_refused_says_not_running_and_how_to_start() -> None:
    from providers import make_provider

    url = f"http://127.0.0.1:{closed_port()}"
    provider = make_provider("ollama", url)
    with pytest.raises(ProviderError) as info:
        await provider.chat(REQUEST)
    assert info.value.reason == "unreachable"
    assert info.value.message.startswith(f"Ollama at {url}: not running")
    assert "ollama serve" in info.value.message
    health = await provider.health()
    assert not health.ok and "ollama serve" in health.detail
    await provider.aclose()


async def test_models_and_health_from_tags_and_version() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/version":
            return httpx.Response(200, json={"version": "0.5.1"})
        assert request.url.path == "/api/tags"
        # an entry may carry only "model"; one with no name at all is not a model
        return httpx.Response(200, json={"models": [{"name": "llama3.2:latest",
                                                     "model": "llama3.2:latest"},
                                                    {"name": "qwen2.5:7b"},
                                                    {"model": "phi3:mini"}, {"size": 1}]})
    provider = mock_provider("ollama", handler)
    assert await provider.models() == ["llama3.2:latest", "qwen2.5:7b", "phi3:mini"]
    health = await provider.health()
    assert health.ok and health.version == "0.5.1"
    assert health.models == ["llama3.2:latest", "qwen2.5:7b", "phi3:mini"]
    assert health.kind == "ollama" and NAME in health.detail


async def test_models_from_a_server_that_is_not_ollama_is_a_clear_error() -> None:
    provider = mock_provider("ollama", lambda _: httpx.Response(200, content=b"[1, 2]"))
    with pytest.raises(ProviderError) as info:
        await provider.models()
    assert info.value.reason == "internal" and "/api/tags" in info.value.message
    assert not (await provider.health()).ok
