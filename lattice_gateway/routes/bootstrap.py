"""``POST /v1/relay/redeem`` (docs/protocol.md §1): a bootstrap token becomes a pairing.

The daemon sends only its public key; it gets its daemon token, the gateway's public key
and where to poll. The store makes redeeming atomic and one-time.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lattice_protocol import ErrorCode, LatticeError, SealError, decode_public_key

from .. import metrics
from ..http import json_response, read_json_body
from ..relay import poll_window
from ..services import services_of

DAEMON_VERSION_MAX = 64


def _redeem_fields(body: dict[str, Any]) -> tuple[str, str, str | None]:
    token = body.get("bootstrapToken")
    if not isinstance(token, str) or not token:
        # Unknown or malformed tokens share one code: nothing to learn by probing.
        raise LatticeError(ErrorCode.INVALID_BOOTSTRAP_TOKEN,
                           "bootstrapToken is missing or malformed", "bootstrapToken")
    public_key = body.get("daemonPublicKey")
    try:
        decode_public_key(public_key)
    except SealError as exc:
        raise LatticeError(ErrorCode.INVALID_REQUEST,
                           f"daemonPublicKey is not a valid public key: {exc}",
                           "daemonPublicKey") from None
    version = body.get("daemonVersion")
    if version is not None and (not isinstance(version, str)
                                or len(version) > DAEMON_VERSION_MAX):
        raise LatticeError(ErrorCode.INVALID_REQUEST,
                           f"daemonVersion must be a string of at most {DAEMON_VERSION_MAX} "
                           "characters", "daemonVersion")
    assert isinstance(public_key, str)
    return token, public_key, version


async def redeem(request: Request) -> Response:
    services = services_of(request)
    body = await read_json_body(request, services.settings.max_body_bytes)
    try:
        token, public_key, version = _redeem_fields(body)
        redeemed = await services.store.redeem_bootstrap_token(
            token.strip(), daemon_public_key=public_key, daemon_version=version)
    except LatticeError as exc:
        metrics.redemption(exc.code.value)
        raise
    metrics.redemption("ok")
    runtime = redeemed.runtime
    await services.broker.end_other_pairings(runtime.lattice_id, public_key)
    return json_response({
        "latticeId": runtime.lattice_id,
        "accountId": runtime.account_id,
        "displayName": runtime.display_name,
        "executionBackend": runtime.execution_backend,
        "relayUrl": services.settings.public_url.rstrip("/"),
        "daemonToken": redeemed.daemon_token,
        "gatewayPublicKey": services.gateway_keys.public_text(),
        "pollWindowSeconds": poll_window(services.settings),
    }, status_code=201)


routes = [Route("/v1/relay/redeem", redeem, methods=["POST"])]
