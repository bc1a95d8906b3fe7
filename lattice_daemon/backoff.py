"""Jittered, capped exponential backoff for reconnecting to the relay.

Delays grow ``initial * 2**n`` up to ``maximum`` and are jittered to 50-100 % of that,
so a fleet of daemons that lost the gateway together does not return in lockstep
(cloudflared and Tailscale do the same). A server's ``Retry-After`` wins over the
computed delay: the server knows when it will have room again.
"""

from __future__ import annotations

import math
import random

MAX_RETRY_AFTER = 600.0  # never trust a server to park us for more than 10 minutes


class Backoff:
    def __init__(self, initial: float = 0.5, maximum: float = 30.0,
                 rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None) -> float:
        """The wait before the next attempt; counts one more consecutive failure."""
        ceiling = min(self.maximum, self.initial * (2 ** min(self.failures, 32)))
        self.failures += 1
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
        return ceiling * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self.failures = 0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form only; dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:  # NaN, inf or negative
        return None
    return seconds
