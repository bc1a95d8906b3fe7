"""``create_app(settings)``: the gateway as one ASGI app (Starlette).

The lifespan opens the store (running migrations), loads the gateway keypair, creates the
relay broker and publishes them as ``app.state.services``. Every error leaves as the
OpenAI envelope with the contract's code; nothing unexpected leaks a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lattice_protocol import ErrorCode, LatticeError

from . import metrics
from . import relay as relay_broker
from .auth import CredentialAuthenticator
from .drain import Drain
from .errors import error_response
from .oauth import JwtVerifier, oauth_config
from .observe import RequestObserver
from .routes import bootstrap, chat, install, meta, models, runtimes
from .routes import relay as relay_routes
from .services import Services
from .settings import Settings
from .store import SqlStore, legacy_location_advice

log = logging.getLogger("lattice_gateway")

_HTTP_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
               413: ErrorCode.REQUEST_TOO_LARGE}


async def _lattice_error(request: Request, exc: Exception) -> Response:
    """Every error route code raises (and a held chat answer raises before its first
    byte) is answered here."""
    assert isinstance(exc, LatticeError)
    return error_response(exc, getattr(exc, "headers", None))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, ErrorCode.INVALID_REQUEST)
    if code is ErrorCode.NOT_FOUND:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif code is ErrorCode.METHOD_NOT_ALLOWED:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    headers = {"allow": _allowed_methods(request)} if code is ErrorCode.METHOD_NOT_ALLOWED else None
    return error_response(LatticeError(code, message), headers)


def _allowed_methods(request: Request) -> str:
    # Starlette names only the first route of a path; several routes share ours.
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches({**request.scope, "method": "GET"})
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


class _LastResort:
    """Pure ASGI guard: an unexpected exception becomes a 500 envelope, logged once.

    Not BaseHTTPMiddleware: that would buffer and add latency on every request. Only the
    exception type and path are logged, never request bodies (prompts) or headers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            return  # the client went away mid-request: nobody to answer, nothing failed
        except Exception as exc:
            metrics.UNHANDLED_ERRORS.inc()
            if isinstance(exc, RedisError):
                metrics.broker_error("redis", "request")
            log.error("unhandled %s on %s %s", type(exc).__name__, scope.get("method"),
                      scope.get("path"), exc_info=log.isEnabledFor(logging.DEBUG))
            if started:
                return  # mid-response: the connection ends; nothing valid can be sent
            response = error_response(LatticeError(ErrorCode.INTERNAL_ERROR,
                                                   "internal error; the failure was logged"))
            await response(scope, receive, send)


async def _flush_credential_usage(store: SqlStore, interval: float) -> None:
    """Write credentials' ``last used`` every ``interval`` seconds (not per request)."""
    while True:
        await asyncio.sleep(interval)
        await _flush_once(store)


async def _flush_once(store: SqlStore) -> None:
    try:
        await store.flush_credential_usage()
    except Exception as exc:  # the database is away: the times wait for the next flush
        log.warning("could not record credentials' last use: %s", type(exc).__name__)


def create_app(settings: Settings, *,
               store_clock: Callable[[], float] | None = None,
               access_log: bool = False) -> Starlette:
    """The gateway ASGI app. ``store_clock`` (tests) replaces the store's wall clock;
    ``access_log`` writes one line per request (``observe.RequestObserver``)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await (SqlStore.open(settings.database, key_file=settings.key_file)
                       if store_clock is None
                       else SqlStore.open(settings.database, clock=store_clock,
                                          key_file=settings.key_file))
        oauth_settings = oauth_config(settings.oauth_issuers, settings.oauth_audience,
                                      settings.oauth_account_claim)
        verifier = None if oauth_settings is None else JwtVerifier(
            oauth_settings, min_refresh_seconds=settings.oauth_jwks_min_refresh_seconds)
        try:
            keys = await store.gateway_keypair()
            broker = relay_broker.create_broker(settings)
            app.state.services = Services(settings=settings, store=store, broker=broker,
                                          auth=CredentialAuthenticator(store, verifier),
                                          gateway_keys=keys)
            log.info("gateway ready: database %s, public url %s", store.target.display(),
                     settings.public_url)
            if advice := legacy_location_advice(store.target):
                log.warning("%s", advice)
            flusher = asyncio.create_task(
                _flush_credential_usage(store, settings.credential_usage_flush_seconds))
            try:
                yield
            finally:
                flusher.cancel()
                await broker.close()
                await _flush_once(store)  # the uses since the last flush, at shutdown
        finally:
            if verifier is not None:
                await verifier.close()
            await store.close()

    all_routes = [*meta.routes, *runtimes.routes, *bootstrap.routes, *models.routes,
                  *relay_routes.routes, *chat.routes, *install.routes]
    app = Starlette(
        routes=all_routes,
        middleware=[Middleware(RequestObserver, access_log=access_log),
                    Middleware(_LastResort)],
        exception_handlers={LatticeError: _lattice_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.drain = Drain()  # moved by the server on SIGTERM (frontdoor.GatewayServer)
    return app
