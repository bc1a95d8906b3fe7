"""OpenAI chat request -> Ollama native ``/api/chat`` body.

Pure functions, no I/O. Requests that Ollama cannot honour raise ProviderError *before*
anything is sent: ``n > 1`` and http(s) image URLs with reason ``unsupported``,
malformed tool-call arguments or image data URLs with reason ``bad_request``. The daemon
answers both with ``invalid_request`` (nothing reached Ollama); the message says what to
change.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from providers import _json
from providers.base import ProviderError

# OpenAI top-level field -> Ollama ``options`` key (same meaning, same scale).
_OPTION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    # Ollama extensions a caller may send at the top level.
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "num_ctx": "num_ctx",
}

# reasoning_effort -> think (Ollama maps none to false and minimal to low).
_THINK = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
          "high": "high", "max": "max"}

_DATA_URL = re.compile(r"^data:[^;,]*(?:;[^;,]*)*;base64,", re.IGNORECASE)


def to_ollama_request(request: dict[str, Any], *, stream: bool, provider: str
                      ) -> dict[str, Any]:
    """Map an OpenAI chat request to an Ollama ``/api/chat`` body.

    ``provider`` (the display name) prefixes every error message.
    """
    n = request.get("n")
    if n is not None and n != 1:
        raise ProviderError(
            "unsupported",
            f"{provider}: n={n} is not supported (Ollama returns exactly one choice); "
            "send n=1 or omit it")
    body: dict[str, Any] = {
        "model": request.get("model"),
        "messages": _messages(request.get("messages") or [], provider),
        "stream": stream,  # always explicit: Ollama's default is true
    }
    options: dict[str, Any] = {}
    for field, option in _OPTION_FIELDS.items():
        value = request.get(field)
        if value is not None:
            options[option] = value
    max_tokens = request.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = request.get("max_tokens")
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    stop = request.get("stop")
    if stop is not None:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    extra_options = request.get("options")
    if isinstance(extra_options, dict):  # native passthrough wins over mapped values
        options.update(extra_options)
    if options:
        body["options"] = options

    response_format = request.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_object":
            body["format"] = "json"
        elif kind == "json_schema":
            json_schema = response_format.get("json_schema") or {}
            if not isinstance(json_schema, dict):
                raise _bad_request(provider, "response_format.json_schema must be an object")
            schema = json_schema.get("schema")
            body["format"] = schema if schema is not None else "json"
    if request.get("tools") and request.get("tool_choice") != "none":
        # Same shape. tool_choice has no equivalent (and hangs some models): dropped,
        # except "none", honoured by not offering the tools at all.
        body["tools"] = request["tools"]
    effort = request.get("reasoning_effort")
    if effort is not None:
        body["think"] = _THINK.get(effort, effort)
    elif "think" in request:
        body["think"] = request["think"]
    for field in ("logprobs", "top_logprobs", "keep_alive"):
        if request.get(field) is not None:
            body[field] = request[field]
    return body


def _messages(messages: list[dict[str, Any]], provider: str) -> list[dict[str, Any]]:
    names_by_call_id: dict[str, str] = {}
    mapped = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad_request(provider, f"messages[{index}] must be an object")
        role = message.get("role")
        out: dict[str, Any] = {"role": "system" if role == "developer" else role}
        text, images = _content(message.get("content"), provider)
        out["content"] = text
        if images:
            out["images"] = images
        if role == "assistant" and message.get("tool_calls"):
            out["tool_calls"] = [_tool_call(call, names_by_call_id, provider)
                                 for call in message["tool_calls"]]
        if role == "tool":
            call_id = message.get("tool_call_id")
            name = message.get("name") or names_by_call_id.get(call_id or "")
            if name:
                out["tool_name"] = name
            if call_id:
                out["tool_call_id"] = call_id
        if message.get("thinking"):
            out["thinking"] = message["thinking"]
        mapped.append(out)
    return mapped


def _content(content: Any, provider: str) -> tuple[str, list[str]]:
    """String content as is; parts: text joined, data-URL images to bare base64."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    if not isinstance(content, list):
        raise _bad_request(provider, "message content must be a string or a list of parts")
    for part in content:
        if not isinstance(part, dict):
            raise _bad_request(provider, "each content part must be an object with a 'type'")
        kind = part.get("type")
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            images.append(_image_base64(url, provider))
        else:
            raise ProviderError(
                "unsupported", f"{provider}: content part type {kind!r} is not supported "
                "(Ollama takes text and base64 image_url parts)")
    return "\n".join(texts), images


def _image_base64(url: str, provider: str) -> str:
    match = _DATA_URL.match(url)
    if match:
        return url[match.end():]
    if url.startswith(("http://", "https://")):
        raise ProviderError(
            "unsupported", f"{provider}: image URLs are not supported (Ollama does not "
            "fetch http(s) images); send the image as a data:image/...;base64, URL")
    raise ProviderError("bad_request", f"{provider}: image_url must be a base64 data URL")


def _tool_call(call: dict[str, Any], names_by_call_id: dict[str, str], provider: str
               ) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise _bad_request(provider, "each assistant tool call must be an object with a "
                           "'function' object")
    name = function.get("name") or ""
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = _json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise ProviderError(
                "bad_request", f"{provider}: invalid tool call arguments for {name!r}: "
                "not valid JSON") from None
    out: dict[str, Any] = {"function": {"name": name, "arguments": arguments or {}}}
    if call.get("id"):
        out["id"] = call["id"]
        names_by_call_id[call["id"]] = name
    return out


def _bad_request(provider: str, message: str) -> ProviderError:
    """A malformed request: the app gets a clear 400, not a daemon failure."""
    return ProviderError("bad_request", f"{provider}: {message}")


def unix_time(created_at: Any) -> int | None:
    """Ollama's RFC 3339 ``created_at`` (nanosecond fraction) -> unix seconds."""
    if not isinstance(created_at, str) or not created_at:
        return None
    text = created_at.replace("Z", "+00:00").replace("z", "+00:00")
    # Python 3.10's fromisoformat takes at most 6 fraction digits; Ollama sends 9.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return None
