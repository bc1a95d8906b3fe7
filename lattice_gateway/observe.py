"""Seeing requests: the ``x-request-id`` on every response, request metrics, access log
lines, and the two log formats (``lattice-gateway serve --log-format text|json``).

Log lines never carry a secret or prompt text: the gateway logs ids, routes, status
codes, durations and error types, never headers or bodies (tests/e2e/test_observability.py
checks it on a real chat).
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from datetime import datetime, timezone

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .http import sane_request_id

# The request a log line is about (set for the request's task and what it starts).
current_request_id: ContextVar[str | None] = ContextVar("lattice_request_id", default=None)

access_log = logging.getLogger("lattice_gateway.access")

# Label values stay bounded: any other method is counted as "other".
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class RequestObserver:
    """Pure ASGI (not BaseHTTPMiddleware, which would buffer streams): names each request
    (``x-request-id``, answered on every response, errors and streams included), counts it
    by route template and status, and writes the access line when asked to.

    Outermost, so even the last-resort 500 carries the id. The request's start time is
    left in the scope's state (``started``, ``time.monotonic()``): chat's Server-Timing
    counts from it.
    """

    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        offered = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                offered = value.decode("latin-1")
                break
        request_id = sane_request_id(offered)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = started
        id_header = (b"x-request-id", request_id.encode())
        status = 500  # if the app fails before answering, the server answers 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = scope.get("route")
            template = route.path if isinstance(route, BaseRoute) and hasattr(
                route, "path") else "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            metrics.count_request(method, template, status)
            if self.access_log:
                duration_ms = (time.monotonic() - started) * 1000
                access_log.info("%s %s %d %.1f ms", method, scope["path"], status, duration_ms,
                                extra={"route": template, "status": status,
                                       "duration_ms": round(duration_ms, 3),
                                       "method": method, "path": scope["path"]})
            current_request_id.reset(token)


# --------------------------------------------------------------------------- log formats


class _RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (``None`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """Today's format, with ``[request <id>]`` on lines about a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [request {request_id}]" if request_id else line


_JSON_EXTRAS = ("method", "path", "route", "status", "duration_ms")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and for
    access lines method, path, route, status, duration_ms."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        for name in _JSON_EXTRAS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """The process's one stderr handler, in ``text`` or ``json`` (uvicorn's own loggers
    propagate to it: it runs with ``log_config=None``)."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
