"""When a request may be sent again, and after how long.

Retried, at most ``max_retries`` times (default 2):

* any request whose connection could not be established (``httpx.ConnectError``,
  ``ConnectTimeout``, ``PoolTimeout``): not a byte of it reached the gateway;
* ``GET`` requests that lost their connection before a response arrived (reads are
  idempotent);
* responses 429 ``rate_limited``, 503 ``runtime_unreachable`` and 503
  ``service_unavailable`` (a gateway replica shutting down or full), unless the gateway says
  ``x-should-retry: false``: the gateway refused the request before running anything,
  so sending it again cannot run a job twice. ``Retry-After`` is honoured; a wait longer
  than ``max_delay`` is not slept through, the error is raised instead.

Never retried: a ``POST``/``DELETE`` whose bytes may have reached the gateway (a read
error, a timeout waiting for the answer), any other status, and a stream once its
``200`` arrived.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from ._errors import parse_retry_after

_RETRYABLE = frozenset({(429, "rate_limited"), (503, "runtime_unreachable"),
                        (503, "service_unavailable")})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# A timeout is not here: a gateway slow to answer is no faster the second time.
_LOST_BEFORE_RESPONSE = (httpx.ReadError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter on the upper half: 0.25-0.5 s, 0.5-1 s, ..."""
        ceiling = min(self.max_delay, self.base_delay * 2.0**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def delay_after_exception(self, exc: Exception, method: str, attempt: int) -> float | None:
        if attempt >= self.max_retries:
            return None
        if isinstance(exc, _NOT_SENT):
            return self.backoff(attempt)
        if method == "GET" and isinstance(exc, _LOST_BEFORE_RESPONSE):
            return self.backoff(attempt)
        return None

    def delay_after_response(
        self, status: int, headers: httpx.Headers, code: str | None, attempt: int
    ) -> float | None:
        if attempt >= self.max_retries:
            return None
        if (status, code) not in _RETRYABLE:
            return None
        if headers.get("x-should-retry", "").strip().lower() == "false":
            return None
        retry_after = parse_retry_after(headers.get("retry-after"))
        if retry_after is None:
            return self.backoff(attempt)
        return retry_after if retry_after <= self.max_delay else None
