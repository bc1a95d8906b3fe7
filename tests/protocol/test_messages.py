from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice_protocol import (
    CancelNotice,
    JobEnvelope,
    JobSpec,
    JobTiming,
    ProtocolError,
    ReplayGuard,
    Requester,
    ResultEvent,
    SealedEvent,
    parse_event,
)


def job(**overrides: Any) -> JobSpec:
    values: dict[str, Any] = {
        "job_id": "job_1", "lattice_id": "lat_1", "deadline": time.time() + 60,
        "stream": False, "request": {"messages": [{"role": "user", "content": "hi"}]},
    }
    values.update(overrides)
    return JobSpec(**values)


def test_job_round_trip() -> None:
    spec = job(model="llama3.2:3b", stream=True)
    assert JobSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("jobId"), "missing field 'jobId'"),
        (lambda d: d.update(jobId=7), "'jobId' has the wrong type"),
        (lambda d: d.update(jobId=""), "'jobId' must be 1 to"),
        (lambda d: d.update(v=2), "unsupported protocol version 2"),
        (lambda d: d.update(type="result"), "'type' must be 'job'"),
        (lambda d: d.update(stream="yes"), "'stream' has the wrong type"),
        (lambda d: d.update(deadline=True), "'deadline' has the wrong type"),
        (lambda d: d.update(deadline=-1), "non-negative"),
        (lambda d: d.update(request=[]), "job.request must be a JSON object"),
        (lambda d: d.update(model=""), "'model' must be a non-empty string"),
    ],
)
def test_job_parsing_says_what_is_wrong(mutate: Any, message: str) -> None:
    d = job().to_dict()
    mutate(d)
    with pytest.raises(ProtocolError, match=message):
        JobSpec.from_dict(d)


REQUESTER = Requester(account_id="acct_1", credential_kind="apiKey", credential_id="key_1",
                      credential_name="Notes app", user="u-7", request_id="req_1")


def test_requester_round_trip_and_its_absence() -> None:
    spec = job(requester=REQUESTER)
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert "requester" not in job().to_dict()  # as an older gateway sealed it
    assert JobSpec.from_dict(job().to_dict()).requester is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(credentialKind="password"), "'credentialKind' must be one of"),
        (lambda r: r.pop("accountId"), "missing field 'accountId'"),
        (lambda r: r.update(credentialName=""), "'credentialName' must be a non-empty"),
        (lambda r: r.update(user=5), "'user' must be a string"),
        (lambda r: r.update(requestId="x" * 257), "'requestId' must be a string of at most"),
    ],
)
def test_requester_parsing_says_what_is_wrong(mutate: Any, message: str) -> None:
    d = job(requester=REQUESTER).to_dict()
    mutate(d["requester"])
    with pytest.raises(ProtocolError, match=message):
        JobSpec.from_dict(d)


def test_unknown_version_has_its_own_reason() -> None:
    d = job().to_dict()
    d["v"] = 99
    with pytest.raises(ProtocolError) as info:
        JobSpec.from_dict(d)
    assert info.value.reason == "version"


@pytest.mark.parametrize(
    "event",
    [
        ResultEvent("chunk", "j", 0, data={"object": "chat.completion.chunk"}),
        ResultEvent("result", "j", 3, data={"object": "chat.completion"}),
        ResultEvent("end", "j", 9),
        ResultEvent("progress", "j", 4),
        ResultEvent("error", "j", 1, code="provider_error", message="Ollama at x: boom"),
    ],
)
def test_event_round_trip(event: ResultEvent) -> None:
    assert parse_event(event.to_dict()) == event
    assert event.final == (event.kind in ("result", "end", "error"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"v": 1, "type": "bogus", "jobId": "j", "seq": 0}, "unknown type"),
        ({"v": 1, "type": "chunk", "jobId": "j", "seq": -1, "data": {}}, "'seq' must be >= 0"),
        ({"v": 1, "type": "chunk", "jobId": "j", "seq": 0}, "chunk.data must be a JSON object"),
        ({"v": 1, "type": "error", "jobId": "j", "seq": 0, "code": "x"}, "missing field 'message'"),
        ({"type": "end", "jobId": "j", "seq": 0}, "missing field 'v'"),
        ("not an object", "must be a JSON object"),
    ],
)
def test_event_parsing_rejects_malformed(value: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_event(value)


def test_relay_envelopes_round_trip() -> None:
    env = JobEnvelope("j", 123.5, "v1.abc")
    assert JobEnvelope.from_dict(env.to_dict()) == env
    sealed = SealedEvent("j", 2, "v1.abc")
    assert SealedEvent.from_dict(sealed.to_dict()) == sealed
    cancel = CancelNotice("j", "client_disconnected")
    assert CancelNotice.from_dict(cancel.to_dict()) == cancel
    with pytest.raises(ProtocolError):
        SealedEvent.from_dict({"jobId": "j", "seq": "1", "sealed": "x"})


@given(st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(),
                                                        st.booleans(), st.floats())))
def test_arbitrary_objects_never_crash_the_parsers(value: dict[str, Any]) -> None:
    for parser in (JobSpec.from_dict, parse_event, JobEnvelope.from_dict, SealedEvent.from_dict):
        with contextlib.suppress(ProtocolError):
            parser(value)


def test_replay_guard_refuses_replays_and_expired_jobs() -> None:
    guard = ReplayGuard()
    now = 1_000.0
    spec = job(deadline=now + 10)
    guard.admit(spec, now=now)
    with pytest.raises(ProtocolError) as replay:
        guard.admit(spec, now=now + 1)
    assert replay.value.reason == "replay"
    with pytest.raises(ProtocolError) as expired:
        guard.admit(job(job_id="late", deadline=now - 1), now=now)
    assert expired.value.reason == "expired"
    # A replay after the deadline is refused as expired, even once forgotten.
    with pytest.raises(ProtocolError) as later:
        guard.admit(spec, now=now + 20)
    assert later.value.reason == "expired"


def test_replay_guard_forgets_only_expired_entries() -> None:
    guard = ReplayGuard()
    for i in range(1100):
        guard.admit(job(job_id=f"old{i}", deadline=100.0 + (i % 2) * 1000), now=50.0)
    guard.admit(job(job_id="fresh", deadline=2000.0), now=500.0)  # triggers pruning
    assert len(guard) == 551  # the 550 still-valid ones + fresh
    with pytest.raises(ProtocolError):
        guard.admit(job(job_id="old1", deadline=1100.0), now=500.0)


def test_replay_guard_cost_does_not_grow_with_remembered_ids() -> None:
    """Thousands of live ids: replays still refused, expired ids forgotten in order."""
    guard = ReplayGuard()
    now = 1_000.0
    for index in range(5000):
        guard.admit(job(job_id=f"job_{index}", deadline=now + 5 + index / 1000), now=now)
    with pytest.raises(ProtocolError) as replay:
        guard.admit(job(job_id="job_3", deadline=now + 5), now=now + 0.5)
    assert replay.value.reason == "replay"
    guard.admit(job(job_id="late", deadline=now + 60), now=now + 7.5)  # forgets 2,501 ids
    assert len(guard) == 5000 - 2501 + 1
    with pytest.raises(ProtocolError) as still_live:
        guard.admit(job(job_id="job_4999", deadline=now + 60), now=now + 7.5)
    assert still_live.value.reason == "replay"


def test_final_events_carry_optional_validated_timing() -> None:
    timing = JobTiming(daemon_ms=12.5, provider_ms=10.25, first_output_ms=3.0)
    event = ResultEvent(kind="result", job_id="job_1", seq=0, data={"x": 1}, timing=timing)
    wire = event.to_dict()
    assert wire["timing"] == {"daemonMs": 12.5, "providerMs": 10.25, "firstOutputMs": 3.0}
    assert ResultEvent.from_dict(wire) == event
    # Older daemons send none; fields may be missing; unknown ones are ignored.
    assert ResultEvent.from_dict({**wire, "timing": None}).timing is None
    del wire["timing"]
    assert ResultEvent.from_dict(wire).timing is None
    partial = ResultEvent.from_dict({**wire, "timing": {"daemonMs": 4, "queueMs": 1}})
    assert partial.timing == JobTiming(daemon_ms=4.0)
    for bad in ({"daemonMs": -1}, {"daemonMs": "5"}, {"providerMs": True},
                {"daemonMs": float("nan")}, {"daemonMs": float("inf")}, {"daemonMs": 1e11},
                [1, 2], "fast"):
        with pytest.raises(ProtocolError, match="timing"):
            ResultEvent.from_dict({**wire, "timing": bad})
    # Only final events carry it: on a chunk it is ignored.
    chunk = {"v": 1, "type": "chunk", "jobId": "job_1", "seq": 0, "data": {},
             "timing": {"daemonMs": 1}}
    assert ResultEvent.from_dict(chunk).timing is None
