"""LM Studio and any OpenAI-compatible server (llama.cpp server, vLLM, LocalAI).

The request is already OpenAI-shaped and passes through; we always stream from the
server (``stream: true`` with usage) and normalise what comes back to the order our
callers rely on: role chunk, content chunks, a finish chunk with an empty delta, then a
usage chunk with ``choices: []`` iff the caller asked for it; same id/created throughout.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from providers import _json
from providers._http import HttpProvider, error_text_from_value
from providers.base import ProviderError, ProviderHealth
from providers.chunks import ChunkMaker, usage_dict

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

    async def _chunks(self, request: dict[str, Any], *, include_usage: bool
                      ) -> AsyncGenerator[dict[str, Any], None]:
        n = request.get("n")
        if n is not None and n != 1:
            # One choice per stream is what callers (and the relay) handle.
            raise self.error("unsupported", f"n={n} is not supported; send n=1 or omit it")
        body = dict(request)
        body["stream"] = True
        # Always ask for usage (chat() needs it); drop it below unless the caller asked.
        body["stream_options"] = {**(request.get("stream_options") or {}),
                                  "include_usage": True}
        maker: ChunkMaker | None = None
        finish: str | None = None
        usage: dict[str, int] | None = None
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
            yield maker.usage(usage_dict(int((usage or {}).get("prompt_tokens") or 0),
                                         int((usage or {}).get("completion_tokens") or 0)))


class LMStudioProvider(OpenAICompatProvider):
    kind = "lmstudio"
    product_name = "LM Studio"
    start_hint = ("Start the server in LM Studio (Developer tab, \"Start server\") or run "
                  "`lms server start`.")
