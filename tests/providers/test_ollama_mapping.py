"""OpenAI request -> Ollama /api/chat: one test per mapped field."""

from __future__ import annotations

from typing import Any

import pytest

from providers import ProviderError
from providers.ollama_mapping import to_ollama_request, unix_time

NAME = "Ollama at http://127.0.0.1:11434"


def ollama(request: dict[str, Any], stream: bool = True) -> dict[str, Any]:
    base = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    return to_ollama_request({**base, **request}, stream=stream, provider=NAME)


@pytest.mark.parametrize("stream", [True, False])
def test_stream_is_always_sent_explicitly(stream: bool) -> None:
    assert ollama({}, stream=stream)["stream"] is stream


def test_model_and_plain_messages_pass_through() -> None:
    body = ollama({"messages": [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "hi"}]})
    assert body["model"] == "llama3.2"
    assert body["messages"] == [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "hi"}]
    assert "options" not in body  # nothing invented: Modelfile defaults stay in force


def test_developer_role_becomes_system() -> None:
    body = ollama({"messages": [{"role": "developer", "content": "rules"}]})
    assert body["messages"][0]["role"] == "system"


@pytest.mark.parametrize(("field", "option", "value"), [
    ("temperature", "temperature", 0.2),
    ("top_p", "top_p", 0.5),
    ("seed", "seed", 42),
    ("frequency_penalty", "frequency_penalty", 0.3),
    ("presence_penalty", "presence_penalty", 0.4),
    ("num_ctx", "num_ctx", 8192),
])
def test_sampling_fields_go_to_options(field: str, option: str, value: object) -> None:
    body = ollama({field: value})
    assert body["options"][option] == value
    assert field not in body


def test_frequency_penalty_is_not_mapped_to_repeat_penalty() -> None:
    assert "repeat_penalty" not in ollama({"frequency_penalty": 0.5})["options"]


def test_max_completion_tokens_preferred_over_max_tokens() -> None:
    assert ollama({"max_tokens": 10})["options"]["num_predict"] == 10
    assert ollama({"max_completion_tokens": 20, "max_tokens": 10}
                  )["options"]["num_predict"] == 20


@pytest.mark.parametrize(("stop", "expected"), [("END", ["END"]), (["a", "b"], ["a", "b"])])
def test_stop_string_or_list_becomes_list(stop: object, expected: list[str]) -> None:
    assert ollama({"stop": stop})["options"]["stop"] == expected


def test_response_format_json_object_and_schema() -> None:
    assert ollama({"response_format": {"type": "json_object"}})["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = ollama({"response_format": {"type": "json_schema",
                                       "json_schema": {"name": "x", "schema": schema}}})
    assert body["format"] == schema
    assert "format" not in ollama({"response_format": {"type": "text"}})


def test_tools_pass_through_and_tool_choice_is_dropped() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "w",
                                               "parameters": {"type": "object"}}}]
    body = ollama({"tools": tools, "tool_choice": "auto"})
    assert body["tools"] == tools
    assert "tool_choice" not in body


def test_assistant_tool_call_arguments_string_becomes_object_and_tool_name_is_looked_up(
) -> None:
    body = ollama({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "11 degrees"},
    ]})
    assistant, tool = body["messages"][1], body["messages"][2]
    assert assistant["content"] == ""
    assert assistant["tool_calls"] == [
        {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]
    assert tool == {"role": "tool", "content": "11 degrees", "tool_name": "get_weather",
                    "tool_call_id": "call_1"}


def test_invalid_tool_call_arguments_are_a_clear_bad_request() -> None:
    with pytest.raises(ProviderError) as info:
        ollama({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function",
             "function": {"name": "f", "arguments": "{not json"}}]}]})
    assert info.value.reason == "bad_request"
    assert NAME in info.value.message and "'f'" in info.value.message


def test_text_parts_are_joined_and_data_url_images_become_bare_base64() -> None:
    body = ollama({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "text", "text": "in this picture?"},
    ]}]})
    message = body["messages"][0]
    assert message["content"] == "What is\nin this picture?"
    assert message["images"] == ["iVBORw0KGgo="]


def test_http_image_urls_are_rejected_with_a_clear_error() -> None:
    with pytest.raises(ProviderError) as info:
        ollama({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})
    assert info.value.reason == "unsupported"
    assert "data:image" in info.value.message and NAME in info.value.message


@pytest.mark.parametrize("n", [2, 5])
def test_n_greater_than_one_is_unsupported(n: int) -> None:
    with pytest.raises(ProviderError) as info:
        ollama({"n": n})
    assert info.value.reason == "unsupported" and info.value.status is None
    assert f"n={n}" in info.value.message


def test_n_equal_one_is_fine() -> None:
    assert "n" not in ollama({"n": 1})


@pytest.mark.parametrize(("effort", "think"), [
    ("none", False), ("minimal", "low"), ("low", "low"), ("medium", "medium"),
    ("high", "high")])
def test_reasoning_effort_becomes_think(effort: str, think: object) -> None:
    assert ollama({"reasoning_effort": effort})["think"] == think


def test_logprobs_are_top_level() -> None:
    body = ollama({"logprobs": True, "top_logprobs": 3})
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert "logprobs" not in body.get("options", {})


def test_extensions_num_ctx_and_keep_alive() -> None:
    body = ollama({"num_ctx": 16384, "keep_alive": "10m"})
    assert body["options"]["num_ctx"] == 16384
    assert body["keep_alive"] == "10m"


def test_ignored_openai_fields_do_not_leak() -> None:
    body = ollama({"logit_bias": {"1": 2}, "user": "u1", "stream_options":
                   {"include_usage": True}, "parallel_tool_calls": False})
    for field in ("logit_bias", "user", "stream_options", "parallel_tool_calls"):
        assert field not in body


def test_created_at_rfc3339_with_nanoseconds_to_unix() -> None:
    assert unix_time("2023-08-04T08:52:19.385406455-07:00") == 1691164339
    assert unix_time("2023-08-04T15:52:19.385406455Z") == 1691164339
    assert unix_time("garbage") is None and unix_time(None) is None


def test_tool_choice_none_means_no_tools_offered() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert "tools" not in ollama({"tools": tools, "tool_choice": "none"})
    assert ollama({"tools": tools, "tool_choice": "required"})["tools"] == tools


@pytest.mark.parametrize(("request_fields", "named"), [
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": "f"}]}]},
     "tool call"),
    ({"messages": [{"role": "assistant", "tool_calls": ["f"]}]}, "tool call"),
    ({"response_format": {"type": "json_schema", "json_schema": "x"}}, "json_schema"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": ["hi"]}]}, "content part"),
    ({"messages": [{"role": "user", "content": 5}]}, "content"),
])
def test_malformed_shapes_are_a_clear_bad_request(request_fields: dict[str, Any],
                                                   named: str) -> None:
    # Not an AttributeError, which the app would see as "the daemon failed" (502).
    with pytest.raises(ProviderError) as info:
        ollama(request_fields)
    assert info.value.reason == "bad_request"
    assert info.value.message.startswith(NAME) and named in info.value.message
