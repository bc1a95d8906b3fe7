"""LM Studio / OpenAI-compatible adapter against canned SSE and error bodies."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from providers import Provider, ProviderError, detect_providers, make_provider
from providers.chunks import aggregate
from tests.providers.mock import (
    NAMES,
    URLS,
    collect,
    mock_provider,
    openai_chunk,
    paced,
    request_json,
    sse,
)
from tests.support.net import closed_port

REQUEST = {"model": "qwen2.5-7b-instruct", "messages": [{"role": "user", "content": "hi"}]}

CANONICAL = sse(
    openai_chunk({"role": "assistant", "content": ""}),
    openai_chunk({"content": "Hello"}),
    openai_chunk({"content": " there"}),
    openai_chunk({}, "stop"),
    {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1694268190,
     "model": "m", "choices": [], "usage": {"prompt_tokens": 24, "completion_tokens": 2,
                                            "total_tokens": 26}},
)


async def folded(provider: Provider) -> dict[str, Any]:
    """The streamed answer to REQUEST, folded into one completion."""
    return await aggregate(provider.stream(REQUEST))


def answering(body: bytes, status: int = 200, seen: list[httpx.Request] | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, content=body)
    return handler


def completion_body(usage: dict[str, Any] | None, **message: Any) -> bytes:
    answer: dict[str, Any] = {
        "id": "chatcmpl-xyz", "object": "chat.completion", "created": 1694268190,
        "model": "qwen2.5-7b-instruct", "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "Hello there", **message}}]}
    if usage is not None:
        answer["usage"] = usage
    return json.dumps(answer).encode()


async def test_chat_is_sent_non_streaming_and_keeps_the_servers_usage() -> None:
    seen: list[httpx.Request] = []
    usage = {"prompt_tokens": 34, "completion_tokens": 12, "total_tokens": 46,
             "prompt_tokens_details": {"cached_tokens": 30}}
    provider = mock_provider("lmstudio", answering(completion_body(usage), seen=seen))
    request = {**REQUEST, "stream": False, "tool_choice": "auto", "max_tokens": 5,
               "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
               "stream_options": {"include_obfuscation": False}}
    completion = await provider.chat(request)
    sent = request_json(seen[0])
    assert seen[0].url.path == "/v1/chat/completions"
    stripped = {k: v for k, v in request.items() if k != "stream_options"}
    assert sent == {**stripped, "stream": False}
    assert completion == {
        "id": "chatcmpl-xyz", "object": "chat.completion", "created": 1694268190,
        "model": "qwen2.5-7b-instruct", "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "Hello there"}}],
        "usage": usage}


async def test_chat_without_usage_from_the_server_says_null_not_zeros() -> None:
    provider = mock_provider("openai", answering(completion_body(None)))
    assert (await provider.chat(REQUEST))["usage"] is None
    partial = {"completion_tokens": 3}  # no prompt count: not a usage anyone can bill on
    provider = mock_provider("openai", answering(completion_body(partial)))
    assert (await provider.chat(REQUEST))["usage"] is None
    provider = mock_provider("openai", answering(completion_body(
        {"prompt_tokens": 2, "completion_tokens": 3})))
    assert (await provider.chat(REQUEST))["usage"] == {"prompt_tokens": 2,
                                                       "completion_tokens": 3,
                                                       "total_tokens": 5}


async def test_chat_answer_with_tool_calls_and_finish_stop_reports_tool_calls() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    provider = mock_provider("openai", answering(completion_body(None, content=None,
                                                                 tool_calls=[call])))
    choice = (await provider.chat(REQUEST))["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["tool_calls"] == [call]


@pytest.mark.parametrize("body", [b'{"choices": []}', b'{"choices": [{"index": 0}]}',
                                  b'{"error": {"message": "model crashed"}}'])
async def test_chat_answer_without_a_message_is_an_internal_error(body: bytes) -> None:
    with pytest.raises(ProviderError) as info:
        await mock_provider("openai", answering(body)).chat(REQUEST)
    assert info.value.reason == "internal"


async def test_stream_passes_the_request_through_with_stream_true() -> None:
    seen: list[httpx.Request] = []
    provider = mock_provider("openai", answering(CANONICAL, seen=seen))
    request = {**REQUEST, "max_tokens": 5, "stream_options": {"include_usage": True}}
    await collect(provider, request)
    assert request_json(seen[0]) == {**request, "stream": True}
    await collect(provider, REQUEST)
    assert "stream_options" not in request_json(seen[1])


async def test_stream_asking_for_usage_from_a_server_that_sends_none_ends_with_null() -> None:
    body = sse(openai_chunk({"role": "assistant", "content": ""}),
               openai_chunk({"content": "Hi"}), openai_chunk({}, "stop"))
    chunks = await collect(mock_provider("openai", answering(body)),
                           {**REQUEST, "stream_options": {"include_usage": True}})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is None
    assert len(chunks) == 4


async def test_stream_order_and_usage_chunk_only_when_asked() -> None:
    provider = mock_provider("openai", answering(CANONICAL))
    with_usage = await collect(provider, {**REQUEST, "stream": True,
                                          "stream_options": {"include_usage": True}})
    assert with_usage[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in with_usage[1:3]] == [
        {"content": "Hello"}, {"content": " there"}]
    assert with_usage[3]["choices"][0]["delta"] == {}
    assert with_usage[3]["choices"][0]["finish_reason"] == "stop"
    assert with_usage[4]["choices"] == [] and with_usage[4]["usage"]["total_tokens"] == 26
    assert len(with_usage) == 5
    assert {(c["id"], c["created"]) for c in with_usage} == {("chatcmpl-abc", 1694268190)}

    without = await collect(provider, {**REQUEST, "stream": True})
    assert len(without) == 4 and all("usage" not in c for c in without)


async def test_comments_event_lines_and_blank_lines_are_ignored() -> None:
    body = sse(": keep-alive\n\n", "event: message\n", openai_chunk({"role": "assistant"}),
               ": ping\n\n", openai_chunk({"content": "ok"}), openai_chunk({}, "stop"))
    completion = await folded(mock_provider("openai", answering(body)))
    assert completion["choices"][0]["message"]["content"] == "ok"


async def test_nonconforming_server_is_normalised() -> None:
    """No role chunk, content on the finish chunk, usage on the last choice chunk."""
    body = sse(openai_chunk({"content": "Hi"}, id="x1", created=5),
               openai_chunk({"content": "!"}, "length", id="x2", created=6,
                            usage={"prompt_tokens": 3, "completion_tokens": 2,
                                   "total_tokens": 5}))
    chunks = await collect(mock_provider("openai", answering(body)),
                           {**REQUEST, "stream_options": {"include_usage": True}})
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [{"content": "Hi"},
                                                               {"content": "!"}]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:3])
    assert chunks[3]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length",
                                       "logprobs": None}
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["total_tokens"] == 5
    assert {(c["id"], c["created"]) for c in chunks} == {("x1", 5)}


async def test_incremental_tool_call_fragments_are_joined() -> None:
    body = sse(
        openai_chunk({"role": "assistant"}),
        openai_chunk({"tool_calls": [{"index": 0, "id": "377278620", "type": "function",
                                      "function": {"name": "get_weather", "arguments": ""}}]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Tokyo"}'}}]}),
        openai_chunk({}, "tool_calls"))
    completion = await folded(mock_provider("lmstudio", answering(body)))
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "377278620", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}}]


async def test_tool_calls_with_finish_stop_report_tool_calls() -> None:
    body = sse(openai_chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                             "function": {"name": "f", "arguments": "{}"}}]}),
               openai_chunk({}, "stop"))
    completion = await folded(mock_provider("openai", answering(body)))
    assert completion["choices"][0]["finish_reason"] == "tool_calls"


async def test_reasoning_deltas_are_kept() -> None:
    body = sse(openai_chunk({"role": "assistant"}),
               openai_chunk({"reasoning_content": "hmm"}), openai_chunk({"content": "4"}),
               openai_chunk({}, "stop"))
    completion = await folded(mock_provider("lmstudio", answering(body)))
    assert completion["choices"][0]["message"]["reasoning_content"] == "hmm"


@pytest.mark.parametrize(("status", "body", "reason", "text"), [
    (404, {"error": {"message": 'Model "x" not found. Please specify a valid model.',
                     "type": "invalid_request_error", "param": "model",
                     "code": "model_not_found"}},
     "model_not_found", 'Model "x" not found. Please specify a valid model.'),
    (400, {"error": "'response_format.type' must be 'json_schema' or 'text'"},
     "bad_request", "'response_format.type' must be 'json_schema' or 'text'"),
    (503, {"error": {"message": "overloaded", "type": "server_error"}}, "busy", "overloaded"),
    (500, {"error": {"message": "Failed to load model", "type": "server_error"}},
     "internal", "Failed to load model"),
    (429, {"error": {"message": "slow down"}}, "busy", "slow down"),
])
async def test_both_error_shapes_map_to_reason_and_keep_the_message(
        status: int, body: dict[str, Any], reason: str, text: str) -> None:
    provider = mock_provider("lmstudio", answering(json.dumps(body).encode(), status))
    with pytest.raises(ProviderError) as info:
        await provider.chat({**REQUEST, "model": "x"})
    assert info.value.reason == reason and info.value.status == status
    assert info.value.message == f"{NAMES['lmstudio']}: {text}"


async def test_non_json_error_body_is_reported_as_text() -> None:
    provider = mock_provider("openai", answering(b"Bad Gateway\n", 502))
    with pytest.raises(ProviderError) as info:
        await provider.chat(REQUEST)
    assert info.value.reason == "internal" and info.value.message.endswith("Bad Gateway")


async def test_error_event_inside_the_stream() -> None:
    body = sse(openai_chunk({"role": "assistant"}), openai_chunk({"content": "par"}),
               {"error": {"message": "The model has crashed", "type": "server_error"}},
               done=False)
    received: list[dict[str, Any]] = []
    with pytest.raises(ProviderError) as info:
        async for chunk in mock_provider("lmstudio", answering(body)).stream(REQUEST):
            received.append(chunk)
    assert [c["choices"][0]["delta"].get("content") for c in received] == ["", "par"]
    assert info.value.reason == "stream_error"
    assert info.value.message == f"{NAMES['lmstudio']}: The model has crashed"


async def test_stream_that_ends_without_finish_or_done_is_an_error() -> None:
    body = sse(openai_chunk({"role": "assistant"}), openai_chunk({"content": "x"}),
               done=False)
    with pytest.raises(ProviderError) as info:
        await folded(mock_provider("openai", answering(body)))
    assert info.value.reason == "stream_error"


async def test_connection_dropped_mid_stream() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=paced(
            [(0, sse(openai_chunk({"content": "a"}), done=False))],
            fail=httpx.ReadError("connection reset by peer")))
    with pytest.raises(ProviderError) as info:
        await folded(mock_provider("openai", handler))
    assert info.value.reason == "stream_error" and "connection reset" in info.value.message


async def test_models_from_v1_models_and_v1_suffix_in_url_is_accepted() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": [{"id": "openai/gpt-oss-20b",
                                                   "object": "model",
                                                   "owned_by": "organization_owner"}],
                                         "object": "list"})
    provider = make_provider("lmstudio", URLS["lmstudio"] + "/v1/",
                             transport=httpx.MockTransport(handler))
    assert provider.base_url == URLS["lmstudio"]
    assert await provider.models() == ["openai/gpt-oss-20b"]
    assert seen[0].url.path == "/v1/models"
    health = await provider.health()
    assert health.ok and health.models == ["openai/gpt-oss-20b"] and health.version is None


async def test_api_key_is_sent_as_bearer_and_never_in_messages() -> None:
    seen: list[httpx.Request] = []
    provider = make_provider("openai", URLS["openai"], api_key="sk-local-secret",
                             transport=httpx.MockTransport(
                                 answering(b'{"error": "nope"}', 401, seen)))
    with pytest.raises(ProviderError) as info:
        await provider.chat(REQUEST)
    assert seen[0].headers["authorization"] == "Bearer sk-local-secret"
    assert "sk-local-secret" not in info.value.message and "sk-local" not in repr(provider)


async def test_lmstudio_not_running_says_how_to_start_it() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    provider = make_provider("lmstudio", url)
    with pytest.raises(ProviderError) as info:
        await provider.chat(REQUEST)
    assert info.value.reason == "unreachable"
    assert info.value.message.startswith(f"LM Studio at {url}: not running")
    assert "Start server" in info.value.message
    await provider.aclose()


def test_make_provider_validates_kind_and_url() -> None:
    with pytest.raises(ValueError, match="unknown provider kind 'llamafile'"):
        make_provider("llamafile")
    with pytest.raises(ValueError, match="needs a URL"):
        make_provider("openai")
    with pytest.raises(ValueError, match="http"):
        make_provider("ollama", "localhost:11434")
    assert make_provider("ollama").display_name == "Ollama at http://localhost:11434"
    assert make_provider("lmstudio").display_name == "LM Studio at http://localhost:1234"


def test_an_unusable_url_is_a_value_error_and_a_failed_probe_not_a_crash() -> None:
    with pytest.raises(ValueError, match="not a valid URL"):
        make_provider("ollama", "http://[::1")  # was httpx.InvalidURL from deep inside
    with pytest.raises(ValueError, match="names no host"):
        make_provider("openai", "http://")
    (health,) = detect_providers(timeout=0.5, urls={"ollama": "http://[::1"})
    assert not health.ok and "not a valid URL" in health.detail
    assert health.kind == "ollama" and health.url == "http://[::1"


async def test_n_greater_than_one_is_rejected_before_sending() -> None:
    seen: list[httpx.Request] = []
    provider = mock_provider("openai", answering(CANONICAL, seen=seen))
    with pytest.raises(ProviderError) as info:
        await provider.chat({**REQUEST, "n": 2})
    assert info.value.reason == "unsupported" and "n=2" in info.value.message
    assert seen == []
