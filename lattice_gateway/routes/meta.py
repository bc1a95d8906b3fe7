"""Service metadata: ``GET /healthz`` and ``GET /openapi.json`` (a static, checked-in file)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lattice_protocol import __version__

from ..http import json_response


@lru_cache(maxsize=1)
def openapi_document() -> bytes:
    return resources.files("lattice_gateway").joinpath("openapi.json").read_bytes()


async def healthz(request: Request) -> Response:
    # Liveness of this process; the store and broker were opened by the lifespan.
    return json_response({"ok": True, "version": __version__})


async def openapi(request: Request) -> Response:
    return Response(openapi_document(), media_type="application/json")


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
