"""``POST /v1/chat/completions``: validate, seal, relay to the user's daemon, answer.

Order of checks (each failure is the contract's envelope): credentials with the
inference scope -> body size and JSON -> OpenAI fields and the model string -> the
runtime (404 unknown or another account's, 403 revoked, 503 unpaired/offline at once).

The job is then sealed to the runtime's daemon key and submitted to the broker; the
request is held while events arrive. Non-streaming answers the ``result`` as a
``chat.completion``; streaming answers SSE exactly as OpenAI does, with keep-alive
comments while the model loads and an in-stream error event if anything fails after the
first byte. If the app disconnects or the silence deadline passes, the job is cancelled
(the daemon gets a CancelNotice and aborts the provider call).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from lattice_protocol import (
    ErrorCode,
    JobEnvelope,
    JobSpec,
    LatticeError,
    ProtocolError,
    ResultEvent,
    SealedEvent,
    Sealer,
    SealError,
    parse_model_string,
)

from ..errors import api_error_response
from ..http import read_json_body
from ..relay import JobTicket, RelayBroker
from ..services import SCOPE_INFERENCE, Runtime, Services
from ..sse import SSE_DONE, SSE_HEADERS, SSE_KEEPALIVE, sse_error, sse_frame

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SEALER_CACHE_MAX = 10_000
# Error codes a daemon's error event may carry to the app; anything else is provider_error.
_DAEMON_CODES = {code.value: code for code in (
    ErrorCode.PROVIDER_ERROR, ErrorCode.RUNTIME_TIMEOUT, ErrorCode.INVALID_REQUEST,
    ErrorCode.RUNTIME_UNREACHABLE)}
_MAX_DAEMON_MESSAGE = 2000

# ------------------------------------------------------------------------ validation


def _invalid(message: str, param: str | None = None) -> LatticeError:
    return LatticeError(ErrorCode.INVALID_REQUEST, message, param)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(f"{name!r} must be a number", name)
    if not low <= value <= high:
        raise _invalid(f"{name!r} must be between {low:g} and {high:g}", name)


def _integer(body: dict[str, Any], name: str, low: int, high: int = 2**31) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{name!r} must be an integer", name)
    if not low <= value <= high:
        raise _invalid(f"{name!r} must be between {low} and {high}", name)


def _typed(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> None:
    value = body.get(name)
    if value is not None and ((isinstance(value, bool) and bool not in
                              (kind if isinstance(kind, tuple) else (kind,)))
                              or not isinstance(value, kind)):
        raise _invalid(f"{name!r} must be {what}", name)


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty array of message objects", "messages")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _invalid(f"{param} must be an object", param)
        role = message.get("role")
        if role not in _ROLES:
            raise _invalid(f"{param}.role must be one of {', '.join(sorted(_ROLES))}",
                           f"{param}.role")
        content = message.get("content")
        if content is None:
            # Assistant turns that only call tools carry no content.
            if role != "assistant":
                raise _invalid(f"{param}.content is required", f"{param}.content")
        elif isinstance(content, list):
            for part_index, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _invalid(f"{param}.content[{part_index}] must be an object with a "
                                   "string 'type'", f"{param}.content")
        elif not isinstance(content, str):
            raise _invalid(f"{param}.content must be a string or an array of content parts",
                           f"{param}.content")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise _invalid(f"{param}.name must be a string", f"{param}.name")


@dataclass(frozen=True)
class ChatRequest:
    model: str  # the model string as the app sent it (echoed in answers)
    lattice_id: str
    local_model: str | None
    stream: bool
    request: dict[str, Any]  # the body without "model", as the daemon receives it


def validate_chat_request(body: dict[str, Any]) -> ChatRequest:
    """The OpenAI chat request checked field by field; ApiError invalid_request otherwise."""
    if "model" not in body:
        raise _invalid("'model' is required", "model")
    try:
        ref = parse_model_string(body["model"])
    except ValueError as exc:
        raise _invalid(str(exc), "model") from None
    _validate_messages(body.get("messages"))
    _typed(body, "stream", bool, "a boolean")
    stream = bool(body.get("stream"))
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _invalid("'stream_options' must be an object", "stream_options")
        _typed(options, "include_usage", bool, "a boolean")
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _integer(body, "max_tokens", 1)
    _integer(body, "max_completion_tokens", 1)
    _integer(body, "seed", -(2**63), 2**63 - 1)
    _integer(body, "top_logprobs", 0, 20)
    _integer(body, "n", 1)
    if body.get("n") not in (None, 1):
        raise _invalid("'n' greater than 1 is not supported by personal runtimes", "n")
    _typed(body, "logprobs", bool, "a boolean")
    _typed(body, "user", str, "a string")
    _typed(body, "tools", list, "an array")
    _typed(body, "tool_choice", (str, dict), "a string or an object")
    _typed(body, "response_format", dict, "an object")
    _typed(body, "logit_bias", dict, "an object")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (
            isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))):
        raise _invalid("'stop' must be a string or an array of at most 4 strings", "stop")
    request = {k: v for k, v in body.items() if k != "model"}
    return ChatRequest(body["model"], ref.lattice_id, ref.local_model, stream, request)


# ----------------------------------------------------------------------- the endpoint


def _sealer(services: Services, runtime: Runtime) -> Sealer:
    """One Sealer per daemon key: the Box key agreement is the expensive part."""
    cache: dict[str, Sealer] = services.extras.setdefault("chat_sealers", {})  # type: ignore[assignment]
    key = runtime.daemon_public_key
    assert key is not None
    sealer = cache.get(key)
    if sealer is None:
        if len(cache) >= _SEALER_CACHE_MAX:
            cache.clear()
        sealer = cache[key] = Sealer(services.gateway_keys, key)
    return sealer


async def chat_completions(request: Request) -> Response:
    try:
        return await _chat_completions(request)
    except LatticeError as exc:
        return api_error_response(exc)


async def _chat_completions(request: Request) -> Response:
    services: Services = request.app.state.services
    settings = services.settings
    principal = await services.auth.authenticate(request, SCOPE_INFERENCE)
    body = await read_json_body(request, settings.max_body_bytes)
    chat = validate_chat_request(body)
    runtime = await services.store.get_runtime(chat.lattice_id)
    if runtime is None or runtime.account_id != principal.account_id:
        raise LatticeError(ErrorCode.RUNTIME_NOT_FOUND,
                           f"personal runtime {chat.lattice_id} not found", "model")
    if runtime.status == "revoked":
        raise LatticeError(ErrorCode.RUNTIME_REVOKED,
                           f"personal runtime {chat.lattice_id} was revoked", "model")
    broker: RelayBroker = services.broker  # type: ignore[assignment]
    if runtime.status != "paired" or runtime.daemon_public_key is None:
        raise LatticeError(ErrorCode.RUNTIME_UNREACHABLE,
                           f"personal runtime {chat.lattice_id} is not paired with a daemon yet")
    if not (await broker.reachable([chat.lattice_id]))[chat.lattice_id]:
        raise LatticeError(ErrorCode.RUNTIME_UNREACHABLE,
                           f"personal runtime {chat.lattice_id} is offline: its daemon is not "
                           "connected")
    sealer = _sealer(services, runtime)
    job_id = "job_" + secrets.token_hex(12)
    deadline = time.time() + settings.job_start_deadline_seconds
    spec = JobSpec(
        job_id=job_id, lattice_id=chat.lattice_id, deadline=deadline, stream=chat.stream,
        request=chat.request, model=chat.local_model or runtime.default_model,
        first_token_timeout=settings.first_token_timeout_seconds,
        idle_timeout=settings.idle_timeout_seconds,
    )
    sealed = sealer.seal(orjson.dumps(spec.to_dict()))
    ticket = await broker.submit(chat.lattice_id, JobEnvelope(job_id, deadline, sealed))
    relay = _RelayedJob(ticket, sealer, chat.model, services)
    return _StreamingAnswer(relay) if chat.stream else _CompletionAnswer(relay)


# -------------------------------------------------------------- waiting for the daemon


class _RelayedJob:
    """Reads one job's events off its ticket: opens them, checks order, keeps deadlines."""

    def __init__(self, ticket: JobTicket, sealer: Sealer, model: str, services: Services) -> None:
        self.ticket = ticket
        self.sealer = sealer
        self.model = model
        settings = services.settings
        self.first_token_timeout = settings.first_token_timeout_seconds
        self.idle_timeout = settings.idle_timeout_seconds
        self.pickup_timeout = settings.pickup_timeout_seconds
        self.keepalive = settings.sse_keepalive_seconds
        self.next_seq = 0
        self.silence_deadline = time.monotonic() + self.pickup_timeout + self.first_token_timeout

    async def next(self, wait_at_most: float | None = None) -> ResultEvent | LatticeError | None:
        """The next opened event, a failure, or None when ``wait_at_most`` passed quietly.

        Silence past the job's deadline is a runtime_timeout failure (and cancels).
        """
        while True:
            now = time.monotonic()
            remaining = self.silence_deadline - now
            if remaining <= 0:
                self.ticket.cancel("timeout")
                return LatticeError(ErrorCode.RUNTIME_TIMEOUT,
                                    "the personal runtime did not answer in time")
            timeout = remaining if wait_at_most is None else min(remaining, wait_at_most)
            item = await self.ticket.next_event(timeout)
            if item is None:
                if wait_at_most is not None and time.monotonic() < self.silence_deadline:
                    return None
                continue
            if isinstance(item, LatticeError):
                return item
            event = self._open(item)
            if isinstance(event, ResultEvent):
                self.silence_deadline = time.monotonic() + self.idle_timeout
                if event.kind == "progress":
                    continue  # a long non-streaming generation is still running
            return event

    def _open(self, sealed: SealedEvent) -> ResultEvent | LatticeError:
        try:
            event = ResultEvent.from_dict(self.sealer.open_json(sealed.sealed))
        except RecursionError:
            self.ticket.cancel("invalid_event")
            return LatticeError(ErrorCode.PROVIDER_ERROR,
                                "the personal runtime sent an event nested too deeply")
        except (SealError, ProtocolError, ValueError) as exc:
            # ValueError: an integer literal past Python's int conversion limit.
            self.ticket.cancel("invalid_event")
            return LatticeError(ErrorCode.PROVIDER_ERROR,
                                f"the personal runtime sent an event that could not be opened "
                                f"({exc})")
        if event.job_id != self.ticket.job_id or event.seq != self.next_seq \
                or sealed.seq != event.seq:
            self.ticket.cancel("invalid_event")
            return LatticeError(ErrorCode.PROVIDER_ERROR,
                                "the personal runtime sent an out-of-order or misrouted event")
        self.next_seq += 1
        return event

    def failure_of(self, event: ResultEvent) -> LatticeError:
        """The app-facing error of a daemon's ``error`` event. Only codes a daemon may
        mean are passed on: a daemon must not make the app think its key is invalid."""
        code = _DAEMON_CODES.get(event.code or "", ErrorCode.PROVIDER_ERROR)
        message = (event.message or "the local provider failed")[:_MAX_DAEMON_MESSAGE]
        return LatticeError(code, message)

    def encode(self, data: dict[str, Any]) -> bytes | LatticeError:
        """A daemon's completion or chunk as the app's JSON, carrying the app's model
        string. Values orjson cannot write (integers beyond 64 bits, nesting past its
        limit) are the daemon's fault: provider_error, never a truncated answer."""
        data["model"] = self.model
        try:
            return orjson.dumps(data)
        except orjson.JSONEncodeError as exc:
            self.ticket.cancel("invalid_event")
            return LatticeError(ErrorCode.PROVIDER_ERROR,
                                f"the personal runtime sent a result that is not valid JSON "
                                f"for the app ({exc})")


async def _watch_disconnect(receive: Receive, ticket: JobTicket) -> None:
    """Cancel the job when the app's connection goes away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            ticket.cancel("client_disconnected")
            return


class _HeldAnswer(Response):
    """A response that holds the request while the job runs (an ASGI app itself)."""

    def __init__(self, relay: _RelayedJob) -> None:
        self.relay = relay
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.get_running_loop().create_task(
            _watch_disconnect(receive, self.relay.ticket))
        try:
            await self.answer(send)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self.relay.ticket.cancel("request_ended")  # no-op after a final event

    async def answer(self, send: Send) -> None:
        raise NotImplementedError

    @staticmethod
    async def send_error(send: Send, error: LatticeError) -> None:
        retry = b"true" if error.code.retryable else b"false"
        await send({"type": "http.response.start", "status": error.code.status,
                    "headers": [*_JSON_HEADERS, (b"x-should-retry", retry)]})
        await send({"type": "http.response.body", "body": orjson.dumps(error.body())})


class _CompletionAnswer(_HeldAnswer):
    async def answer(self, send: Send) -> None:
        relay = self.relay
        while True:
            event = await relay.next()
            if isinstance(event, LatticeError):
                relay.ticket.finish()
                await self.send_error(send, event)
                return
            assert event is not None
            if event.kind == "result" and event.data is not None:
                relay.ticket.finish()
                encoded = relay.encode(event.data)
                if isinstance(encoded, LatticeError):
                    await self.send_error(send, encoded)
                    return
                await send({"type": "http.response.start", "status": 200,
                            "headers": _JSON_HEADERS})
                await send({"type": "http.response.body", "body": encoded})
                return
            if event.kind == "error":
                relay.ticket.finish()
                await self.send_error(send, relay.failure_of(event))
                return
            # A chunk/end for a non-streaming job: the daemon broke the protocol.
            relay.ticket.cancel("invalid_event")
            relay.ticket.finish()
            await self.send_error(send, LatticeError(
                ErrorCode.PROVIDER_ERROR,
                f"the personal runtime answered a non-streaming job with {event.kind!r}"))
            return


class _StreamingAnswer(_HeldAnswer):
    async def answer(self, send: Send) -> None:
        relay = self.relay
        started = False

        async def start() -> None:
            nonlocal started
            if not started:
                started = True
                await send({"type": "http.response.start", "status": 200,
                            "headers": SSE_HEADERS})

        async def body(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        while True:
            event = await relay.next(wait_at_most=relay.keepalive)
            if event is None:  # nothing for a keep-alive interval: model loading
                await start()
                await body(SSE_KEEPALIVE)
                continue
            failure: LatticeError | None = None
            if isinstance(event, LatticeError):
                failure = event
            elif event.kind == "chunk" and event.data is not None:
                encoded = relay.encode(event.data)
                if isinstance(encoded, LatticeError):
                    failure = encoded
                else:
                    await start()
                    await body(sse_frame(encoded))
                    continue
            elif event.kind == "end":
                relay.ticket.finish()
                await start()
                await body(SSE_DONE, more=False)
                return
            elif event.kind == "error":
                failure = relay.failure_of(event)
            else:
                relay.ticket.cancel("invalid_event")
                failure = LatticeError(ErrorCode.PROVIDER_ERROR,
                                       "the personal runtime answered a streaming job with a "
                                       "non-streaming result")
            relay.ticket.finish()
            if not started:
                await self.send_error(send, failure)
                return
            await body(sse_error(failure.code, failure.message, failure.param), more=False)
            return


routes: list[BaseRoute] = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
]
