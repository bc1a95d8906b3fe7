"""The relay broker: queue, leases and presence.

In-process (``memory.MemoryBroker``) by default; Redis (``redis.RedisBroker``) when
``settings.redis_url`` is set, so several gateway replicas share one relay. Routes see
only ``base.RelayBroker`` (as ``services.broker``), never a concrete broker.
"""

from __future__ import annotations

from ..settings import Settings
from .base import (
    EventsResult,
    JobTicket,
    PollResult,
    Refusal,
    RelayBroker,
    SessionNotFound,
)

__all__ = ["EventsResult", "JobTicket", "PollResult", "Refusal", "RelayBroker",
           "SessionNotFound", "create_broker", "poll_window"]

POLL_WINDOW_MIN = 1.0
POLL_WINDOW_MAX = 50.0


def poll_window(settings: Settings) -> float:
    """The announced poll window: settings, bounded 1..50 s (docs/protocol.md §3)."""
    return min(max(settings.poll_window_seconds, POLL_WINDOW_MIN), POLL_WINDOW_MAX)


def create_broker(settings: Settings) -> RelayBroker:
    if settings.redis_url:
        from .redis import RedisBroker

        return RedisBroker(
            settings.redis_url,
            poll_window_seconds=poll_window(settings),
            presence_window_seconds=settings.presence_window_seconds,
            pickup_timeout_seconds=settings.pickup_timeout_seconds,
            max_queued_jobs=settings.max_queued_jobs,
            key_prefix=settings.redis_prefix or Settings.redis_prefix,
        )
    from .memory import MemoryBroker

    return MemoryBroker(
        poll_window_seconds=poll_window(settings),
        presence_window_seconds=settings.presence_window_seconds,
        pickup_timeout_seconds=settings.pickup_timeout_seconds,
        max_queued_jobs=settings.max_queued_jobs,
    )
