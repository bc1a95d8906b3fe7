"""The owner's view of the work done on this machine: the activity log and the live view.

``ActivityLog`` is the file: one JSON line per finished job in ``activity.jsonl`` (0600)
in the daemon's data dir. It is bounded: the current file is rotated to
``activity.<n>.jsonl`` when it passes ``max_file_bytes`` or when its first entry is a day
old (so old entries can be dropped a day at a time); rotated files older than
``max_age_seconds`` are deleted, and the oldest go first while all files together pass
``max_total_bytes``. Appends are one ``os.write`` on a descriptor opened with
``O_APPEND``: a few microseconds of the event loop per job, no thread, no buffering that a
crash would lose (benchmarks/README.md has the measured cost).

``ActivityRecorder`` is the runner's ``JobObserver``: it writes the log entry when a job
ends and keeps, in memory, the jobs running now (tokens so far, tokens/s) and each app's
usage today (reloaded from the log on start, so a restart does not zero it). No prompt or
completion text is kept unless the owner turned ``log_prompts`` on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lattice_protocol import iso_from_seconds

from .runner import JobRecord

log = logging.getLogger("lattice_daemon.activity")

ACTIVITY_FILE = "activity.jsonl"
MAX_FILE_BYTES = 10 * 1000 * 1000
MAX_TOTAL_BYTES = 100 * 1000 * 1000
MAX_AGE_SECONDS = 30 * 86400.0
ROTATE_AFTER_SECONDS = 86400.0
UNKNOWN_APP = "(unknown)"  # jobs from a gateway that does not name the requester
_ROTATED = re.compile(r"^activity\.(\d+)\.jsonl$")


def parse_iso(text: str) -> float:
    """Unix seconds of an ISO-8601 time; naive times are local. ValueError if not one."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value.timestamp()


def local_midnight(now: float) -> float:
    """Unix seconds of the start of the local day that holds ``now``."""
    day = dt.datetime.fromtimestamp(now).date()
    return dt.datetime.combine(day, dt.time()).timestamp()


class ActivityLog:
    """The rotated JSON-lines files in one directory; lives on the daemon's loop thread."""

    def __init__(self, directory: Path, *, max_file_bytes: int = MAX_FILE_BYTES,
                 max_total_bytes: int = MAX_TOTAL_BYTES,
                 max_age_seconds: float = MAX_AGE_SECONDS,
                 rotate_after_seconds: float = ROTATE_AFTER_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.path = directory / ACTIVITY_FILE
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.max_age_seconds = max_age_seconds
        self.rotate_after_seconds = rotate_after_seconds
        self._clock = clock
        self._fd: int | None = None
        self._size = 0
        self._first_at: float | None = None  # time of the current file's first entry

    # -- writing ------------------------------------------------------------------------

    def append(self, entry: dict[str, Any]) -> None:
        """Write one entry (its ``time`` is ISO-8601); rotate and prune when due."""
        line = (json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str)
                + "\n").encode("utf-8")
        now = self._clock()
        if self._fd is None:
            self._open()
        if self._size and (self._size + len(line) > self.max_file_bytes or (
                self._first_at is not None
                and now - self._first_at >= self.rotate_after_seconds)):
            self._rotate()
        assert self._fd is not None
        os.write(self._fd, line)
        if not self._size:
            self._first_at = now
        self._size += len(line)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # 0600 from birth (prompts may be in it); an existing file is narrowed too.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o600)
        os.fchmod(self._fd, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._first_at = self._first_entry_time(self.path) if self._size else None
        self.prune()

    def _rotate(self) -> None:
        self.close()
        numbers = [n for n, _ in self._rotated()]
        target = self.directory / f"activity.{max(numbers, default=0) + 1}.jsonl"
        os.replace(self.path, target)
        self._open()

    @staticmethod
    def _first_entry_time(path: Path) -> float | None:
        try:
            with path.open("rb") as handle:
                first = json.loads(handle.readline())
            return parse_iso(str(first["time"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable head: rotated by size only

    def _rotated(self) -> list[tuple[int, Path]]:
        """The rotated files, oldest first."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.directory):
                match = _ROTATED.match(name)
                if match:
                    found.append((int(match.group(1)), self.directory / name))
        return sorted(found)

    def prune(self) -> None:
        """Delete rotated files past the age limit, then the oldest past the size limit."""
        now = self._clock()
        kept: list[tuple[Path, int]] = []
        for _, path in self._rotated():
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            if now - info.st_mtime > self.max_age_seconds:  # its newest entry is too old
                self._remove(path)
            else:
                kept.append((path, info.st_size))
        # Room for the current file to grow to its limit: the total never passes the cap.
        total = max(self._size, self.max_file_bytes) + sum(size for _, size in kept)
        for path, size in kept:
            if total <= self.max_total_bytes:
                break
            self._remove(path)
            total -= size

    @staticmethod
    def _remove(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log.info("activity log: removed %s (retention)", path.name)

    # -- reading (in a worker thread: it may read many megabytes) -----------------------

    def files(self) -> list[Path]:
        """Every file, oldest entries first."""
        return [path for _, path in self._rotated()] + [self.path]

    def read(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        """The entries whose ``time`` is at or after ``since``, oldest first.

        A line being written while it is read, or damaged, is skipped.
        """
        since_iso = iso_from_seconds(since) if since is not None else ""
        files = self.files()
        if since is not None:
            # A file holds nothing newer than the next file's first entry: start at the
            # newest file that begins at or before ``since`` (one line read per file).
            for index in range(len(files) - 1, -1, -1):
                first = self._first_entry_time(files[index])
                if first is not None and first <= since:
                    files = files[index:]
                    break
        for path in files:
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                continue  # rotated or pruned meanwhile
            with handle:
                for raw in handle:
                    try:
                        entry = json.loads(raw)
                    except ValueError:
                        continue
                    # ISO-8601 UTC with milliseconds sorts as text: no parsing per line.
                    if isinstance(entry, dict) and str(entry.get("time", "")) >= since_iso:
                        yield entry


# ------------------------------------------------------------------------ the observer


@dataclass
class AppUsage:
    """One app's totals over a period."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    busy_ms: int = 0
    refusals: int = 0
    errors: int = 0
    cancelled: int = 0

    def add(self, entry: dict[str, Any]) -> None:
        self.requests += 1
        self.prompt_tokens += _int(entry.get("promptTokens"))
        self.completion_tokens += _int(entry.get("completionTokens"))
        self.busy_ms += _int(entry.get("durationMs"))
        outcome = entry.get("outcome")
        if entry.get("refused"):
            self.refusals += 1
        elif outcome == "cancelled":
            self.cancelled += 1
        elif outcome != "ok":
            self.errors += 1

    def to_dict(self, app: str) -> dict[str, Any]:
        return {"app": app, "requests": self.requests, "promptTokens": self.prompt_tokens,
                "completionTokens": self.completion_tokens, "busyMs": self.busy_ms,
                "refusals": self.refusals, "errors": self.errors,
                "cancelled": self.cancelled}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def summarize(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-app totals of ``entries``, busiest app first."""
    usage: dict[str, AppUsage] = {}
    for entry in entries:
        usage.setdefault(str(entry.get("app") or UNKNOWN_APP), AppUsage()).add(entry)
    ordered = sorted(usage.items(), key=lambda item: (-item[1].requests, item[0]))
    return [totals.to_dict(app) for app, totals in ordered]


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _text_of(output: dict[str, Any] | None) -> str:
    """The assistant text in a chunk (``delta``) or a result (``message``)."""
    if not output:
        return ""
    parts = []
    for choice in output.get("choices") or []:
        if isinstance(choice, dict):
            body = choice.get("delta") or choice.get("message") or {}
            content = body.get("content") if isinstance(body, dict) else None
            if isinstance(content, str):
                parts.append(content)
    return "".join(parts)


class ActivityRecorder:
    """The runner's observer: the log entry of each job, the live view, usage today."""

    def __init__(self, log_file: ActivityLog, *, log_prompts: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.log = log_file
        self.log_prompts = log_prompts
        self._clock = clock
        self._running: dict[str, JobRecord] = {}
        self._completions: dict[str, list[str]] = {}  # only with log_prompts
        self._day = local_midnight(clock())
        self._today: dict[str, AppUsage] = {}
        self.write_failures = 0

    def load_today(self) -> None:
        """Count today's jobs from the log (a restart keeps the day's usage)."""
        self._day = local_midnight(self._clock())
        self._today = {}
        for entry in self.log.read(since=self._day):
            self._count_today(entry)

    # -- JobObserver --------------------------------------------------------------------

    def job_started(self, record: JobRecord) -> None:
        self._running[record.job_id] = record
        if self.log_prompts:
            self._completions[record.job_id] = []

    def job_output(self, record: JobRecord) -> None:
        parts = self._completions.get(record.job_id)
        if parts is not None:
            parts.append(_text_of(record.last_output))

    def job_ended(self, record: JobRecord) -> None:
        self._running.pop(record.job_id, None)
        parts = self._completions.pop(record.job_id, None)
        entry = self.entry(record, completion=None if parts is None else "".join(parts))
        self._count_today(entry)
        try:
            self.log.append(entry)
        except OSError as exc:  # a full disk must not fail jobs; say it once in a while
            self.write_failures += 1
            if self.write_failures in (1, 10, 100) or self.write_failures % 1000 == 0:
                log.error("cannot write the activity log %s: %s (%d entries lost)",
                          self.log.path, exc.strerror or exc, self.write_failures)

    def entry(self, record: JobRecord, completion: str | None = None) -> dict[str, Any]:
        """The log line of a finished job: who, what, how much, how it ended."""
        requester = record.requester
        ended = record.ended_at if record.ended_at is not None else self._clock()
        first = record.first_output_at
        entry: dict[str, Any] = {
            "time": iso_from_seconds(ended),
            "startedAt": iso_from_seconds(record.started_at),
            "jobId": record.job_id,
            "requestId": requester.request_id if requester else None,
            "accountId": requester.account_id if requester else None,
            "app": requester.credential_name if requester else None,
            "credentialId": requester.credential_id if requester else None,
            "credentialKind": requester.credential_kind if requester else None,
            "user": requester.user if requester else None,
            "model": record.model,
            "stream": record.stream,
            "promptTokens": record.prompt_tokens,
            "completionTokens": record.completion_tokens,
            "chunks": record.chunks,
            # A non-streaming answer arrives whole: its first token is not observable.
            "timeToFirstTokenMs": _ms(first - record.started_at)
            if record.stream and first is not None else None,
            "durationMs": _ms(ended - record.started_at),
            "outcome": record.outcome,
            "refused": record.refused,
        }
        if record.outcome not in ("ok", "cancelled"):
            entry["message"] = record.message
        if self.log_prompts:
            entry["messages"] = record.request.get("messages")
            entry["completion"] = completion
        return entry

    def _count_today(self, entry: dict[str, Any]) -> None:
        midnight = local_midnight(self._clock())
        if midnight != self._day:  # a new day: yesterday's usage is in the log only
            self._day, self._today = midnight, {}
        self._today.setdefault(str(entry.get("app") or UNKNOWN_APP), AppUsage()).add(entry)

    # -- the live view ------------------------------------------------------------------

    def running(self) -> list[dict[str, Any]]:
        now = self._clock()
        jobs = []
        for record in sorted(self._running.values(), key=lambda r: r.started_at):
            requester = record.requester
            # Tokens so far: the provider's count once it reported one, else one per chunk.
            tokens = (record.completion_tokens if record.completion_tokens is not None
                      else record.chunks)
            first = record.first_output_at
            generating = now - first if first is not None else 0.0
            jobs.append({
                "jobId": record.job_id,
                "requestId": requester.request_id if requester else None,
                "app": requester.credential_name if requester else None,
                "user": requester.user if requester else None,
                "model": record.model,
                "stream": record.stream,
                "startedAt": iso_from_seconds(record.started_at),
                "runningMs": _ms(now - record.started_at),
                "timeToFirstTokenMs": _ms(first - record.started_at)
                if first is not None else None,
                "tokens": tokens,
                "tokensPerSecond": round(tokens / generating, 1)
                if generating > 0.05 and tokens else 0.0,
            })
        return jobs

    def today(self) -> list[dict[str, Any]]:
        if local_midnight(self._clock()) != self._day:
            self._day, self._today = local_midnight(self._clock()), {}
        ordered = sorted(self._today.items(), key=lambda item: (-item[1].requests, item[0]))
        return [totals.to_dict(app) for app, totals in ordered]

    def live(self) -> dict[str, Any]:
        jobs = self.running()
        return {
            "running": jobs,
            "tokensPerSecond": round(sum(job["tokensPerSecond"] for job in jobs), 1),
            "todaySince": iso_from_seconds(self._day),
            "today": self.today(),
        }

    def close(self) -> None:
        self.log.close()


# ------------------------------------------------------------------- the query (API)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
DEFAULT_SINCE_SECONDS = 86400.0
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def parse_since(text: str, now: float) -> float:
    """``since`` as unix seconds: seconds ago (``3600``, ``90m``, ``24h``, ``7d``) or an
    ISO-8601 time; ValueError with a reason otherwise."""
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return parse_iso(text)
    except ValueError:
        raise ValueError(f"since={text[:40]!r} is neither a duration (90s, 30m, 24h, 7d, "
                         "or seconds) nor an ISO-8601 time") from None


@dataclass
class ActivityQuery:
    since: float
    app: str | None = None
    limit: int = DEFAULT_LIMIT
    text: bool = False  # include prompt and completion text (if it was logged)

    @classmethod
    def parse(cls, params: dict[str, str], now: float) -> ActivityQuery:
        unknown = set(params) - {"since", "app", "limit", "text"}
        if unknown:
            raise ValueError(f"unknown query parameter: {sorted(unknown)[0][:40]}")
        since = (parse_since(params["since"], now) if params.get("since")
                 else now - DEFAULT_SINCE_SECONDS)
        limit_text = params.get("limit") or str(DEFAULT_LIMIT)
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        text = params.get("text", "false").lower()
        if text not in ("true", "false", "1", "0"):
            raise ValueError("text must be true or false")
        return cls(since=since, app=params.get("app") or None, limit=int(limit_text),
                   text=text in ("true", "1"))


def query_activity(log_file: ActivityLog, query: ActivityQuery) -> dict[str, Any]:
    """The answer of ``GET /v1/activity``: the latest entries and per-app totals."""
    matching = [entry for entry in log_file.read(since=query.since)
                if query.app is None or (entry.get("app") or UNKNOWN_APP) == query.app]
    entries = matching[-query.limit:]
    if not query.text:
        entries = [{k: v for k, v in entry.items() if k not in ("messages", "completion")}
                   for entry in entries]
    return {
        "since": iso_from_seconds(query.since),
        "app": query.app,
        "count": len(matching),
        "truncated": len(matching) > len(entries),
        "entries": entries,
        "apps": summarize(matching),
        "file": str(log_file.path),
    }
