"""Ollama through its native ``/api/chat`` (NDJSON), answering in OpenAI shapes.

Why native and not Ollama's own ``/v1``: ``/v1`` ignores ``max_completion_tokens``,
cannot carry ``num_ctx`` / ``keep_alive``, and forces temperature/top_p to 1.0
(Ollama's OpenAI-compatibility documentation).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from providers import _json
from providers._http import HttpProvider, error_text_from_value
from providers.base import ProviderError, ProviderHealth
from providers.chunks import ChunkMaker, new_tool_call_id, usage_dict
from providers.ollama_mapping import to_ollama_request, unix_time


class OllamaProvider(HttpProvider):
    kind = "ollama"
    product_name = "Ollama"
    start_hint = "Start it with `ollama serve` (or open the Ollama app)."

    async def models(self) -> list[str]:
        data = await self.get_json("/api/tags", self.probe_timeout)
        named = (m.get("name") or m.get("model") for m in data.get("models") or ()
                 if isinstance(m, dict))
        return [name for name in named if isinstance(name, str)]

    async def health(self) -> ProviderHealth:
        try:
            version, models = await asyncio.gather(
                self.get_json("/api/version", self.probe_timeout), self.models())
        except ProviderError as exc:
            return ProviderHealth(False, exc.message, kind=self.kind, url=self.base_url)
        ver = version.get("version")
        return ProviderHealth(True, f"{self.display_name}: running, {len(models)} model(s)",
                              ver, models, kind=self.kind, url=self.base_url)

    async def _chunks(self, request: dict[str, Any], *, include_usage: bool
                      ) -> AsyncGenerator[dict[str, Any], None]:
        body = _json.dumps(to_ollama_request(request, stream=True,
                                             provider=self.display_name))
        maker: ChunkMaker | None = None
        tool_index = 0
        finished = False
        async with aclosing(self.stream_lines("/api/chat", body)) as lines:
            async for line in lines:
                if finished:
                    continue  # read to the end so the connection goes back to the pool
                try:
                    event = _json.loads(line)
                except ValueError:
                    raise self.error("stream_error", "sent a line that is not JSON: "
                                     f"{line[:120].decode('utf-8', 'replace')!r}") from None
                if not isinstance(event, dict):
                    raise self.error("stream_error", "sent a line that is not a JSON object")
                if "error" in event:
                    raise self.error("stream_error", error_text_from_value(event))
                if maker is None:
                    maker = ChunkMaker(event.get("model") or request.get("model") or "",
                                       include_usage=include_usage,
                                       created=unix_time(event.get("created_at")))
                    yield maker.role()
                message = event.get("message") or {}
                delta: dict[str, Any] = {}
                if message.get("thinking"):
                    delta["reasoning_content"] = message["thinking"]
                if message.get("content"):
                    delta["content"] = message["content"]
                if message.get("tool_calls"):
                    calls = []
                    for call in message["tool_calls"]:
                        calls.append(_openai_tool_call(call, tool_index))
                        tool_index += 1
                    delta["tool_calls"] = calls
                logprobs = event.get("logprobs")
                if delta or logprobs:
                    yield maker.chunk(delta, logprobs={"content": logprobs} if logprobs
                                      else None)
                if event.get("done"):
                    # A tool call seen in ANY chunk makes the finish "tool_calls": Ollama
                    # sends the call and the done line separately.
                    if tool_index:
                        finish = "tool_calls"
                    elif event.get("done_reason") == "length":
                        finish = "length"
                    else:
                        finish = "stop"
                    yield maker.finish(finish)
                    if include_usage:
                        yield maker.usage(usage_dict(event.get("prompt_eval_count") or 0,
                                                     event.get("eval_count") or 0))
                    finished = True
        if not finished:
            raise self.error("stream_error",
                             "the response ended before the final (done) line")


def _openai_tool_call(call: dict[str, Any], index: int) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = _json.dumps_str(arguments if arguments is not None else {})
    return {"index": index, "id": call.get("id") or new_tool_call_id(), "type": "function",
            "function": {"name": function.get("name") or "", "arguments": arguments}}
