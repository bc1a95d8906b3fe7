"""A fake LM Studio / OpenAI-compatible server (as LM Studio and OpenAI document it).

``GET /v1/models`` (LM Studio shape: no ``created``), ``POST /v1/chat/completions`` as
JSON or SSE (role chunk, content chunks, incremental tool-call deltas, finish chunk,
usage chunk when ``stream_options.include_usage``, ``data: [DONE]``). Errors in both
shapes LM Studio uses: the OpenAI envelope (unknown model 404, busy, internal) and a bare
string (400). In-stream error event and connection drops. Behaviour keys:
tests/servers/behaviour.py, plus ``sse_comments`` (a ``: keep-alive`` comment before each
event), ``error_shape`` (``envelope`` / ``bare`` / None for LM Studio's per-error) and
``stream_usage`` (False: no usage in streams even with ``include_usage``, as
llama-cpp-python's server; non-streaming answers still carry it).

Run standalone: ``python -m tests.servers.openai_server --port N`` (prints a READY line).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
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
    "models": ["qwen2.5-7b-instruct", "openai/gpt-oss-20b"],
    "sse_comments": False,
    "error_shape": None,
    "api_key": None,  # LM Studio's "Require Authentication": Bearer <key> or 401
    "stream_usage": True,
}

_DEFAULT_ERRORS = {
    "bad_request": "'response_format.type' must be 'json_schema' or 'text'",
    "busy": "Server is busy, please try again later",
    "internal": "Failed to load model: insufficient memory",
}
_ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error"}
STREAM_ERROR = "The model has crashed without additional information. (Exit code: null)"


def _envelope(message: str, status: int, param: str | None = None,
              code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


async def handle(request: Request, response: Response, state: ServerState) -> None:
    route = (request.method, request.path)
    required = state.behaviour["api_key"]
    if required and request.headers.get("authorization") != f"Bearer {required}":
        response.send_json(401, _envelope("Invalid or missing API token", 401,
                                          code="invalid_api_key"))
        return
    if route == ("GET", "/v1/models"):
        response.send_json(200, {"data": [{"id": m, "object": "model",
                                           "owned_by": "organization_owner"}
                                          for m in state.behaviour["models"]],
                                 "object": "list"})
    elif route == ("POST", "/v1/chat/completions"):
        await _chat(request, response, state.behaviour)
    else:
        response.send_json(404, {"error": f"Unexpected endpoint or method. "
                                          f"({request.method} {request.path})"})


def _fail(response: Response, b: dict[str, Any], kind: str, message: str,
          **envelope: Any) -> None:
    status = ERROR_STATUS[kind]
    shape = b["error_shape"] or ("bare" if kind == "bad_request" else "envelope")
    body = {"error": message} if shape == "bare" else _envelope(message, status, **envelope)
    response.send_json(status, body)


async def _chat(request: Request, response: Response, b: dict[str, Any]) -> None:
    try:
        body = request.json()
    except orjson.JSONDecodeError:
        return _fail(response, b, "bad_request", "Unexpected token in JSON body")
    if not isinstance(body, dict) or not body.get("messages"):
        return _fail(response, b, "bad_request", "'messages' field is required")
    model = body.get("model")
    if model not in b["models"]:
        return _fail(response, b, "not_found",
                     f'Model "{model}" not found. Please specify a valid model.',
                     param="model", code="model_not_found")
    if b["first_byte_delay"]:
        await asyncio.sleep(b["first_byte_delay"])  # JIT loading: headers withheld
    if b["error"]:
        return _fail(response, b, b["error"],
                     b["error_message"] or _DEFAULT_ERRORS.get(b["error"], "error"))
    pieces = content_pieces(b)
    base = {"id": "chatcmpl-" + os.urandom(8).hex(), "created": int(time.time()),
            "model": model, "system_fingerprint": model}
    usage = {"prompt_tokens": b["prompt_tokens"] or 0,
             "completion_tokens": completion_tokens(b, pieces)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    tool_calls = [{"id": call.get("id") or str(300000000 + i), "type": "function",
                   "function": {"name": call["name"],
                                "arguments": orjson.dumps(call.get("arguments", {})).decode()}}
                  for i, call in enumerate(b["tool_calls"] or ())]
    finish = "tool_calls" if tool_calls else b["done_reason"]
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")
                             and b["stream_usage"])
        await _stream(response, b, base, pieces, tool_calls, finish,
                      usage if include_usage else None)
        return
    if b["chunk_delay"]:
        await asyncio.sleep(b["chunk_delay"] * max(0, len(pieces) - 1))
    if b["drop_after"] is not None:
        return response.drop()
    message: dict[str, Any] = {"role": "assistant",
                               "content": None if tool_calls else "".join(pieces)}
    if b["thinking"]:
        message["reasoning_content"] = b["thinking"]
    if tool_calls:
        message["tool_calls"] = tool_calls
    response.send_json(200, {**base, "object": "chat.completion",
                             "choices": [{"index": 0, "message": message, "logprobs": None,
                                          "finish_reason": finish}],
                             "usage": usage})


async def _stream(response: Response, b: dict[str, Any], base: dict[str, Any],
                  pieces: list[str], tool_calls: list[dict[str, Any]], finish: str,
                  usage: dict[str, int] | None) -> None:
    response.start_chunked(200, "text/event-stream")
    pending: list[bytes] = []
    comment = b": keep-alive\n\n" if b["sse_comments"] else b""

    def event(value: Any) -> None:
        pending.append(comment + b"data: " + orjson.dumps(value) + b"\n\n")

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> None:
        value = {**base, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "logprobs": None,
                              "finish_reason": finish_reason}]}
        if usage is not None:
            value["usage"] = None
        event(value)

    def flush() -> None:
        if pending:
            response.write_chunk(b"".join(pending))
            pending.clear()

    chunk({"role": "assistant", "content": ""})
    if b["thinking"]:
        chunk({"reasoning_content": b["thinking"]})
    for index, piece in enumerate(pieces):
        if index == b["drop_after"]:
            flush()
            return response.drop()
        if index == b["stream_error_after"]:
            event(_envelope(STREAM_ERROR, 500))
            flush()
            return response.end_chunked()
        if index and b["chunk_delay"]:
            flush()
            await asyncio.sleep(b["chunk_delay"])
        chunk({"content": piece})
    if b["drop_after"] is not None and b["drop_after"] >= len(pieces):
        flush()
        return response.drop()
    for index, call in enumerate(tool_calls):
        # LM Studio streams tool calls incrementally: id + name first, then arguments.
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                               "function": {"name": call["function"]["name"],
                                            "arguments": ""}}]})
        for fragment in (arguments[:half], arguments[half:]):
            chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
    chunk({}, finish)
    if usage is not None:
        event({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    pending.append(b"data: [DONE]\n\n")
    flush()
    response.end_chunked()


@contextlib.contextmanager
def run_openai_server(**behaviour: Any) -> Iterator[_core.ServerHandle]:
    """A fake LM Studio / OpenAI-compatible server on a free port in a background thread."""
    with _core.run_in_thread(handle, DEFAULTS, behaviour) as server:
        yield server


if __name__ == "__main__":
    _core.main(handle, DEFAULTS, "openai_server")
