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
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from lattice_protocol import (
    ErrorCode,
    JobEnvelope,
    JobSpec,
    JobTiming,
    LatticeError,
    ProtocolError,
    Requester,
    ResultEvent,
    SealedEvent,
    Sealer,
    SealError,
    parse_model_string,
)

from .. import metrics
from ..drain import Drain, drain_of, shutting_down
from ..http import read_json_body, request_id_of
from ..relay.base import JobTicket, paused_error, watch_disconnect
from ..services import SCOPE_INFERENCE, Principal, services_of
from ..settings import Settings
from ..sse import SSE_DONE, SSE_HEADERS, SSE_KEEPALIVE, SSE_MEDIA_TYPE, sse_error, sse_frame

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Error codes a daemon's error event may carry to the app; anything else is provider_error.
_DAEMON_CODES = {code.value: code for code in (
    ErrorCode.PROVIDER_ERROR, ErrorCode.RUNTIME_TIMEOUT, ErrorCode.INVALID_REQUEST,
    ErrorCode.RUNTIME_UNREACHABLE,
    # the owner's controls, decided on the machine (docs/api.md)
    ErrorCode.RUNTIME_PAUSED, ErrorCode.APP_NOT_ALLOWED, ErrorCode.MODEL_NOT_ALLOWED,
    ErrorCode.BUDGET_EXCEEDED, ErrorCode.PROMPT_TOO_LONG)}
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


async def chat_completions(request: Request) -> Response:
    started = time.monotonic()  # when no RequestObserver noted the request's arrival
    services = services_of(request)
    settings = services.settings
    drain = drain_of(request)
    if drain.draining:
        raise shutting_down()  # before anything else: another replica answers it
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
    if runtime.status != "paired" or runtime.daemon_public_key is None:
        raise LatticeError(ErrorCode.RUNTIME_UNREACHABLE,
                           f"personal runtime {chat.lattice_id} is not paired with a daemon yet")
    if not (await services.broker.reachable([chat.lattice_id]))[chat.lattice_id]:
        raise LatticeError(ErrorCode.RUNTIME_UNREACHABLE,
                           f"personal runtime {chat.lattice_id} is offline: its daemon is not "
                           "connected")
    pause = (await services.broker.pauses([chat.lattice_id]))[chat.lattice_id]
    if pause is not None:
        raise paused_error(chat.lattice_id, pause)
    sealer = services.sealers.for_daemon(runtime.daemon_public_key)
    job_id = "job_" + secrets.token_hex(12)
    deadline = time.time() + settings.job_start_deadline_seconds
    spec = JobSpec(
        job_id=job_id, lattice_id=chat.lattice_id, deadline=deadline, stream=chat.stream,
        request=chat.request, model=chat.local_model or runtime.default_model,
        first_token_timeout=settings.first_token_timeout_seconds,
        idle_timeout=settings.idle_timeout_seconds,
        requester=_requester(principal, chat, request_id_of(request)),
    )
    sealed = sealer.seal(orjson.dumps(spec.to_dict()))
    ticket = await services.broker.submit(chat.lattice_id, JobEnvelope(job_id, deadline, sealed))
    relay = _RelayedJob(ticket, sealer, chat.model, settings,
                        _Clocked(request.scope.get("state", {}).get("started") or started, ticket),
                        drain)
    if chat.stream:
        return _StreamedAnswer(relay)
    async with relay.held(request.receive):
        return await relay.completion()


def _requester(principal: Principal, chat: ChatRequest, request_id: str) -> Requester:
    """Who asks, for the owner's rules and activity log (sealed with the job)."""
    user = chat.request.get("user")
    return Requester(
        account_id=principal.account_id,
        credential_kind="apiKey" if principal.credential_kind == "api_key" else "oauth",
        credential_id=principal.credential_id, credential_name=principal.credential_name,
        user=user[:256] if isinstance(user, str) and user else None, request_id=request_id)


# ------------------------------------------------------------------------ timing


class _Clocked:
    """One chat request's Server-Timing, on this process's monotonic clock only.

    Parts (milliseconds; docs/api.md): ``gw`` = arrival to job submitted, plus final
    event received to answer ready; ``pickup`` = submitted to a daemon's poll taking the
    job (when this process leased it); ``daemon`` and ``provider`` = the daemon's own
    durations from the final event (``daemon`` without the provider's share); ``relay`` =
    what remains of pickup-to-final-event: both trips over the network and the daemon's
    HTTP client. They add up to ``total`` = arrival to answer ready. Without the daemon's
    numbers (an older daemon) ``runtime`` replaces relay + daemon + provider.
    """

    __slots__ = ("final_at", "first_chunk_at", "started", "submitted", "ticket", "timing")

    def __init__(self, started: float, ticket: JobTicket) -> None:
        self.started = started
        self.submitted = time.monotonic()
        self.ticket = ticket
        self.final_at: float | None = None
        self.first_chunk_at: float | None = None
        self.timing: JobTiming | None = None

    def final(self, event: ResultEvent) -> None:
        self.final_at = time.monotonic()
        self.timing = event.timing

    def first_chunk(self) -> None:
        if self.first_chunk_at is None:
            self.first_chunk_at = now = time.monotonic()
            metrics.CHAT_TTFT.observe(now - self.started)

    def _picked_up(self) -> float | None:
        picked = self.ticket.picked_up_at
        return None if picked is None else max(picked, self.submitted)

    def first_byte(self) -> str:
        """The stream's header, sent with its first frame: ``pickup`` if known, and
        ``ttfb`` (arrival to this first frame)."""
        now = time.monotonic()
        picked = self._picked_up()
        parts = [] if picked is None else [("pickup", picked - self.submitted)]
        parts.append(("ttfb", now - self.started))
        return _server_timing(parts)

    def finished(self, stream: bool) -> str:
        """The Server-Timing value of an answer that is ready now (counted in metrics)."""
        now = time.monotonic()
        final_at = self.final_at if self.final_at is not None else now
        gateway = (self.submitted - self.started) + (now - final_at)
        picked = self._picked_up()
        runtime = final_at - (picked if picked is not None else self.submitted)
        total = now - self.started
        parts = [("gw", gateway)]
        if picked is not None:
            parts.append(("pickup", picked - self.submitted))
            metrics.CHAT_PICKUP.observe(picked - self.submitted)
        timing = self.timing
        if timing is not None and timing.daemon_ms is not None:
            daemon = timing.daemon_ms / 1000
            parts.append(("relay", runtime - daemon))
            provider = None if timing.provider_ms is None else timing.provider_ms / 1000
            if provider is not None and provider <= daemon:
                parts += [("daemon", daemon - provider), ("provider", provider)]
            else:
                parts.append(("daemon", daemon))
        else:
            parts.append(("runtime", runtime))
        parts.append(("total", total))
        metrics.CHAT_GATEWAY.observe(gateway)
        metrics.CHAT_RUNTIME.observe(runtime)
        metrics.CHAT_DURATION_OF[stream].observe(total)
        return _server_timing(parts)


def _server_timing(parts: list[tuple[str, float]]) -> str:
    return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in parts)


# -------------------------------------------------------------- waiting for the daemon


class _RelayedJob:
    """Reads one job's events off its ticket: opens them, checks order, keeps deadlines."""

    def __init__(self, ticket: JobTicket, sealer: Sealer, model: str, settings: Settings,
                 clocked: _Clocked, drain: Drain) -> None:
        self.ticket = ticket
        self.clocked = clocked
        # Held until the request ends (``_Held``): a drain waits for it, then cancels it.
        self.drain = drain
        drain.add(ticket)
        self.sealer = sealer
        self.model = model
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
                # The broker may hand one error to many tickets (a revoked runtime): each
                # request raises its own.
                if (ended := self.drain.failure_of_cancel(item)) is not item:
                    return ended
                # (its class too: MayHaveRun carries x-should-retry: false).
                return type(item)(item.code, item.message, item.param, item.retry_after)
            event = self._open(item)
            if isinstance(event, ResultEvent):
                self.silence_deadline = time.monotonic() + self.idle_timeout
                if event.kind == "progress":
                    continue  # a long non-streaming generation is still running
                if event.final:
                    self.clocked.final(event)
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
        return LatticeError(code, message, retry_after=event.retry_after)

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


    def held(self, receive: Receive) -> _Held:
        """``async with``: while the app's request waits on the job."""
        return _Held(self.ticket, receive, self.drain)

    async def completion(self) -> Response:
        """The ``chat.completion`` of a non-streaming job; its failure is raised."""
        event = await self.next()
        assert event is not None  # no wait_at_most: an event or a failure
        if isinstance(event, LatticeError):
            self.ticket.finish()
            raise event
        if event.kind == "result" and event.data is not None:
            self.ticket.finish()
            encoded = self.encode(event.data)
            if isinstance(encoded, LatticeError):
                raise encoded
            return Response(encoded, media_type="application/json",
                            headers={"server-timing": self.clocked.finished(stream=False)})
        if event.kind == "error":
            self.ticket.finish()
            raise self.failure_of(event)
        # A chunk/end for a non-streaming job: the daemon broke the protocol.
        self.ticket.cancel("invalid_event")
        self.ticket.finish()
        raise LatticeError(ErrorCode.PROVIDER_ERROR,
                           f"the personal runtime answered a non-streaming job with {event.kind!r}")

    async def sse_frames(self) -> AsyncIterator[bytes]:
        """The stream's SSE frames: chunks, keep-alive comments while nothing comes (model
        loading), ``[DONE]``. A failure before the first frame is raised; after it, it
        is the last frame (an in-stream error event)."""
        started = False
        while True:
            event = await self.next(wait_at_most=self.keepalive)
            if event is None:  # nothing for a keep-alive interval: model loading
                started = True
                yield SSE_KEEPALIVE
                continue
            if isinstance(event, LatticeError):
                failure = event
            elif event.kind == "chunk" and event.data is not None:
                encoded = self.encode(event.data)
                if not isinstance(encoded, LatticeError):
                    started = True
                    self.clocked.first_chunk()
                    yield sse_frame(encoded)
                    continue
                failure = encoded
            elif event.kind == "end":
                self.ticket.finish()
                # Headers left long ago: the timing goes in a comment line, which SSE
                # clients (the openai ones too) skip; one write with [DONE].
                yield (b": server-timing " + self.clocked.finished(stream=True).encode()
                       + b"\n\n" + SSE_DONE)
                return
            elif event.kind == "error":
                failure = self.failure_of(event)
            else:
                self.ticket.cancel("invalid_event")
                failure = LatticeError(ErrorCode.PROVIDER_ERROR,
                                       "the personal runtime answered a streaming job with a "
                                       "non-streaming result")
            self.ticket.finish()
            if not started:
                raise failure
            yield sse_error(failure.code, failure.message, failure.param)
            return


class _Held:
    """While the app's request waits on a job: the app going away cancels the job at
    once (the daemon aborts the provider call); a job left unfinished when the request
    ends is cancelled. (A class, not a generator: this is on every chat request.)"""

    __slots__ = ("_drain", "_receive", "_ticket", "_watcher")

    def __init__(self, ticket: JobTicket, receive: Receive, drain: Drain) -> None:
        self._ticket = ticket
        self._receive = receive
        self._drain = drain
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(watch_disconnect(
            self._receive, partial(self._ticket.cancel, "client_disconnected")))

    async def __aexit__(self, *exc_info: object) -> None:
        if self._watcher is not None:
            # Not awaited: the answer goes out now, the watcher ends on the next turn.
            self._watcher.cancel()
        self._ticket.cancel("request_ended")  # no-op after a final event
        self._drain.discard(self._ticket)


class _StreamedAnswer(StreamingResponse):
    """SSE exactly as OpenAI streams chat completions, while the job runs.

    The response starts with the first frame, not before: a failure before it is raised
    to the app's error handler, which answers with the error's status. The job's own
    disconnect watch (``held``) replaces Starlette's: the app going away must cancel the
    job at once, with that reason.
    """

    def __init__(self, relay: _RelayedJob) -> None:
        self.relay = relay
        self.frames = relay.sse_frames()
        super().__init__(self.frames, headers=SSE_HEADERS, media_type=SSE_MEDIA_TYPE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.relay.held(receive):
            first = await anext(self.frames)
            self.raw_headers.append((b"server-timing", self.relay.clocked.first_byte().encode()))
            self.body_iterator = _after(first, self.frames)
            await self.stream_response(send)


async def _after(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for frame in rest:
        yield frame


routes: list[BaseRoute] = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
]
