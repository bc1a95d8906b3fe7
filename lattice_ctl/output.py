"""All of `lattice-ctl`'s output goes through here: rich for people, JSON for scripts.

Data goes to stdout; messages, spinners and errors go to stderr, so stdout carries
nothing but the data under ``--json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click


def json_mode() -> bool:
    """True under `lattice-ctl --json`."""
    return _json_mode()


def _json_mode() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if isinstance(ctx.obj, dict) and "json" in ctx.obj:
            return bool(ctx.obj["json"])
        ctx = ctx.parent
    return False


def _console(stderr: bool = False):  # -> rich.console.Console (imported lazily: startup time)
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def emit(data: Any, human: Callable[[Any], Any] | None = None, *,
         markup: bool = False, min_width: int = 0) -> None:
    """Print ``data``: JSON under --json, otherwise ``human(data)``.

    The human text is plain unless ``markup`` says it carries rich markup (whose
    callers escape the data in it): rich would otherwise eat text such as
    "[provider]" from a config error, taking it for a style tag. ``human`` may also
    return a rich renderable (a table), printed as such; ``min_width`` widens it when
    stdout is not a terminal (a pipe or a file has no width to fit: rich assumes 80).
    """
    if _json_mode():
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return
    text = human(data) if human else json.dumps(data, indent=2, default=str)
    if not text:
        return
    if not markup and isinstance(text, str):  # plain: no rich import (`ping`'s budget)
        sys.stdout.write(text + "\n")
        return
    console = _console()
    if min_width and not console.is_terminal and console.width < min_width:
        console.width = min_width
    console.print(text)


def safe_text(value: object) -> str:
    """``value`` for a terminal, with every character that is not printable escaped
    (``\\u202e``, ``\\x1b``): control characters, bidi overrides and isolates, zero-width
    characters, line separators. Names come from the gateway, set by whoever created the
    runtime; shown raw they could reorder, hide or forge the text around them. JSON
    output keeps the value as it is (json.dumps escapes it)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _escape(message: str) -> str:
    from rich.markup import escape

    return escape(message)


def info(message: str) -> None:
    """A note for people (stderr; silent under --json)."""
    if not _json_mode():
        _console(stderr=True).print(_escape(message))


def warn(message: str) -> None:
    _console(stderr=True).print(f"[yellow]warning:[/yellow] {_escape(message)}")


def fail(message: str, exit_code: int = 1, data: dict[str, Any] | None = None) -> NoReturn:
    """Exit non-zero with a one-line reason (and the data under --json)."""
    if _json_mode():
        payload = {"ok": False, "error": message, **(data or {})}
        sys.stdout.write(json.dumps(payload, sort_keys=True, default=str) + "\n")
    else:
        _console(stderr=True).print(f"[red]error:[/red] {_escape(message)}")
    sys.exit(exit_code)


@contextmanager
def spinner(message: str) -> Iterator[None]:
    """A spinner on stderr for people; nothing under --json or when not a terminal."""
    if _json_mode() or not sys.stderr.isatty():
        yield
        return
    with _console(stderr=True).status(message):
        yield


def size_text(size: int) -> str:
    """Bytes for people, in decimal units as disk tools show them: "138.1 MB"."""
    if size < 1000:
        return f"{size} B"
    value = size / 1000
    for unit in ("kB", "MB"):
        if round(value, 1) < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def table(columns: list[str], rows: list[list[str]], title: str | None = None
          ) -> Any:  # -> rich.table.Table
    """A table for emit()'s human output; cells are shown as given (no markup)."""
    from rich.table import Table
    from rich.text import Text

    grid = Table(*columns, title=title, title_justify="left", box=None, pad_edge=False)
    for row in rows:
        grid.add_row(*(Text(cell) for cell in row))
    return grid


class _PlainProgress:
    """Progress as lines on stderr, one per tenth of the total (not a terminal, --json)."""

    def __init__(self, label: str, total: int | None, done: int) -> None:
        self._label = label
        self._total = total
        self._done = done
        self._shown = -1

    def advance(self, count: int) -> None:
        self._done += count
        if self._total:
            tenth = self._done * 10 // self._total
            if tenth > self._shown:
                self._shown = tenth
                sys.stderr.write(f"{self._label}: {self._done * 100 // self._total}% "
                                 f"({size_text(self._done)} of {size_text(self._total)})\n")
                sys.stderr.flush()


@contextmanager
def progress(label: str, total: int | None, done: int = 0) -> Iterator[Callable[[int], None]]:
    """Show a transfer of ``total`` bytes (None: unknown) that has ``done`` already;
    yields ``advance(count)``. A rich bar at a terminal, else plain lines on stderr."""
    if _json_mode() or not sys.stderr.isatty():
        yield _PlainProgress(label, total, done).advance
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=_console(stderr=True)) as bar:
        task = bar.add_task(_escape(label), total=total, completed=done)
        yield lambda count: bar.advance(task, count)


# -- activity and top (`lattice-ctl activity`, `lattice-ctl top`) ---------------------------

def local_time(iso: Any, with_date: bool = False) -> str:
    """An ISO-8601 UTC time from the daemon as this machine's local clock time."""
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00")).astimezone()
    except ValueError:
        return str(iso or "?")
    return moment.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def pause_line(paused: dict[str, Any] | None) -> str:
    """The owner's pause (``paused`` of the daemon's status: {reason, until} or null)."""
    if paused is None:
        return "serving: new jobs are taken"
    why = {"owner": "paused by you", "schedule": "outside the serving hours",
           "battery": "paused: running on battery"}.get(paused.get("reason", ""), "paused")
    until = paused.get("until")
    return f"not serving ({why}){f' until {local_time(until, with_date=True)}' if until else ''}"


def millis_text(ms: Any) -> str:
    """Milliseconds for people: "850 ms", "12.4 s", "3m 05s"; "-" when unknown."""
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def count_text(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def outcome_text(entry: dict[str, Any]) -> str:
    outcome = str(entry.get("outcome") or "?")
    if entry.get("refused"):
        return f"refused: {outcome}"
    return outcome


ACTIVITY_COLUMNS = ["Time", "App", "User", "Model", "In", "Out", "TTFT", "Duration",
                    "Outcome"]


def activity_row(entry: dict[str, Any], with_date: bool = False) -> list[str]:
    return [local_time(entry.get("time"), with_date), str(entry.get("app") or "-"),
            str(entry.get("user") or "-"), str(entry.get("model") or "-"),
            count_text(entry.get("promptTokens")), count_text(entry.get("completionTokens")),
            millis_text(entry.get("timeToFirstTokenMs")),
            millis_text(entry.get("durationMs")), outcome_text(entry)]


def activity_line(entry: dict[str, Any]) -> str:
    """One job on one line, for `activity -f` (a table cannot grow line by line)."""
    time_, app, user, model, tokens_in, tokens_out, ttft, duration, outcome = \
        activity_row(entry, with_date=True)
    user_part = f" user={user}" if user != "-" else ""
    return (f"{time_}  {app}{user_part}  {model}  in={tokens_in} out={tokens_out}  "
            f"ttft={ttft}  {duration}  {outcome}")


APP_COLUMNS = ["App", "Requests", "Tokens in", "Tokens out", "Busy", "Refusals", "Errors"]


def app_rows(apps: list[dict[str, Any]]) -> list[list[str]]:
    return [[str(app.get("app")), count_text(app.get("requests")),
             count_text(app.get("promptTokens")), count_text(app.get("completionTokens")),
             millis_text(app.get("busyMs")), count_text(app.get("refusals")),
             count_text(app.get("errors"))] for app in apps]


def activity_view(data: dict[str, Any]) -> Any:  # -> rich.console.Group
    """`lattice-ctl activity`: the jobs, then each app's totals over the same period."""
    from rich.console import Group
    from rich.text import Text

    entries = data.get("entries") or []
    since = local_time(data.get("since"), with_date=True)
    if not entries:
        return Text(f"No jobs since {since}.")
    shown = f"last {len(entries)} of {data.get('count')}" if data.get("truncated") \
        else f"{len(entries)}"
    # Dates only when the jobs span more than one day: the time column stays narrow.
    days = {local_time(e.get("time"), with_date=True)[:10] for e in entries}
    jobs = table(ACTIVITY_COLUMNS, [activity_row(e, with_date=len(days) > 1)
                                    for e in entries],
                 title=f"Jobs since {since} ({shown})")
    jobs.columns[0].no_wrap = True
    apps = table(APP_COLUMNS, app_rows(data.get("apps") or []), title="Per app")
    return Group(jobs, Text(""), apps)


def top_view(live: dict[str, Any] | None, problem: str | None = None) -> Any:
    """`lattice-ctl top`: one screen of the live state (a rich renderable)."""
    from rich.console import Group
    from rich.text import Text

    header = Text("lattice-ctl top", style="bold")
    header.append("   q quits", style="dim")
    if live is None:
        return Group(header, Text(""), Text(problem or "waiting for the daemon..."))
    parts: list[Any] = [header]
    relay = live.get("relay") or {}
    provider = live.get("provider") or {}
    queue = live.get("queue") or {}
    paused = live.get("paused")  # {reason, until} or None
    pause = "  " + pause_line(paused).upper() if paused else ""
    health = "ok" if provider.get("ok") else (
        "not checked yet" if provider.get("ok") is None
        else f"DOWN ({provider.get('detail') or 'unknown'})")
    runtime = live.get("runtime") or {}
    status_line = Text(
        f"Runtime {runtime.get('displayName') or '-'}  relay: {relay.get('state') or '?'}"
        f"{pause}  provider {provider.get('kind') or '?'}: {health}")
    if paused:
        status_line.stylize("bold yellow")
    parts.append(status_line)
    parts.append(Text(
        f"Jobs: {queue.get('inFlight', 0)} running of {queue.get('maxConcurrency', '?')} "
        f"slots, {queue.get('waiting', 0)} waiting   "
        f"{live.get('tokensPerSecond', 0):.1f} tokens/s"))
    if problem:
        parts.append(Text(problem, style="red"))
    parts.append(Text(""))
    running = live.get("running") or []
    rows = [[str(job.get("app") or "-"), str(job.get("user") or "-"),
             str(job.get("model") or "-"), "stream" if job.get("stream") else "whole",
             millis_text(job.get("runningMs")), millis_text(job.get("timeToFirstTokenMs")),
             count_text(job.get("tokens")), f"{job.get('tokensPerSecond', 0):.1f}",
             str(job.get("jobId") or "")] for job in running]
    parts.append(table(["App", "User", "Model", "Mode", "Running", "TTFT", "Tokens",
                        "Tokens/s", "Job"], rows, title="Running now")
                 if rows else Text("Running now: no jobs"))
    parts.append(Text(""))
    today = live.get("today") or []
    parts.append(table(APP_COLUMNS, app_rows(today), title="Today, per app")
                 if today else Text("Today: no jobs yet"))
    return Group(*parts)
