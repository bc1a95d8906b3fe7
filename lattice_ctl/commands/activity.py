"""`lattice-ctl activity`: the jobs this machine ran, and each app's totals.

Reads the daemon's activity log through `GET /v1/activity` (docs/control-api.md); `-f`
polls it and prints each new job as one line until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Any

import click

from lattice_ctl import output
from lattice_ctl.control_client import ControlError, DaemonNotRunning
from lattice_ctl.daemon_link import ask, client_for

FOLLOW_INTERVAL = 1.0  # seconds between polls under -f
LIMIT = 1000  # the most the daemon answers at once; -f asks for that many per poll
WIDE = 140  # the table's natural width: piped output is not cut to 80 columns


def _fetch(since: str, app: str | None, limit: int) -> dict[str, Any]:
    """The daemon's answer; its error (e.g. a bad --since) or "not running" exits 1."""
    client = client_for()
    return dict(ask(lambda: client.activity(since=since, app=app or "",
                                            limit=str(limit))).body)


@click.command()
@click.option("--since", default="24h", show_default=True, metavar="WHEN",
              help="How far back: a duration (90s, 30m, 24h, 7d) or an ISO-8601 time.")
@click.option("--app", "app", metavar="NAME", help="Only this app (its credential name).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, LIMIT),
              help="Show at most this many jobs (the latest); totals count them all.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new jobs (Ctrl-C stops).")
def activity(since: str, app: str | None, limit: int, follow: bool) -> None:
    """The jobs this machine ran (who asked, model, tokens, time) and per-app totals.

    Nothing of a prompt or an answer is logged unless log_prompts is on in daemon.toml.
    """
    data = _fetch(since, app, limit)
    if not follow:
        output.emit(data, output.activity_view, min_width=WIDE)
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how -f ends: exit 0
        _follow(data, app)


def _print_entries(entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        if output.json_mode():  # one JSON object per line, as `tail -f` of the log
            sys.stdout.write(json.dumps(entry, sort_keys=True) + "\n")
        else:
            sys.stdout.write(output.activity_line(entry) + "\n")
    sys.stdout.flush()


def _follow(first: dict[str, Any], app: str | None) -> None:
    entries = first.get("entries") or []
    _print_entries(entries)
    # Entries are ordered by their end time, in milliseconds; several can share one, so
    # each poll starts at the last time seen and skips the ids already printed there.
    last_time = entries[-1]["time"] if entries else first.get("since")
    seen = {e.get("jobId") for e in entries if e.get("time") == last_time}
    client = client_for()
    while True:
        time.sleep(FOLLOW_INTERVAL)
        try:
            answer = client.activity(since=str(last_time), app=app or "", limit=str(LIMIT))
        except DaemonNotRunning:
            output.warn("the daemon stopped; waiting for it to start again")
            continue
        except ControlError as exc:
            output.warn(str(exc))
            continue
        new = [e for e in answer.body.get("entries") or []
               if not (e.get("time") == last_time and e.get("jobId") in seen)]
        if not new:
            continue
        _print_entries(new)
        if new[-1].get("time") != last_time:
            last_time, seen = new[-1]["time"], set()
        seen.update(e.get("jobId") for e in new if e.get("time") == last_time)
