"""The activity log's files (rotation by size and by day, retention by age and total size,
restarts) and the recorder (entries, refusals, prompt text only with log_prompts, the live
view, today's usage), with small limits and an injected clock."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from lattice_daemon.activity import (
    ActivityLog,
    ActivityQuery,
    ActivityRecorder,
    local_midnight,
    parse_since,
    query_activity,
)
from lattice_daemon.runner import JobRecord
from lattice_protocol import Requester, iso_from_seconds

NOW = float(int(time.time()))  # file times (retention) are real ones


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(n: int, clock: Clock, app: str = "chat-app") -> dict[str, Any]:
    return {"time": iso_from_seconds(clock()), "jobId": f"job_{n:04d}", "app": app,
            "pad": "x" * 60}


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_rotates_by_size_keeps_order_and_drops_the_oldest_past_the_total(
        tmp_path: Path) -> None:
    clock = Clock()
    log = ActivityLog(tmp_path, max_file_bytes=400, max_total_bytes=1200, clock=clock)
    for n in range(40):
        clock.now += 1
        log.append(entry(n, clock))
    line = len(json.dumps(entry(0, clock), separators=(",", ":"))) + 1
    files = log.files()
    assert files[-1] == tmp_path / "activity.jsonl"
    assert all(path.stat().st_size <= 400 for path in files)
    assert sum(path.stat().st_size for path in files) <= 1200
    assert len(files) >= 3  # rotated, and more than one rotated file kept
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kept = [e["jobId"] for e in log.read()]
    # The newest entries, in order, with no gap: only whole old files went.
    assert kept == [f"job_{n:04d}" for n in range(40 - len(kept), 40)]
    assert len(kept) >= 1200 // line - 400 // line
    log.close()


def test_rotates_after_a_day_and_drops_files_older_than_the_age_limit(tmp_path: Path
                                                                        ) -> None:
    clock = Clock()
    log = ActivityLog(tmp_path, clock=clock)
    for day in range(5):
        log.append(entry(day, clock))
        log.append(entry(day + 100, clock))
        clock.now += 86400
    # One file per day: the current one and four rotated ones, oldest numbered lowest.
    assert names(tmp_path) == ["activity.1.jsonl", "activity.2.jsonl", "activity.3.jsonl",
                               "activity.4.jsonl", "activity.jsonl"]
    # The age limit reads a rotated file's last write (its newest entry).
    for name, day in [("activity.1.jsonl", 0), ("activity.2.jsonl", 1),
                      ("activity.3.jsonl", 2), ("activity.4.jsonl", 3), ("activity.jsonl", 4)]:
        stamp = NOW + day * 86400
        os.utime(tmp_path / name, (stamp, stamp))
    log.max_age_seconds = 3 * 86400
    log.append(entry(5, clock))  # day 5: rotates and prunes
    assert names(tmp_path) == ["activity.3.jsonl", "activity.4.jsonl", "activity.5.jsonl",
                               "activity.jsonl"]
    assert [e["jobId"] for e in log.read()][:2] == ["job_0002", "job_0102"]
    log.close()


def test_a_restart_appends_to_the_same_file_and_remembers_its_age(tmp_path: Path) -> None:
    clock = Clock()
    first = ActivityLog(tmp_path, clock=clock)
    first.append(entry(1, clock))
    first.close()
    (tmp_path / "activity.jsonl").chmod(0o644)  # e.g. restored from a backup
    clock.now += 3600
    second = ActivityLog(tmp_path, clock=clock)
    second.append(entry(2, clock))
    assert names(tmp_path) == ["activity.jsonl"]
    assert stat.S_IMODE((tmp_path / "activity.jsonl").stat().st_mode) == 0o600
    clock.now += 86400  # a day after the file's first entry (before the restart)
    second.append(entry(3, clock))
    assert names(tmp_path) == ["activity.1.jsonl", "activity.jsonl"]
    assert [e["jobId"] for e in second.read()] == ["job_0001", "job_0002", "job_0003"]
    second.close()


def test_read_skips_damaged_lines_and_filters_by_time(tmp_path: Path) -> None:
    clock = Clock()
    log = ActivityLog(tmp_path, clock=clock)
    log.append(entry(1, clock))
    with (tmp_path / "activity.jsonl").open("a") as handle:
        handle.write('{"time": "' + iso_from_seconds(NOW) + '", "jobId": "half\n')
    clock.now += 600
    log.append(entry(2, clock))
    assert [e["jobId"] for e in log.read()] == ["job_0001", "job_0002"]
    assert [e["jobId"] for e in log.read(since=NOW + 300)] == ["job_0002"]
    log.close()


def requester(app: str, user: str | None = None) -> Requester:
    return Requester(account_id="acct_1", credential_kind="apiKey",
                     credential_id=f"cred_{app}", credential_name=app, user=user,
                     request_id=f"req_{app}")


def run_job(recorder: ActivityRecorder, clock: Clock, job_id: str, app: str, *,
            outcome: str = "ok", refused: bool = False, stream: bool = True,
            chunks: tuple[str, ...] = ("Hel", "lo"), usage: tuple[int, int] | None = (7, 2),
            text: str = "the prompt") -> JobRecord:
    record = JobRecord(job_id=job_id, requester=requester(app, "alice"), stream=stream,
                       started_at=clock(),
                       request={"messages": [{"role": "user", "content": text}]})
    recorder.job_started(record)
    if not refused:
        record.model = "llama3.2"
        for piece in chunks:
            clock.now += 0.5
            record.first_output_at = record.first_output_at or clock()
            record.chunks += 1
            record.last_output = {"choices": [{"delta": {"content": piece}}]}
            recorder.job_output(record)
        if usage is not None:
            record.prompt_tokens, record.completion_tokens = usage
    clock.now += 0.25
    record.ended_at = clock()
    record.outcome = outcome
    record.refused = refused
    record.message = None if outcome in ("ok", "cancelled") else "refused: blocked"
    recorder.job_ended(record)
    return record


def test_entries_attribute_jobs_and_count_refusals_without_prompt_text(tmp_path: Path
                                                                        ) -> None:
    clock = Clock()
    recorder = ActivityRecorder(ActivityLog(tmp_path, clock=clock), clock=clock)
    run_job(recorder, clock, "job_1", "chat-app")
    run_job(recorder, clock, "job_2", "notes-app", outcome="invalid_request", refused=True)
    run_job(recorder, clock, "job_3", "notes-app", outcome="cancelled", usage=None)
    run_job(recorder, clock, "job_4", "notes-app", outcome="provider_error")
    text = (tmp_path / "activity.jsonl").read_text()
    assert "the prompt" not in text and "Hel" not in text
    first, refused, cancelled, failed = (json.loads(line) for line in text.splitlines())
    assert first["app"] == "chat-app" and first["user"] == "alice"
    assert first["requestId"] == "req_chat-app" and first["credentialId"] == "cred_chat-app"
    assert (first["promptTokens"], first["completionTokens"]) == (7, 2)
    assert first["timeToFirstTokenMs"] == 500 and first["durationMs"] == 1250
    assert "message" not in first and "messages" not in first
    assert refused["refused"] is True and refused["outcome"] == "invalid_request"
    assert refused["message"] == "refused: blocked" and refused["model"] is None
    assert cancelled["completionTokens"] is None and "message" not in cancelled
    assert failed["outcome"] == "provider_error" and failed["refused"] is False
    answer = query_activity(recorder.log, ActivityQuery(since=NOW - 60))
    apps = {app["app"]: app for app in answer["apps"]}
    assert apps["notes-app"] == {"app": "notes-app", "requests": 3, "promptTokens": 7,
                                 "completionTokens": 2, "busyMs": 250 + 1250 + 1250,
                                 "refusals": 1, "errors": 1, "cancelled": 1}
    assert apps["chat-app"]["requests"] == 1 and apps["chat-app"]["busyMs"] == 1250
    only = query_activity(recorder.log, ActivityQuery(since=NOW - 60, app="chat-app",
                                                      limit=1))
    assert [e["jobId"] for e in only["entries"]] == ["job_1"] and not only["truncated"]
    latest = query_activity(recorder.log, ActivityQuery(since=NOW - 60, limit=2))
    assert [e["jobId"] for e in latest["entries"]] == ["job_3", "job_4"]
    assert latest["truncated"] and latest["count"] == 4


def test_log_prompts_keeps_the_messages_and_the_completion(tmp_path: Path) -> None:
    clock = Clock()
    recorder = ActivityRecorder(ActivityLog(tmp_path, clock=clock), log_prompts=True,
                                clock=clock)
    run_job(recorder, clock, "job_1", "chat-app", text="marker-123")
    run_job(recorder, clock, "job_2", "chat-app", stream=False,
            chunks=("whole answer",), text="marker-456")
    logged = [json.loads(line) for line in
              (tmp_path / "activity.jsonl").read_text().splitlines()]
    assert logged[0]["messages"] == [{"role": "user", "content": "marker-123"}]
    assert logged[0]["completion"] == "Hello"
    assert logged[1]["timeToFirstTokenMs"] is None  # a whole answer: no first token seen
    without = query_activity(recorder.log, ActivityQuery(since=NOW - 60))
    assert all("messages" not in e and "completion" not in e for e in without["entries"])
    with_text = query_activity(recorder.log, ActivityQuery(since=NOW - 60, text=True))
    assert with_text["entries"][1]["messages"][0]["content"] == "marker-456"


def test_live_view_and_today_survive_a_restart_and_reset_at_midnight(tmp_path: Path
                                                                       ) -> None:
    clock = Clock(local_midnight(NOW) + 23 * 3600)  # 23:00 local
    recorder = ActivityRecorder(ActivityLog(tmp_path, clock=clock), clock=clock)
    run_job(recorder, clock, "job_1", "chat-app")
    running = JobRecord(job_id="job_2", requester=requester("notes-app"), stream=True,
                        started_at=clock())
    recorder.job_started(running)
    clock.now += 1.0
    running.first_output_at = clock()
    running.chunks = 21
    clock.now += 2.0
    live = recorder.live()
    assert [job["jobId"] for job in live["running"]] == ["job_2"]
    job = live["running"][0]
    assert job["app"] == "notes-app" and job["tokens"] == 21
    assert job["tokensPerSecond"] == 10.5 and job["runningMs"] == 3000
    assert live["tokensPerSecond"] == 10.5
    assert [(a["app"], a["requests"]) for a in live["today"]] == [("chat-app", 1)]
    recorder.close()

    restarted = ActivityRecorder(ActivityLog(tmp_path, clock=clock), clock=clock)
    restarted.load_today()
    assert [(a["app"], a["requests"], a["completionTokens"]) for a in restarted.today()] \
        == [("chat-app", 1, 2)]
    assert restarted.live()["running"] == []
    clock.now += 3600  # past midnight: a new day
    assert restarted.today() == []
    restarted.close()


@pytest.mark.parametrize(("text", "seconds_ago"), [
    ("90", 90), ("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 7 * 86400),
    ("1.5h", 5400)])
def test_since_takes_durations(text: str, seconds_ago: float) -> None:
    assert parse_since(text, NOW) == NOW - seconds_ago


def test_since_takes_iso_times_and_the_query_refuses_bad_parameters() -> None:
    assert parse_since("2027-01-15T08:00:00Z", NOW) == parse_since(
        "2027-01-15T08:00:00.000+00:00", NOW)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", NOW)
    assert ActivityQuery.parse({}, NOW) == ActivityQuery(since=NOW - 86400)
    for params, reason in [({"limit": "0"}, "limit"), ({"limit": "5000"}, "limit"),
                           ({"limit": "ten"}, "limit"), ({"text": "maybe"}, "text"),
                           ({"color": "red"}, "unknown query parameter")]:
        with pytest.raises(ValueError, match=reason):
            ActivityQuery.parse(params, NOW)


def test_an_unwritable_log_loses_entries_not_jobs(tmp_path: Path) -> None:
    clock = Clock()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    recorder = ActivityRecorder(ActivityLog(blocker / "activity", clock=clock), clock=clock)
    run_job(recorder, clock, "job_1", "chat-app")  # does not raise
    assert recorder.write_failures == 1
    assert [a["requests"] for a in recorder.today()] == [1]
