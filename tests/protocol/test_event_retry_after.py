"""An error event's optional ``retryAfter`` (seconds until a refusal lifts)."""

from __future__ import annotations

from typing import Any

import pytest

from lattice_protocol import ProtocolError, ResultEvent


def error_event(**extra: Any) -> dict[str, Any]:
    return {"v": 1, "type": "error", "jobId": "job_1", "seq": 0, "code": "budget_exceeded",
            "message": "spent", **extra}


def test_retry_after_round_trips_and_is_optional() -> None:
    event = ResultEvent.from_dict(error_event(retryAfter=3600))
    assert event.retry_after == 3600.0
    assert ResultEvent.from_dict(event.to_dict()) == event
    plain = ResultEvent.from_dict(error_event())
    assert plain.retry_after is None and "retryAfter" not in plain.to_dict()


@pytest.mark.parametrize("value", [-1, "60", True, float("nan"), float("inf"), 10**9])
def test_a_bad_retry_after_is_refused(value: Any) -> None:
    with pytest.raises(ProtocolError, match="retryAfter"):
        ResultEvent.from_dict(error_event(retryAfter=value))
