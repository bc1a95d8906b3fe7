"""Event posts stay within the gateway's body bound, however large the results."""

from __future__ import annotations

from lattice_daemon.relay import SPACE_FOR_EVENTS, _batch_length
from lattice_protocol import MAX_SEALED_EVENT_BYTES, SealedEvent


def events(count: int, size: int) -> list[SealedEvent]:
    return [SealedEvent(f"job_{i}", 0, "v1." + "a" * size) for i in range(count)]


def test_large_results_are_split_across_posts() -> None:
    five_mb = events(4, 5 * 1024 * 1024)
    assert _batch_length(five_mb) == 3  # 15 MiB fit in a 16 MiB post; the 4th waits
    assert _batch_length(five_mb[3:]) == 1
    largest = events(3, MAX_SEALED_EVENT_BYTES - 100)
    assert _batch_length(largest) == 1  # two would pass the gateway's bound


def test_small_events_are_batched_up_to_the_count_limit() -> None:
    assert _batch_length(events(SPACE_FOR_EVENTS + 50, 100)) == SPACE_FOR_EVENTS
    assert _batch_length(events(3, 100)) == 3
    assert _batch_length([]) == 0


def test_one_event_always_goes_even_when_alone_it_is_large() -> None:
    assert _batch_length(events(1, MAX_SEALED_EVENT_BYTES)) == 1
