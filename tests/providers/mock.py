"""httpx.MockTransport helpers for adapter unit tests: canned NDJSON/SSE bodies, delays."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from providers import Provider, make_provider

URLS = {"ollama": "http://ollama.test:11434", "lmstudio": "http://lmstudio.test:1234",
        "openai": "http://vllm.test:8000"}
NAMES = {"ollama": f"Ollama at {URLS['ollama']}", "lmstudio": f"LM Studio at {URLS['lmstudio']}",
         "openai": f"OpenAI-compatible server at {URLS['openai']}"}

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def mock_provider(kind: str, handler: Handler, **options: Any) -> Provider:
    return make_provider(kind, URLS[kind], transport=httpx.MockTransport(handler), **options)


def ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def sse(*events: dict[str, Any] | str, done: bool = True) -> bytes:
    out = []
    for event in events:
        out.append(event.encode() if isinstance(event, str)
                   else b"data: " + json.dumps(event).encode() + b"\n\n")
    if done:
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


async def paced(parts: list[tuple[float, bytes]], fail: Exception | None = None
                ) -> AsyncIterator[bytes]:
    """A response body that sends each part after its delay (simulated model pace)."""
    for delay, data in parts:
        if delay:
            await asyncio.sleep(delay)
        yield data
    if fail is not None:
        raise fail


def ollama_line(content: str = "", *, done: bool = False, **extra: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"model": "llama3.2:latest",
                            "created_at": "2023-08-04T15:52:19.385406455Z",
                            "message": {"role": "assistant", "content": content},
                            "done": done}
    line.update(extra)
    return line


def ollama_done(**extra: Any) -> dict[str, Any]:
    return ollama_line(done=True, **{"done_reason": "stop", "prompt_eval_count": 26,
                                     "eval_count": 282, **extra})


def openai_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any
                 ) -> dict[str, Any]:
    chunk = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1694268190,
             "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    chunk.update(extra)
    return chunk


async def collect(provider: Provider, request: dict[str, Any]) -> list[dict[str, Any]]:
    return [chunk async for chunk in provider.stream(request)]


def request_json(request: httpx.Request) -> Any:
    return json.loads(request.content)
