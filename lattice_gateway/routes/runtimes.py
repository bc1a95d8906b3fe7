"""Personal-runtime records (docs/api.md): create, list, get, revoke, mint bootstrap tokens.

The stored status (unpaired / paired / revoked) is overlaid with live presence from the
broker: a paired runtime is ``reachable`` while a daemon session of it is live, else
``offline`` once a daemon has registered, and still ``unpaired`` before that (a redeemed
bootstrap token alone does not count).

``lastSeenAt`` is the daemon's last contact the relay accepted (register, poll, events).
Revocation freezes it: the credential is refused from then on, so a daemon that keeps
polling does not move it.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lattice_protocol import ErrorCode, LatticeError, iso_from_seconds

from ..http import json_response, read_json_body
from ..services import SCOPE_INFERENCE, SCOPE_MANAGE, Principal, Runtime, Services, services_of
from ..store import iso_from_ms

EXECUTION_BACKENDS = ("local-model", "assistant-runtime")
DISPLAY_NAME_MAX = 200
READ_SCOPES = (SCOPE_INFERENCE, SCOPE_MANAGE)


async def public_records(services: Services, runtimes: list[Runtime]) -> list[dict[str, Any]]:
    """The API shape of runtimes, with live status and last-seen from the broker."""
    live_ids = [r.lattice_id for r in runtimes if r.status == "paired"]
    reachable = await services.broker.reachable(live_ids) if live_ids else {}
    last_seen = await services.broker.last_seen(live_ids) if live_ids else {}
    present = [lid for lid in live_ids if reachable.get(lid)]
    pauses = await services.broker.pauses(present) if present else {}
    records = []
    for runtime in runtimes:
        status: str = runtime.status
        seen = last_seen.get(runtime.lattice_id)
        pause = pauses.get(runtime.lattice_id)
        if status == "paired":
            if pause is not None:
                status = "offline"  # its daemon is there, but takes no jobs (``paused``)
            elif reachable.get(runtime.lattice_id):
                status = "reachable"
            elif seen is None and runtime.last_seen_at is None:
                status = "unpaired"  # redeemed, but no daemon has registered yet
            else:
                status = "offline"
        records.append({
            "latticeId": runtime.lattice_id,
            "accountId": runtime.account_id,
            "displayName": runtime.display_name,
            "executionBackend": runtime.execution_backend,
            "status": status,
            "createdAt": runtime.created_at,
            "updatedAt": runtime.updated_at,
            "lastSeenAt": iso_from_seconds(seen) if seen else runtime.last_seen_at,
            "daemonVersion": runtime.daemon_version,
            "models": list(runtime.models),
            "defaultModel": runtime.default_model,
            "paused": None if pause is None else pause.to_dict(),
        })
    return records


async def owned_runtime(services: Services, principal: Principal, lattice_id: str) -> Runtime:
    """The caller's runtime; another account's is as absent as a missing one (404)."""
    # Ids are short; anything longer cannot exist and is not worth a database round trip.
    runtime = await services.store.get_runtime(lattice_id) if len(lattice_id) <= 64 else None
    if runtime is None or runtime.account_id != principal.account_id:
        raise LatticeError(ErrorCode.RUNTIME_NOT_FOUND,
                           f"no personal runtime {lattice_id[:80]!r}")
    return runtime


def _display_name(body: dict[str, Any]) -> str:
    value = body.get("displayName")
    if not isinstance(value, str) or not value.strip():
        raise LatticeError(ErrorCode.INVALID_REQUEST,
                           "displayName is required and must be a non-empty string",
                           "displayName")
    if len(value) > DISPLAY_NAME_MAX:
        raise LatticeError(ErrorCode.INVALID_REQUEST,
                           f"displayName must be at most {DISPLAY_NAME_MAX} characters",
                           "displayName")
    # Shown in terminals (lattice-ctl) and UIs: escape sequences must not ride along.
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise LatticeError(ErrorCode.INVALID_REQUEST,
                           "displayName must not contain control characters", "displayName")
    return value.strip()


def _execution_backend(body: dict[str, Any]) -> str:
    value = body.get("executionBackend")
    if value not in EXECUTION_BACKENDS:
        raise LatticeError(ErrorCode.INVALID_REQUEST,
                           "executionBackend must be one of: " + ", ".join(EXECUTION_BACKENDS),
                           "executionBackend")
    return str(value)


async def create_runtime(request: Request) -> Response:
    services = services_of(request)
    principal = await services.auth.authenticate(request, SCOPE_MANAGE)
    body = await read_json_body(request, services.settings.max_body_bytes)
    display_name = _display_name(body)
    backend = _execution_backend(body)
    runtime = await services.store.create_runtime(principal.account_id, display_name, backend)
    [record] = await public_records(services, [runtime])
    return json_response({"runtime": record}, status_code=201)


async def list_runtimes(request: Request) -> Response:
    services = services_of(request)
    principal = await services.auth.authenticate(request, READ_SCOPES)
    runtimes = await services.store.list_runtimes(principal.account_id)
    return json_response({"runtimes": await public_records(services, runtimes)})


async def get_runtime(request: Request) -> Response:
    services = services_of(request)
    principal = await services.auth.authenticate(request, READ_SCOPES)
    runtime = await owned_runtime(services, principal, request.path_params["lattice_id"])
    [record] = await public_records(services, [runtime])
    return json_response({"runtime": record})


async def revoke_runtime(request: Request) -> Response:
    services = services_of(request)
    principal = await services.auth.authenticate(request, SCOPE_MANAGE)
    runtime = await owned_runtime(services, principal, request.path_params["lattice_id"])
    # The last contact accepted before the credential stops working: lastSeenAt stays
    # there (the broker forgets the runtime; later polls are refused and do not count).
    seen = (await services.broker.last_seen([runtime.lattice_id])).get(runtime.lattice_id)
    revoked = await services.store.revoke_runtime(
        runtime.lattice_id, last_seen_ms=int(seen * 1000) if seen else None)
    assert revoked is not None  # records are never deleted
    # After the store: a daemon that polls between the two already gets 403.
    await services.broker.revoke_runtime(runtime.lattice_id)
    [record] = await public_records(services, [revoked])
    return json_response({"runtime": record})


def _ttl_seconds(body: dict[str, Any], services: Services) -> int:
    settings = services.settings
    value = body.get("ttlSeconds", settings.bootstrap_ttl_default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise LatticeError(ErrorCode.INVALID_REQUEST, "ttlSeconds must be an integer",
                           "ttlSeconds")
    if not settings.bootstrap_ttl_min <= value <= settings.bootstrap_ttl_max:
        raise LatticeError(ErrorCode.INVALID_REQUEST,
                           f"ttlSeconds must be between {settings.bootstrap_ttl_min} and "
                           f"{settings.bootstrap_ttl_max}", "ttlSeconds")
    return value


def connect_command(public_url: str, token: str) -> str:
    """The exact command the user runs on their machine (docs/api.md)."""
    return (f"lattice-ctl relay connect --gateway '{public_url.rstrip('/')}' "
            f"--bootstrap-token '{token}'")


async def mint_bootstrap_token(request: Request) -> Response:
    services = services_of(request)
    principal = await services.auth.authenticate(request, SCOPE_MANAGE)
    runtime = await owned_runtime(services, principal, request.path_params["lattice_id"])
    body = await read_json_body(request, services.settings.max_body_bytes, allow_empty=True)
    ttl = _ttl_seconds(body, services)
    if runtime.status == "revoked":
        raise LatticeError(ErrorCode.RUNTIME_REVOKED,
                           "this runtime has been revoked; create a new runtime instead")
    minted = await services.store.mint_bootstrap_token(runtime.lattice_id, ttl)
    return json_response({
        "latticeId": runtime.lattice_id,
        "bootstrapToken": minted.token,
        "expiresAt": iso_from_ms(minted.expires_ms),
        "command": connect_command(services.settings.public_url, minted.token),
    }, status_code=201)


routes = [
    Route("/v1/personal-runtimes", create_runtime, methods=["POST"]),
    Route("/v1/personal-runtimes", list_runtimes, methods=["GET"]),
    Route("/v1/personal-runtimes/{lattice_id}", get_runtime, methods=["GET"]),
    Route("/v1/personal-runtimes/{lattice_id}", revoke_runtime, methods=["DELETE"]),
    Route("/v1/personal-runtimes/{lattice_id}/bootstrap-tokens", mint_bootstrap_token,
          methods=["POST"]),
]
