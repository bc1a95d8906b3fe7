"""LM Studio and any OpenAI-compatible server (llama.cpp server, vLLM, LocalAI).

The request is already OpenAI-shaped and passes through, streaming as the caller asked:

* ``chat()`` sends ``stream: false`` and returns the server's ``chat.completion`` with
  the usage the server reported for it. Streaming underneath would be blind to usage on
  servers that report none in streams (llama-cpp-python's server, even with
  ``stream_options.include_usage``), so the answer would differ from the same request
  sent straight to the server. The answer comes whole: the first-token timeout bounds
  the wait (see ``HttpProvider.post_json``); the daemon tells the gateway the job is
  alive meanwhile, and cancelling closes the connection.
* ``stream()`` normalises what comes back to the order our callers rely on: role chunk,
  content chunks, a finish chunk with an empty delta, then a usage chunk with
  ``choices: []`` iff the caller asked for it (``usage: null`` when the server reported
  none); same id/created throughout.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from providers import _json
from providers._http import HttpProvider, error_text_from_value
from providers.base import ProviderError, ProviderHealth
from providers.chunks import ChunkMaker, new_completion_id, reported_usage

_DONE = b"[DONE]"


class OpenAICompatProvider(HttpProvider):
    kind = "openai"
    product_name = "OpenAI-compatible server"
    start_hint = "Start it, or check the provider URL (--provider-url)."

    def __init__(self, base_url: str, *, api_key: str | None = None, **kwargs: Any) -> None:
        # Accept the common ".../v1" spelling of the URL; paths below include /v1.
        base_url = base_url.rstrip("/")
        if base_url.endswith("/v1"):
            base_url = base_url[:-3]
        headers = {"authorization": f"Bearer {api_key}"} if api_key else None
        super().__init__(base_url, headers=headers, **kwargs)

    async def models(self) -> list[str]:
        data = await self.get_json("/v1/models", self.probe_timeout)
        return [m["id"] for m in data.get("data") or () if isinstance(m, dict) and "id" in m]

    async def health(self) -> ProviderHealth:
        try:
            models = await self.models()
        except ProviderError as exc:
            return ProviderHealth(False, exc.message, kind=self.kind, url=self.base_url)
        return ProviderHealth(True, f"{self.display_name}: running, {len(models)} model(s)",
                              None, models, kind=self.kind, url=self.base_url)

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        self._check_choices(request)
        body = dict(request)
        body["stream"] = False
        body.pop("stream_options", None)  # only allowed with stream: true
        answer = await self.post_json("/v1/chat/completions", _json.dumps(body))
        if answer.get("error"):
            raise self.error("internal", error_text_from_value(answer))
        choices = answer.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or not isinstance(message, dict):
            raise self.error("internal", "answered without a message in 'choices'")
        message = {**message, "role": "assistant"}
        finish = choice.get("finish_reason") or "stop"
        if message.get("tool_calls") and finish == "stop":
            finish = "tool_calls"
        return {
            "id": answer.get("id") or new_completion_id(),
            "object": "chat.completion",
            "created": answer.get("created") or int(time.time()),
            "model": answer.get("model") or request.get("model") or "",
            "system_fingerprint": answer.get("system_fingerprint"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": choice.get("logprobs")}],
            "usage": reported_usage(answer.get("usage")),
        }

    def _check_choices(self, request: dict[str, Any]) -> None:
        n = request.get("n")
        if n is not None and n != 1:
            # One choice per answer is what callers (and the relay) handle.
            raise self.error("unsupported", f"n={n} is not supported; send n=1 or omit it")

    async def _chunks(self, request: dict[str, Any], *, include_usage: bool
                      ) -> AsyncGenerator[dict[str, Any], None]:
        self._check_choices(request)
        body = dict(request)
        body["stream"] = True
        maker: ChunkMaker | None = None
        finish: str | None = None
        usage: Any = None
        saw_tool_call = False
        done = False
        async with aclosing(self.stream_lines("/v1/chat/completions",
                                              _json.dumps(body))) as lines:
            async for line in lines:
                if done or not line.startswith(b"data:"):
                    # ":" comments (keep-alives), "event:"/"id:" lines; after [DONE], read
                    # to the end so the connection goes back to the pool.
                    continue
                payload = line[5:].strip()
                if payload == _DONE:
                    done = True
                    continue
                try:
                    event = _json.loads(payload)
                except ValueError:
                    raise self.error("stream_error", "sent an event that is not JSON: "
                                     f"{payload[:120].decode('utf-8', 'replace')!r}"
                                     ) from None
                if not isinstance(event, dict):
                    raise self.error("stream_error", "sent an event that is not an object")
                if event.get("error"):
                    raise self.error("stream_error", error_text_from_value(event))
                if maker is None:
                    maker = ChunkMaker(event.get("model") or request.get("model") or "",
                                       include_usage=include_usage,
                                       created=event.get("created"),
                                       completion_id=event.get("id"))
                    yield maker.role()
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or ():
                    delta = dict(choice.get("delta") or {})
                    delta.pop("role", None)
                    if delta.get("content") == "":
                        del delta["content"]
                    if delta.get("tool_calls"):
                        saw_tool_call = True
                    logprobs = choice.get("logprobs")
                    if delta or logprobs:
                        yield maker.chunk(delta, logprobs=logprobs)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        if not done and finish is None:
            # EOF without [DONE] is fine once the server said how it finished.
            raise self.error("stream_error", "the stream ended before the response finished")
        if maker is None:
            raise self.error("stream_error", "the stream ended without any output")
        if finish is None or (saw_tool_call and finish == "stop"):
            finish = "tool_calls" if saw_tool_call else "stop"
        yield maker.finish(finish)
        if include_usage:
            yield maker.usage(reported_usage(usage))


class LMStudioProvider(OpenAICompatProvider):
    kind = "lmstudio"
    product_name = "LM Studio"
    start_hint = ("Start the server in LM Studio (Developer tab, \"Start server\") or run "
                  "`lms server start`.")
