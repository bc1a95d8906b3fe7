"""Building OpenAI ``chat.completion.chunk`` dicts, and folding them into a completion.

Ollama is streamed from even for ``chat()``: a stream lets the deadlines be about
silence (a non-streaming reply is silent until the very end), and Ollama reports usage
in every stream. ``chat()`` then folds the chunks into one ``chat.completion`` with
:func:`aggregate`. (OpenAI-compatible servers are asked without streaming for
``chat()``: some report usage only then; see providers/openai_compat.py.)

Usage is what the provider reported, or ``None`` when it reported none: never zeros
made up in its place (apps bill on it).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterable
from typing import Any


def new_completion_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


def new_tool_call_id() -> str:
    return "call_" + os.urandom(12).hex()


def wants_usage(request: dict[str, Any]) -> bool:
    options = request.get("stream_options")
    return bool(isinstance(options, dict) and options.get("include_usage"))


def reported_usage(value: Any) -> dict[str, Any] | None:
    """The provider's own ``usage`` object as it sent it (extra detail fields kept), or
    None when it sent none or something without the two counts."""
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return {"total_tokens": prompt + completion, **value}


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ChunkMaker:
    """Makes the chunks of one stream: same ``id``/``created``/``model`` on every chunk."""

    __slots__ = ("created", "id", "include_usage", "model")

    def __init__(self, model: str, *, include_usage: bool, created: int | None = None,
                 completion_id: str | None = None) -> None:
        self.id = completion_id or new_completion_id()
        self.created = created if created is not None else int(time.time())
        self.model = model
        self.include_usage = include_usage

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None,
              logprobs: Any = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason,
                                  "logprobs": logprobs}
        chunk: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk",
                                 "created": self.created, "model": self.model,
                                 "choices": [choice]}
        if self.include_usage:
            # OpenAI: when include_usage is set, every other chunk carries usage: null.
            chunk["usage"] = None
        return chunk

    def role(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""})

    def finish(self, finish_reason: str) -> dict[str, Any]:
        return self.chunk({}, finish_reason)

    def usage(self, usage: dict[str, Any] | None) -> dict[str, Any]:
        """The last chunk of a stream that asked for usage; ``usage`` None says the
        provider reported none."""
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": usage}


async def aggregate(chunks: AsyncIterable[dict[str, Any]]) -> dict[str, Any]:
    """Fold a chunk stream (role, deltas, finish, usage) into a ``chat.completion``."""
    first: dict[str, Any] | None = None
    content: list[str] = []
    reasoning: list[str] = []
    tool_calls: dict[int, dict[str, Any]] = {}
    logprobs: list[Any] = []
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    fingerprint: Any = None
    async for chunk in chunks:
        if first is None:
            first = chunk
        if chunk.get("usage"):
            usage = chunk["usage"]
        if chunk.get("system_fingerprint"):
            fingerprint = chunk["system_fingerprint"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            text = delta.get("reasoning_content") or delta.get("reasoning")
            if text:
                reasoning.append(text)
            for call in delta.get("tool_calls") or ():
                _merge_tool_call(tool_calls, call)
            if choice.get("logprobs") and choice["logprobs"].get("content"):
                logprobs.extend(choice["logprobs"]["content"])
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
    if first is None:  # pragma: no cover - adapters always yield at least role + finish
        raise ValueError("empty stream")
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(content) if content or not tool_calls
                               else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        message["tool_calls"] = [tool_calls[i] for i in sorted(tool_calls)]
    return {
        "id": first["id"],
        "object": "chat.completion",
        "created": first["created"],
        "model": first["model"],
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": finish_reason or "stop",
                     "logprobs": {"content": logprobs} if logprobs else None}],
        "usage": usage,
    }


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """Tool calls stream whole (Ollama) or as fragments by ``index`` (LM Studio, OpenAI)."""
    index = delta.get("index", len(calls))
    function = delta.get("function") or {}
    call = calls.get(index)
    if call is None:
        calls[index] = {
            "id": delta.get("id") or new_tool_call_id(),
            "type": delta.get("type") or "function",
            "function": {"name": function.get("name") or "",
                         "arguments": function.get("arguments") or ""},
        }
        return
    if delta.get("id"):
        call["id"] = delta["id"]
    if function.get("name"):
        call["function"]["name"] += function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]
