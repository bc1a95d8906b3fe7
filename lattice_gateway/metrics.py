"""The gateway's Prometheus metrics: what is counted, and the one-line calls that count it.

One registry per process (``REGISTRY``): with several replicas each exposes its own
process's numbers and Prometheus sums them. Labels are bounded by construction: route
templates (never raw paths), status codes, fixed reason and outcome words; nothing per
runtime, account or credential. Served by ``GET /metrics`` (``routes/meta.py``) when a
metrics token is configured (docs/operations.md).

Counting is a few hundred nanoseconds under prometheus-client's lock; the gauges that
describe the broker (sessions, parked polls, queued jobs) are read from it only when
scraped, so nothing is counted twice on the hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

if TYPE_CHECKING:
    from .relay.base import RelayBroker

__all__ = ["CONTENT_TYPE_LATEST", "REGISTRY", "auth_failure", "broker_error", "exposition",
           "redemption"]

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# Latency buckets in seconds: sub-millisecond gateway work up to multi-minute generations.
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
         300.0)

HTTP_REQUESTS = Counter(
    "lattice_gateway_http_requests", "HTTP requests answered, by route template and status.",
    ["method", "route", "status"], registry=REGISTRY)
CHAT_DURATION = Histogram(
    "lattice_gateway_chat_duration_seconds",
    "Chat completions from request arrival to the answer's last part (total).",
    ["stream"], buckets=_SLOW, registry=REGISTRY)
# Bound once: both series exist from the start (0 until a chat), and observing skips labels().
CHAT_DURATION_OF = {stream: CHAT_DURATION.labels("true" if stream else "false")
                    for stream in (True, False)}
CHAT_GATEWAY = Histogram(
    "lattice_gateway_chat_gateway_seconds",
    "Chat time spent in the gateway itself (before submitting the job, after its final "
    "event).", buckets=_FAST, registry=REGISTRY)
CHAT_PICKUP = Histogram(
    "lattice_gateway_chat_pickup_seconds",
    "Chat jobs waiting in the queue until a daemon's poll took them.", buckets=_SLOW,
    registry=REGISTRY)
CHAT_RUNTIME = Histogram(
    "lattice_gateway_chat_runtime_seconds",
    "Chat jobs from pickup to their final event (relay transit plus time at the daemon).",
    buckets=_SLOW, registry=REGISTRY)
CHAT_TTFT = Histogram(
    "lattice_gateway_chat_time_to_first_token_seconds",
    "Streamed chat completions from request arrival to the first chunk sent.",
    buckets=_SLOW, registry=REGISTRY)
RELAY_SESSIONS = Gauge(
    "lattice_gateway_relay_sessions", "Daemon relay sessions connected (this process's "
    "view: all sessions with the in-process broker, sessions holding a poll here with "
    "Redis).", registry=REGISTRY)
PARKED_POLLS = Gauge(
    "lattice_gateway_relay_parked_polls", "Daemon polls held open by this process.",
    registry=REGISTRY)
JOBS_QUEUED = Gauge(
    "lattice_gateway_jobs_queued", "Chat jobs submitted here and not yet picked up by a "
    "daemon (all runtimes together).", registry=REGISTRY)
REDEMPTIONS = Counter(
    "lattice_gateway_bootstrap_redemptions", "Bootstrap token redemptions, by outcome "
    "(ok or the error code).", ["outcome"], registry=REGISTRY)
AUTH_FAILURES = Counter(
    "lattice_gateway_auth_failures", "Refused credentials, by reason.", ["reason"],
    registry=REGISTRY)
BROKER_ERRORS = Counter(
    "lattice_gateway_broker_errors", "Relay broker failures (Redis unreachable, a failed "
    "sweep), by broker and operation.", ["broker", "operation"], registry=REGISTRY)
UNHANDLED_ERRORS = Counter(
    "lattice_gateway_unhandled_errors", "Requests that failed with an unexpected exception "
    "(answered 500 internal_error).", registry=REGISTRY)

# Label values the call sites may use: anything else is folded into "other", so a
# programming slip cannot grow the series without bound.
AUTH_REASONS = frozenset({"missing", "unknown", "revoked", "expired", "rotated", "jwt",
                          "scope", "daemon_missing", "daemon_unknown", "daemon_revoked",
                          "daemon_unpaired", "metrics"})


_request_counters: dict[tuple[str, str, int], Any] = {}


def count_request(method: str, route: str, status: int) -> None:
    """One answered request. The labelled child is looked up once per (method, route,
    status): bounded, and a dict hit is several times cheaper than ``labels()``."""
    key = (method, route, status)
    child = _request_counters.get(key)
    if child is None:
        child = _request_counters[key] = HTTP_REQUESTS.labels(method, route, str(status))
    child.inc()


def auth_failure(reason: str) -> None:
    """One refused credential (``AUTH_REASONS``)."""
    AUTH_FAILURES.labels(reason if reason in AUTH_REASONS else "other").inc()


def redemption(outcome: str) -> None:
    """One bootstrap redemption: ``ok`` or the ErrorCode value it failed with."""
    REDEMPTIONS.labels(outcome[:40]).inc()


def broker_error(broker: str, operation: str) -> None:
    """One broker failure: ``broker`` is ``memory`` or ``redis``, ``operation`` a fixed
    word naming the step (``request``, ``sweep``, ``subscribe``)."""
    BROKER_ERRORS.labels(broker, operation).inc()


async def exposition(broker: RelayBroker | None) -> bytes:
    """The text format, with the broker gauges read now."""
    if broker is not None:
        stats = await broker.stats()
        RELAY_SESSIONS.set(stats.sessions)
        PARKED_POLLS.set(stats.parked_polls)
        JOBS_QUEUED.set(stats.queued_jobs)
    return generate_latest(REGISTRY)
