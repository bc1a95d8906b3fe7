"""``GET /install.sh`` and ``GET /install/<wheel>``: the daemon's installer, from this
gateway, installing the daemon of this gateway's version (see ``distribution.py``)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lattice_protocol import ErrorCode, LatticeError

from ..distribution import build_wheel, installer_script, wheel_filename
from ..services import Services


async def install_script(request: Request) -> Response:
    services: Services = request.app.state.services
    return Response(installer_script(services.settings.public_url),
                    media_type="text/plain; charset=utf-8")


async def install_wheel(request: Request) -> Response:
    if request.path_params["filename"] != wheel_filename():
        raise LatticeError(ErrorCode.NOT_FOUND,
                           f"no such file; this gateway serves /install/{wheel_filename()}")
    wheel = await asyncio.to_thread(build_wheel)  # reads the package once, then cached
    return Response(wheel.data, media_type="application/octet-stream",
                    headers={"content-disposition": f'attachment; filename="{wheel.filename}"'})


routes = [
    Route("/install.sh", install_script, methods=["GET"]),
    Route("/install/{filename}", install_wheel, methods=["GET"]),
]
