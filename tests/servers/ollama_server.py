"""A fake Ollama speaking its native wire format.

``GET /``, ``/api/version``, ``/api/tags``, ``/api/ps``, ``POST /api/chat`` (NDJSON when
``stream`` is true - the default - else one JSON object), errors as ``{"error": "..."}``
with Ollama's statuses, the in-stream error line, and connection drops. Behaviour keys:
tests/servers/behaviour.py, plus ``version``.

Run standalone: ``python -m tests.servers.ollama_server --port N`` (prints a READY line).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import orjson

from tests.servers import _core
from tests.servers._core import Request, Response, ServerState
from tests.servers.behaviour import (
    COMMON_DEFAULTS,
    ERROR_STATUS,
    completion_tokens,
    content_pieces,
)

DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "models": ["llama3.2:latest", "qwen2.5:7b"],
    "version": "0.5.1",
}

_DEFAULT_ERRORS = {
    "bad_request": "registry.ollama.ai/library/llama3.2:latest does not support tools",
    "busy": "server busy, please try again.  maximum pending requests exceeded",
    "internal": "model requires more system memory (5.3 GiB) than is available (4.4 GiB)",
}
STREAM_ERROR = "an error was encountered while running the model"


def _created_at() -> str:
    # RFC 3339 with a nanosecond fraction, like Go's time.Time.
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def _find_model(name: str, models: list[str]) -> str | None:
    for candidate in (name, f"{name}:latest"):
        if candidate in models:
            return candidate
    return None


def _model_entry(name: str) -> dict[str, Any]:
    return {"name": name, "model": name, "modified_at": "2026-01-01T00:00:00Z",
            "size": 2019393189, "digest": "a80c4f17acd5" + "0" * 52,
            "details": {"parent_model": "", "format": "gguf", "family": "llama",
                        "families": ["llama"], "parameter_size": "3.2B",
                        "quantization_level": "Q4_K_M"}}


async def handle(request: Request, response: Response, state: ServerState) -> None:
    b = state.behaviour
    route = (request.method, request.path)
    if request.path == "/" and request.method in ("GET", "HEAD"):
        response.send(200, b"Ollama is running", "text/plain; charset=utf-8")
    elif route == ("GET", "/api/version"):
        response.send_json(200, {"version": b["version"]})
    elif route == ("GET", "/api/tags"):
        response.send_json(200, {"models": [_model_entry(m) for m in b["models"]]})
    elif route == ("GET", "/api/ps"):
        response.send_json(200, {"models": [
            {**_model_entry(m), "expires_at": "2026-01-01T00:05:00Z", "size_vram": 0,
             "context_length": 4096} for m in b["models"]]})
    elif route == ("POST", "/api/chat"):
        await _chat(request, response, b)
    else:
        response.send(404, b"404 page not found", "text/plain")


def _error(response: Response, status: int, message: str) -> None:
    response.send_json(status, {"error": message})


async def _chat(request: Request, response: Response, b: dict[str, Any]) -> None:
    try:
        body = request.json()
    except orjson.JSONDecodeError as exc:
        return _error(response, 400, f"invalid character in request body: {exc}")
    if not isinstance(body, dict):
        return _error(response, 400, "json: cannot unmarshal into Go value of type ChatRequest")
    if not body.get("model"):
        return _error(response, 400, "model is required")
    model = _find_model(body["model"], b["models"])
    if model is None:
        return _error(response, 404, f"model '{body['model']}' not found")
    if b["first_byte_delay"]:
        await asyncio.sleep(b["first_byte_delay"])  # loading: headers withheld
    if b["error"]:
        status = ERROR_STATUS[b["error"]]
        message = b["error_message"] or _DEFAULT_ERRORS.get(
            b["error"], f"model '{body['model']}' not found")
        return _error(response, status, message)
    stream = body.get("stream", True)  # Ollama streams unless told otherwise
    base = {"model": model, "created_at": _created_at()}
    if not body.get("messages"):
        return response.send_json(200, {**base, "message": {"role": "assistant",
                                                            "content": ""},
                                        "done": True, "done_reason": "load"})
    pieces = content_pieces(b)
    final = {**base, "done": True, "done_reason": b["done_reason"],
             "total_duration": 4883583458, "load_duration": 1334875,
             "prompt_eval_duration": 342546000, "eval_count": completion_tokens(b, pieces),
             "eval_duration": 4535599000}
    if b["prompt_tokens"] is not None:
        final["prompt_eval_count"] = b["prompt_tokens"]
    tool_calls = [_tool_call(call) for call in b["tool_calls"] or ()]
    if stream:
        await _stream(response, b, base, pieces, tool_calls, final)
    else:
        await _whole(response, b, pieces, tool_calls, final)


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"function": {"name": call["name"],
                                        "arguments": call.get("arguments", {})}}
    if call.get("id"):
        out["id"] = call["id"]
    return out


async def _stream(response: Response, b: dict[str, Any], base: dict[str, Any],
                  pieces: list[str], tool_calls: list[dict[str, Any]],
                  final: dict[str, Any]) -> None:
    response.start_chunked(200, "application/x-ndjson")
    pending: list[bytes] = []  # lines not yet written: one write per burst when instant

    def line(message: dict[str, Any]) -> None:
        pending.append(orjson.dumps({**base, "message": message, "done": False}) + b"\n")

    def flush() -> None:
        if pending:
            response.write_chunk(b"".join(pending))
            pending.clear()

    if b["thinking"]:
        line({"role": "assistant", "content": "", "thinking": b["thinking"]})
    for index, piece in enumerate(pieces):
        if index == b["drop_after"]:
            flush()
            return response.drop()
        if index == b["stream_error_after"]:
            pending.append(orjson.dumps({"error": STREAM_ERROR}) + b"\n")
            flush()
            return response.end_chunked()
        if index and b["chunk_delay"]:
            flush()
            await asyncio.sleep(b["chunk_delay"])
        line({"role": "assistant", "content": piece})
    if b["drop_after"] is not None and b["drop_after"] >= len(pieces):
        flush()
        return response.drop()
    if tool_calls:
        line({"role": "assistant", "content": "", "tool_calls": tool_calls})
    pending.append(orjson.dumps({**final, "message": {"role": "assistant", "content": ""}})
                   + b"\n")
    flush()
    response.end_chunked()


async def _whole(response: Response, b: dict[str, Any], pieces: list[str],
                 tool_calls: list[dict[str, Any]], final: dict[str, Any]) -> None:
    if b["chunk_delay"]:
        await asyncio.sleep(b["chunk_delay"] * max(0, len(pieces) - 1))
    if b["drop_after"] is not None:
        return response.drop()
    if b["stream_error_after"] is not None:
        return _error(response, 500, STREAM_ERROR)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
    if b["thinking"]:
        message["thinking"] = b["thinking"]
    if tool_calls:
        message["tool_calls"] = tool_calls
    response.send_json(200, {**final, "message": message})


@contextlib.contextmanager
def run_ollama_server(**behaviour: Any) -> Iterator[_core.ServerHandle]:
    """A fake Ollama on a free 127.0.0.1 port in a background thread.

    ``with run_ollama_server(reply="hi") as server: server.url, server.configure(...)``
    """
    with _core.run_in_thread(handle, DEFAULTS, behaviour) as server:
        yield server


if __name__ == "__main__":
    _core.main(handle, DEFAULTS, "ollama_server")
