"""Service metadata: ``GET /healthz`` (liveness), ``GET /readyz`` (readiness),
``GET /openapi.json`` (a static, checked-in file) and ``GET /metrics`` (Prometheus text
format, when a metrics token is configured)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from functools import lru_cache
from importlib import resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lattice_protocol import ErrorCode, LatticeError, __version__

from .. import metrics
from ..auth import presented_secret
from ..drain import drain_of, shutting_down
from ..errors import error_response
from ..http import json_response
from ..services import services_of

log = logging.getLogger("lattice_gateway")

# A database or Redis that does not answer within this is as good as down for a load
# balancer's check (which has its own timeout, typically 1-5 s).
READY_CHECK_TIMEOUT = 2.0


@lru_cache(maxsize=1)
def openapi_document() -> bytes:
    return resources.files("lattice_gateway").joinpath("openapi.json").read_bytes()


async def healthz(request: Request) -> Response:
    # Liveness of this process; the store and broker were opened by the lifespan.
    return json_response({"ok": True, "version": __version__})


async def readyz(request: Request) -> Response:
    # Readiness: whether this replica can serve requests now. A load balancer stops
    # sending traffic while it fails: the database or Redis unreachable, or draining.
    if drain_of(request).draining:
        return error_response(shutting_down())
    services = services_of(request)
    for name, check in (("database", services.store.ping), ("redis", services.broker.ping)):
        try:
            await asyncio.wait_for(check(), READY_CHECK_TIMEOUT)
        except Exception as exc:  # whatever the driver raises: not ready, say which part
            log.warning("not ready: the %s is unreachable (%s)", name, type(exc).__name__)
            return error_response(LatticeError(ErrorCode.SERVICE_UNAVAILABLE,
                                               f"not ready: the {name} is unreachable"))
    return json_response({"ok": True, "version": __version__})


async def openapi(request: Request) -> Response:
    return Response(openapi_document(), media_type="application/json")


async def metrics_text(request: Request) -> Response:
    services = services_of(request)
    token = services.settings.metrics_token
    if not token:
        raise HTTPException(404)  # off: answered as any unknown endpoint
    presented = presented_secret(request)
    if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
        metrics.auth_failure("metrics")
        raise LatticeError(ErrorCode.INVALID_API_KEY,
                           "GET /metrics needs `Authorization: Bearer <metrics token>`")
    return Response(await metrics.exposition(services.broker),
                    media_type=metrics.CONTENT_TYPE_LATEST)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/metrics", metrics_text, methods=["GET"]),
]
