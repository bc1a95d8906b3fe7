"""``GET /v1/models``: the caller's reachable runtimes (not paused) as an OpenAI model list."""

from __future__ import annotations

import calendar
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lattice_protocol import format_model_string

from ..http import json_response
from ..services import SCOPE_INFERENCE, Runtime, services_of


def _unix_seconds(iso: str) -> int:
    # iso is "YYYY-MM-DDTHH:MM:SS.mmmZ" (store/records.py)
    return calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S"))


def _model_object(runtime: Runtime) -> dict[str, object]:
    return {
        "id": format_model_string(runtime.lattice_id),
        "object": "model",
        "created": _unix_seconds(runtime.created_at),
        "owned_by": runtime.account_id,
    }


async def list_models(request: Request) -> Response:
    services = services_of(request)
    principal = await services.auth.authenticate(request, SCOPE_INFERENCE)
    paired = [r for r in await services.store.list_runtimes(principal.account_id)
              if r.status == "paired"]
    reachable = await services.broker.reachable([r.lattice_id for r in paired]) if paired else {}
    present = [lid for lid, live in reachable.items() if live]
    # A paused runtime is not reachable (its record says offline): not listed either.
    pauses = await services.broker.pauses(present) if present else {}
    data = [_model_object(r) for r in paired
            if reachable.get(r.lattice_id) and pauses.get(r.lattice_id) is None]
    return json_response({"object": "list", "data": data})


routes = [Route("/v1/models", list_models, methods=["GET"])]
