"""Relay session routes (docs/protocol.md §2-§5): register, long-poll, events, deregister.

Every request carries the daemon token; a session is only usable with its runtime's
token (anything else is ``404 session_not_found``). Bodies are parsed strictly; bad
input raises ``400 invalid_request`` (answered by the app's one error handler) and never
disturbs other sessions.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from lattice_protocol import (
    MAX_EVENTS_POST_BYTES,
    ErrorCode,
    LatticeError,
    ProtocolError,
    SealedEvent,
)

from ..auth import authenticate_daemon
from ..drain import drain_of, shutting_down
from ..errors import error_response
from ..http import json_response, read_json_body
from ..relay import poll_window
from ..relay.base import PAUSE_REASONS, Pause
from ..services import services_of

log = logging.getLogger("lattice_gateway.relay")

MAX_CONCURRENCY = 1024  # bounds capacity and maxConcurrency
MAX_EVENTS_PER_REQUEST = 4096
MAX_MODELS = 1024
_MAX_TEXT = 256


def _invalid(message: str, param: str | None = None) -> LatticeError:
    return LatticeError(ErrorCode.INVALID_REQUEST, message, param)


def _text(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise _invalid(f"field {name!r} must be a string of 1 to {_MAX_TEXT} characters", name)
    return value


def _count(body: dict[str, Any], name: str, low: int, default: int | None = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_CONCURRENCY:
        raise _invalid(f"field {name!r} must be an integer from {low} to {MAX_CONCURRENCY}", name)
    return value


_MAX_INSTANCE_ID = 64


def _parse_register(body: dict[str, Any]) -> tuple[str, list[str], str | None, int]:
    daemon_version = _text(body, "daemonVersion")
    provider = body.get("provider")
    if not isinstance(provider, dict):
        raise _invalid("field 'provider' must be an object {kind, models, defaultModel}",
                       "provider")
    _text(provider, "kind")
    models = provider.get("models", [])
    if (not isinstance(models, list) or len(models) > MAX_MODELS
            or not all(isinstance(m, str) and 0 < len(m) <= _MAX_TEXT for m in models)):
        raise _invalid("field 'provider.models' must be a list of model names", "provider.models")
    default_model = _text(provider, "defaultModel", required=False)
    max_concurrency = _count(body, "maxConcurrency", 1, default=1)
    assert daemon_version is not None
    return daemon_version, models, default_model, max_concurrency


def _parse_pause(body: dict[str, Any]) -> Pause | None:
    """``paused``: null, or {reason: owner|schedule|battery, until: ISO-8601 or null}."""
    value = body.get("paused")
    if value is None:
        return None
    what = "field 'paused' must be null or {reason, until}"
    if not isinstance(value, dict) or value.get("reason") not in PAUSE_REASONS:
        raise _invalid(f"{what} with reason one of {', '.join(PAUSE_REASONS)}", "paused")
    until = value.get("until")
    if until is None:
        return Pause(value["reason"])
    if not isinstance(until, str) or len(until) > 64:
        raise _invalid(f"{what}: 'until' must be an ISO-8601 time or null", "paused.until")
    try:
        stamp = datetime.fromisoformat(until.replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(f"{what}: 'until' must be an ISO-8601 time or null",
                       "paused.until") from None
    if stamp.tzinfo is None:
        raise _invalid(f"{what}: 'until' needs a time zone (e.g. Z)", "paused.until")
    return Pause(value["reason"], stamp.timestamp())


async def register_session(request: Request) -> Response:
    services = services_of(request)
    runtime = await authenticate_daemon(request)
    body = await read_json_body(request, services.settings.max_body_bytes)
    daemon_version, models, default_model, max_concurrency = _parse_register(body)
    # Optional (older daemons send none): the daemon's machine, to notice a pairing
    # copied to a second machine (docs/protocol.md §2).
    instance_id = _text(body, "instanceId", required=False)
    if instance_id is not None and len(instance_id) > _MAX_INSTANCE_ID:
        raise _invalid(f"field 'instanceId' must be at most {_MAX_INSTANCE_ID} characters",
                       "instanceId")
    pause = _parse_pause(body)
    broker = services.broker
    session_id = await broker.register_session(runtime.lattice_id, max_concurrency,
                                               daemon_key=runtime.daemon_public_key,
                                               instance_id=instance_id)
    conflict = (instance_id is not None
                and await broker.instance_conflict(runtime.lattice_id, session_id))
    if conflict:
        log.warning("runtime %s: daemons of two machines serve one pairing (a copied "
                    "daemon config?); jobs are split between them", runtime.lattice_id)
    await broker.set_pause(runtime.lattice_id, session_id, pause)
    await services.store.record_daemon_session(
        runtime.lattice_id, daemon_version=daemon_version, models=models,
        default_model=default_model)
    return json_response({
        "sessionId": session_id,
        "latticeId": runtime.lattice_id,
        "pollWindowSeconds": poll_window(services.settings),
        "presenceWindowSeconds": services.settings.presence_window_seconds,
        "instanceConflict": conflict,
    }, status_code=201)


async def poll(request: Request) -> Response:
    services = services_of(request)
    runtime = await authenticate_daemon(request)
    body = await read_json_body(request, services.settings.max_body_bytes)
    # capacity 0 is a heartbeat that only collects cancel notices (a daemon whose slots
    # are all busy keeps one such poll outstanding).
    capacity = _count(body, "capacity", 0)
    # A paused daemon says so on every poll (it keeps the pause alive in the broker); a
    # change is posted at once to /state, so it never waits for the next poll.
    pause = _parse_pause(body)
    if pause is not None:
        await services.broker.set_pause(runtime.lattice_id, request.path_params["session_id"],
                                        pause)
    drain = drain_of(request)
    arrived_draining = drain.draining
    arrived = time.monotonic()
    result = await services.broker.poll(runtime.lattice_id, request.path_params["session_id"],
                                        capacity, receive=request.receive)
    answer = result.to_dict()
    if result.jobs:
        # How long the poll was held here: with it the daemon bounds how long ago its
        # jobs were leased without comparing clocks, and refuses a lease that reached it
        # later than the presence window (by then this gateway may have failed the job).
        answer["heldSeconds"] = round(time.monotonic() - arrived, 3)
    if drain.draining and not result.jobs and not result.cancels:
        # This replica is shutting down (the session lives in Redis; jobs already leased
        # here still post their results to this replica until it exits). A poll it held
        # ends now, empty, closing its connection: the daemon polls again at once on a
        # new connection, which a load balancer that knows sends to another replica. A
        # poll that still arrives here is refused: the daemon backs off briefly (jitter
        # spreads a fleet) and tries again, until the balancer stops sending it here.
        if arrived_draining:
            return error_response(shutting_down(), {"connection": "close"})
        return json_response(answer, headers={"connection": "close"})
    return json_response(answer)


async def post_events(request: Request) -> Response:
    services = services_of(request)
    runtime = await authenticate_daemon(request)
    # Results can outgrow the request that asked for them (sealed, base64): the relay's
    # own bound, which the daemon batches to (docs/protocol.md §4).
    body = await read_json_body(request, max(services.settings.max_body_bytes,
                                             MAX_EVENTS_POST_BYTES))
    raw_events = body.get("events")
    if not isinstance(raw_events, list) or len(raw_events) > MAX_EVENTS_PER_REQUEST:
        raise _invalid(f"field 'events' must be a list of at most {MAX_EVENTS_PER_REQUEST} "
                       "sealed events", "events")
    try:
        events = [SealedEvent.from_dict(e) for e in raw_events]
    except ProtocolError as exc:
        raise _invalid(str(exc), "events") from None
    result = await services.broker.post_events(runtime.lattice_id,
                                               request.path_params["session_id"], events)
    return json_response(result.to_dict())


async def post_state(request: Request) -> Response:
    """The daemon's serving state changed (paused, or not any more): the gateway knows at
    once, whatever its held poll is doing."""
    services = services_of(request)
    runtime = await authenticate_daemon(request)
    body = await read_json_body(request, services.settings.max_body_bytes)
    if "paused" not in body:
        raise _invalid("field 'paused' is required (null when serving)", "paused")
    await services.broker.set_pause(runtime.lattice_id, request.path_params["session_id"],
                                    _parse_pause(body))
    return Response(status_code=204)


async def deregister_session(request: Request) -> Response:
    runtime = await authenticate_daemon(request)
    await services_of(request).broker.deregister_session(runtime.lattice_id,
                                                         request.path_params["session_id"])
    return Response(status_code=204)


routes: list[BaseRoute] = [
    Route("/v1/relay/sessions", register_session, methods=["POST"]),
    Route("/v1/relay/sessions/{session_id}/poll", poll, methods=["POST"]),
    Route("/v1/relay/sessions/{session_id}/events", post_events, methods=["POST"]),
    Route("/v1/relay/sessions/{session_id}/state", post_state, methods=["POST"]),
    Route("/v1/relay/sessions/{session_id}", deregister_session, methods=["DELETE"]),
]
