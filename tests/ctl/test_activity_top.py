"""`lattice-ctl activity` and `lattice-ctl top` against a stand-in daemon socket: what they
ask, what they print, and the not-running message. The real daemon: tests/e2e/test_activity.py.
"""

from __future__ import annotations

from typing import Any

from lattice_ctl.control_client import NOT_RUNNING_MESSAGE
from tests.ctl.conftest import RunCtl, stdout_json
from tests.ctl.fake_control import FakeControlServer, ping_body, status_body


def entry(job: str, app: str, time: str, **fields: Any) -> dict[str, Any]:
    return {"time": time, "startedAt": time, "jobId": job, "requestId": f"req_{job}",
            "accountId": "acc_1", "app": app, "credentialId": "key_1",
            "credentialKind": "apiKey", "user": None, "model": "llama3.2", "stream": False,
            "promptTokens": 12, "completionTokens": 40, "chunks": 1,
            "timeToFirstTokenMs": None, "durationMs": 1530, "outcome": "ok",
            "refused": False, **fields}


ACTIVITY = {
    "since": "2026-01-01T00:00:00.000Z", "app": None, "count": 3, "truncated": True,
    "entries": [
        entry("job_1", "chat-app", "2026-01-01T10:00:00.000Z", user="alice"),
        entry("job_2", "notes-app", "2026-01-03T10:00:00.000Z", outcome="invalid_request",
              refused=True, model=None, promptTokens=None, completionTokens=None,
              message="model 'x' is not allowed"),
    ],
    "apps": [
        {"app": "chat-app", "requests": 2, "promptTokens": 24, "completionTokens": 80,
         "busyMs": 3060, "refusals": 0, "errors": 0, "cancelled": 0},
        {"app": "notes-app", "requests": 1, "promptTokens": 0, "completionTokens": 0,
         "busyMs": 1530, "refusals": 1, "errors": 0, "cancelled": 0},
    ],
    "file": "/x/activity.jsonl",
}

LIVE = {
    "running": [{"jobId": "job_9", "requestId": "req_9", "app": "chat-app", "user": "bob",
                 "model": "llama3.2", "stream": True, "startedAt": "2026-01-01T10:00:00.000Z",
                 "runningMs": 4200, "timeToFirstTokenMs": 310, "tokens": 84,
                 "tokensPerSecond": 21.5}],
    "tokensPerSecond": 21.5, "todaySince": "2026-01-01T00:00:00.000Z",
    "today": ACTIVITY["apps"],
    "queue": {"inFlight": 1, "maxConcurrency": 4, "waiting": 0},
    "jobs": status_body()["jobs"], "relay": ping_body()["relay"],
    "provider": ping_body()["provider"], "runtime": status_body()["runtime"],
    "paused": {"reason": "owner", "until": "2026-01-01T12:00:00.000Z"},
}


def test_activity_and_top_say_the_daemon_is_not_running(run_ctl: RunCtl) -> None:
    for command in (["activity"], ["activity", "-f"], ["top"]):
        result = run_ctl(*command)
        assert result.exit_code == 1, command
        assert NOT_RUNNING_MESSAGE in result.stderr and result.stdout == ""
        data = stdout_json(run_ctl("--json", *command))
        assert data["ok"] is False and data["code"] == "daemon_not_running"


def test_activity_prints_the_jobs_and_the_per_app_totals(
        run_ctl: RunCtl, fake_daemon: FakeControlServer) -> None:
    fake_daemon.answer("GET /v1/activity?since=7d&app=chat-app&limit=2", 200, ACTIVITY)
    result = run_ctl("activity", "--since", "7d", "--app", "chat-app", "--limit", "2")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "last 2 of 3" in out
    assert "2026-01-0" in out  # the jobs span two days: dates are shown
    assert "alice" in out and "refused: invalid_request" in out
    assert "Per app" in out and "Refusals" in out
    assert "3.1 s" in out and "1.5 s" in out  # busy time, duration
    data = stdout_json(run_ctl("--json", "activity", "--since", "7d", "--app", "chat-app",
                               "--limit", "2"))
    assert data["entries"] == ACTIVITY["entries"] and data["apps"] == ACTIVITY["apps"]


def test_activity_passes_on_the_daemons_refusal(run_ctl: RunCtl,
                                                fake_daemon: FakeControlServer) -> None:
    fake_daemon.answer("GET /v1/activity?since=soon&limit=100", 400, {
        "error": {"message": "since='soon' is neither a duration nor an ISO-8601 time",
                  "code": "invalid_query"}})
    result = run_ctl("activity", "--since", "soon")
    assert result.exit_code == 1
    assert "neither a duration" in result.stderr


def test_top_without_a_terminal_prints_one_snapshot(run_ctl: RunCtl,
                                                    fake_daemon: FakeControlServer) -> None:
    fake_daemon.answer("GET /v1/live", 200, LIVE)
    result = run_ctl("top")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "NOT SERVING (PAUSED BY YOU) UNTIL 2026-01-01" in out and "Running now" in out
    assert "bob" in out and "21.5" in out and "1 running of 4" in out
    assert "Today, per app" in out and "notes-app" in out
    assert stdout_json(run_ctl("--json", "top"))["running"] == LIVE["running"]
    fake_daemon.answer("GET /v1/live", 200, {**LIVE, "paused": None, "running": []})
    quiet = run_ctl("top").stdout
    assert "PAUSED" not in quiet and "SERVING" not in quiet
    assert "Running now: no jobs" in quiet
