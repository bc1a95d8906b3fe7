"""Deadlines by silence: a loading model is not a timeout, a stalled one is, and a long
generation that keeps producing is never cut off. Both adapters' streams, simulated pace;
and the one deadline of an answer that comes whole (OpenAI-compatible ``chat()``)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from providers import ProviderError
from tests.providers.mock import (
    collect,
    mock_provider,
    ndjson,
    ollama_done,
    ollama_line,
    openai_chunk,
    paced,
    sse,
)

KINDS = ["ollama", "lmstudio"]


def model_name(kind: str) -> str:
    return "llama3.2" if kind == "ollama" else "qwen2.5-7b-instruct"


def piece(kind: str, text: str) -> bytes:
    if kind == "ollama":
        return ndjson(ollama_line(text))
    return sse(openai_chunk({"content": text}), done=False)


def ending(kind: str) -> bytes:
    return ndjson(ollama_done()) if kind == "ollama" else sse(openai_chunk({}, "stop"))


def request(kind: str) -> dict[str, object]:
    return {"model": model_name(kind), "messages": [{"role": "user", "content": "hi"}]}


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def headers_after(delay: float, body: bytes):
    """A provider that withholds its response headers for ``delay`` (model loading)."""
    async def handler(_: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay)
        return httpx.Response(200, content=body)
    return handler


@pytest.mark.parametrize("kind", KINDS)
async def test_slow_first_byte_within_first_token_timeout_succeeds(kind: str) -> None:
    # Loading takes 0.3 s: longer than the idle timeout, shorter than the first-token one.
    provider = mock_provider(kind, headers_after(0.3, piece(kind, "ready") + ending(kind)),
                             first_token_timeout=2.0, idle_timeout=0.1)
    assert text_of(await collect(provider, request(kind))) == "ready"


@pytest.mark.parametrize("kind", KINDS)
async def test_first_byte_past_first_token_timeout_fails_saying_loading(kind: str) -> None:
    provider = mock_provider(kind, headers_after(5.0, ending(kind)),
                             first_token_timeout=0.2, idle_timeout=10.0)
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        await collect(provider, request(kind))
    assert time.monotonic() - started < 2.0
    assert info.value.reason == "timeout"
    assert "load" in info.value.message and "0.2 s" in info.value.message
    assert provider.display_name in info.value.message


@pytest.mark.parametrize("kind", KINDS)
async def test_headers_then_no_first_token_also_counts_against_first_token_timeout(
        kind: str) -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=paced([(5.0, ending(kind))]))
    provider = mock_provider(kind, handler, first_token_timeout=0.2, idle_timeout=10.0)
    with pytest.raises(ProviderError) as info:
        await collect(provider, request(kind))
    assert info.value.reason == "timeout" and "load" in info.value.message


@pytest.mark.parametrize("kind", KINDS)
async def test_silence_past_idle_timeout_fails_after_the_chunks_already_yielded(
        kind: str) -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=paced([(0, piece(kind, "first")),
                                                  (5.0, ending(kind))]))
    provider = mock_provider(kind, handler, first_token_timeout=5.0, idle_timeout=0.2)
    received: list[str] = []
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        async for chunk in provider.stream(request(kind)):
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                received.append(chunk["choices"][0]["delta"]["content"])
    assert time.monotonic() - started < 2.0
    assert received == ["first"]
    assert info.value.reason == "timeout"
    assert "idle" in info.value.message and "0.2 s" in info.value.message


@pytest.mark.parametrize("kind", KINDS)
async def test_generation_longer_than_both_timeouts_is_never_cut_off(kind: str) -> None:
    # 12 tokens every 0.05 s = 0.6 s in all: three times each timeout, never silent long.
    parts = [(0.05, piece(kind, f"t{i} ")) for i in range(12)] + [(0.05, ending(kind))]

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=paced(parts))
    provider = mock_provider(kind, handler, first_token_timeout=0.2, idle_timeout=0.2)
    started = time.monotonic()
    chunks = await collect(provider, request(kind))
    assert time.monotonic() - started >= 0.6
    assert text_of(chunks) == "".join(f"t{i} " for i in range(12))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def whole_answer(text: str) -> bytes:
    return json.dumps({"id": "chatcmpl-w", "object": "chat.completion", "created": 1,
                       "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant",
                                                              "content": text}}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                                 "total_tokens": 4}}).encode()


async def test_a_whole_answer_slower_than_the_idle_timeout_is_not_cut_off() -> None:
    # A non-streaming answer is silent until the end: only the first-token timeout applies.
    provider = mock_provider("lmstudio", headers_after(0.3, whole_answer("done")),
                             first_token_timeout=2.0, idle_timeout=0.1)
    completion = await provider.chat(request("lmstudio"))
    assert completion["choices"][0]["message"]["content"] == "done"


async def test_a_whole_answer_past_the_first_token_timeout_fails_saying_so() -> None:
    provider = mock_provider("lmstudio", headers_after(5.0, whole_answer("late")),
                             first_token_timeout=0.2, idle_timeout=10.0)
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        await provider.chat(request("lmstudio"))
    assert time.monotonic() - started < 2.0
    assert info.value.reason == "timeout"
    assert "no answer within 0.2 s (first-token timeout" in info.value.message
    assert "stream the request" in info.value.message
