"""Service metadata: ``GET /healthz``, ``GET /openapi.json`` (a static, checked-in file) and
``GET /metrics`` (Prometheus text format, when a metrics token is configured)."""

from __future__ import annotations

import hmac
from functools import lru_cache
from importlib import resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lattice_protocol import ErrorCode, LatticeError, __version__

from .. import metrics
from ..auth import presented_secret
from ..http import json_response
from ..services import services_of


@lru_cache(maxsize=1)
def openapi_document() -> bytes:
    return resources.files("lattice_gateway").joinpath("openapi.json").read_bytes()


async def healthz(request: Request) -> Response:
    # Liveness of this process; the store and broker were opened by the lifespan.
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
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/metrics", metrics_text, methods=["GET"]),
]
