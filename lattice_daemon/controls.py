"""The machine owner's controls: who may use this runtime, when, and how much.

The rules are daemon.toml's ``[limits]`` and ``[schedule]`` (docs/operations.md), and
the owner's pause (``lattice-ctl pause``). ``Controls`` applies them to every job
before the provider sees it (the runner's admission hook), counts each app's tokens
from the jobs that finished (a runner observer), and says whether the runtime is
paused and why, which the daemon tells the gateway at once.

An app is a credential's name, as the gateway seals it into the job (``Requester``):
nothing an app sends itself. Refusals tell the app what it needs and no more: that it
is not allowed, that its budget is spent and when it resets, never the owner's lists.

``max_tokens`` is clamped, never refused: a request asking for more (or not saying)
is run with the cap, and the answer ends with ``finish_reason: "length"`` as any
length-limited answer does.

Budgets count prompt and completion tokens as the provider reported them, per app and
local calendar day; a job's tokens count when it ends (jobs running at once may go
past a budget together). The day's counts and the owner's pause are kept in a 0600
JSON file in the daemon's data dir, so a restart changes neither.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from lattice_protocol import ErrorCode, JobSpec, iso_from_seconds

from .config import (
    DaemonConfig,
    LimitsConfig,
    ServeWindow,
    parse_serve_hours,
    write_private_file,
)
from .paths import Paths
from .runner import JobRecord, JobRefused

log = logging.getLogger("lattice_daemon.controls")

STATE_VERSION = 1
SAVE_DELAY = 1.0  # seconds: the day's counts are written behind, coalesced
# For tests only: a JSON file read on every check, {"now": "YYYY-MM-DDTHH:MM:SS" (the
# local time the schedule and the budget day see), "battery": {"powerPlugged": bool,
# "percent": n} or null (no battery)}. Each key is optional; the real value otherwise.
TEST_HOOKS_ENV = "LATTICE_CONTROLS_TEST_HOOKS"
UNKNOWN_APP = "(unnamed)"  # a job from a gateway that does not say who asked

PAUSE_MESSAGES = {
    "owner": "its owner paused it",
    "schedule": "it is outside the hours its owner set for serving",
    "battery": "its machine is running on battery",
}


@dataclass(frozen=True)
class PauseState:
    """Why the runtime takes no jobs now: ``owner`` (lattice-ctl pause), ``schedule``
    (outside serve_hours) or ``battery``; ``until`` is unix seconds when known."""

    reason: str
    until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason,
                "until": None if self.until is None else iso_from_seconds(self.until)}

    def message(self) -> str:
        text = f"this personal runtime is not serving: {PAUSE_MESSAGES[self.reason]}"
        return text if self.until is None else f"{text} until {iso_from_seconds(self.until)}"


# -------------------------------------------------------------------------- sensors


def _test_hooks() -> dict[str, Any]:
    path = os.environ.get(TEST_HOOKS_ENV)
    if not path:
        return {}
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def local_now(clock: Callable[[], float] = time.time) -> datetime:
    """The local wall time the schedule and the budget day follow (naive, local)."""
    fake = _test_hooks().get("now")
    if isinstance(fake, str):
        try:
            return datetime.fromisoformat(fake)
        except ValueError:
            pass
    return datetime.fromtimestamp(clock())


def on_battery() -> bool | None:
    """True when the machine runs on battery, False on mains, None without a battery
    (or a sensor psutil cannot read)."""
    hooks = _test_hooks()
    if "battery" in hooks:
        battery = hooks["battery"]
        return None if not isinstance(battery, dict) else not battery.get("powerPlugged", True)
    try:
        import psutil

        reading = psutil.sensors_battery()
    except (AttributeError, NotImplementedError, OSError):
        return None
    if reading is None or reading.power_plugged is None:
        return None
    return not reading.power_plugged


def test_hooks_enabled() -> bool:
    return bool(os.environ.get(TEST_HOOKS_ENV))


# ------------------------------------------------------------------------- schedule


def in_window(window: ServeWindow, at: datetime) -> bool:
    minute = at.hour * 60 + at.minute
    day = at.weekday()
    if window.start < window.end:
        return day in window.days and window.start <= minute < window.end
    # past midnight: the evening of a listed day, or the early hours after one
    return (day in window.days and minute >= window.start) or \
        ((day - 1) % 7 in window.days and minute < window.end)


def next_start(windows: list[ServeWindow], at: datetime) -> datetime | None:
    """The first window start after ``at`` (within a week), or None without windows."""
    midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [midnight + timedelta(days=offset, minutes=w.start)
              for offset in range(8) for w in windows
              if (at.weekday() + offset) % 7 in w.days]
    later = [s for s in starts if s > at]
    return min(later) if later else None


# --------------------------------------------------------------------------- budgets


def _prompt_chars(request: dict[str, Any]) -> int:
    """Characters of text in the messages (strings and text parts)."""
    total = 0
    for message in request.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return total


def budget_of(limits: LimitsConfig, app: str) -> int | None:
    own = limits.apps.get(app)
    if own is not None and own.tokens_per_day is not None:
        return own.tokens_per_day
    return limits.tokens_per_day


def app_allowed(limits: LimitsConfig, app: str) -> bool:
    if app in limits.block:
        return False
    return not limits.allow or app in limits.allow


# -------------------------------------------------------------------------- controls


class Controls:
    """The rules, the owner's pause and the day's usage; one per daemon (not per
    pairing: a reload keeps them). Lives on the daemon's loop."""

    def __init__(self, paths: Paths, config: DaemonConfig, *,
                 clock: Callable[[], float] = time.time,
                 battery: Callable[[], bool | None] = on_battery) -> None:
        self.config = config
        self.state_file = paths.data_dir / "controls.json"
        self._clock = clock
        self._battery = battery
        self._windows = self._parse_windows(config)
        self._owner_paused = False
        self._owner_until: float | None = None
        self._day = ""
        self._usage: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._save_handle: asyncio.TimerHandle | None = None
        self._load()

    @staticmethod
    def _parse_windows(config: DaemonConfig) -> list[ServeWindow]:
        return [parse_serve_hours(text) for text in config.schedule.serve_hours]

    def update_config(self, config: DaemonConfig) -> None:
        """A reload or a live change brought new rules (already validated)."""
        self.config = config
        self._windows = self._parse_windows(config)

    # -- pause --------------------------------------------------------------------------

    def pause(self, seconds: float | None) -> None:
        self._owner_paused = True
        self._owner_until = None if seconds is None else self._clock() + seconds
        log.info("paused by the owner%s", "" if seconds is None else
                 f" until {iso_from_seconds(self._owner_until or 0)}")
        self.save()

    def resume(self) -> None:
        if self._owner_paused:
            log.info("resumed by the owner")
        self._owner_paused, self._owner_until = False, None
        self.save()

    def current_pause(self) -> PauseState | None:
        """Why no job is taken now (the owner first, then the schedule, then the
        battery), or None when serving."""
        now = self._clock()
        if self._owner_paused:
            if self._owner_until is None or self._owner_until > now:
                return PauseState("owner", self._owner_until)
            log.info("the owner's pause ended")
            self._owner_paused, self._owner_until = False, None
            self.save()
        if self._windows:
            local = local_now(self._clock)
            if not any(in_window(w, local) for w in self._windows):
                start = next_start(self._windows, local)
                until = None if start is None else now + (start - local).total_seconds()
                return PauseState("schedule", until)
        if self.config.schedule.pause_on_battery and self._battery():
            return PauseState("battery")
        return None

    def next_check(self) -> float:
        """Seconds until the pause state may change by itself (the daemon looks again)."""
        if self.config.schedule.pause_on_battery or test_hooks_enabled():
            return 1.0
        wait = 60.0
        if self._owner_paused and self._owner_until is not None:
            wait = min(wait, self._owner_until - self._clock())
        if self._windows:  # windows start and end on the minute
            wait = min(wait, 60.0 - local_now(self._clock).second + 0.05)
        return max(0.05, wait)

    # -- admission (the runner's hook) ---------------------------------------------------

    def admit(self, spec: JobSpec) -> JobSpec:
        """The job as it may run (max_tokens clamped), or JobRefused."""
        pause = self.current_pause()
        limits = self.config.limits
        app = spec.requester.credential_name if spec.requester else UNKNOWN_APP
        if pause is not None:
            retry = None if pause.until is None else max(1.0, pause.until - self._clock())
            self._refuse(app, ErrorCode.RUNTIME_PAUSED, pause.message(), retry)
        if not app_allowed(limits, app):
            self._refuse(app, ErrorCode.APP_NOT_ALLOWED,
                         "this app is not allowed to use this personal runtime (its owner's "
                         "setting)")
        if limits.max_prompt_chars is not None:
            chars = _prompt_chars(spec.request)
            if chars > limits.max_prompt_chars:
                self._refuse(app, ErrorCode.PROMPT_TOO_LONG,
                             f"the prompt has {chars} characters; this personal runtime "
                             f"takes at most {limits.max_prompt_chars}")
        budget = budget_of(limits, app)
        if budget is not None and self.used_today(app) >= budget:
            self._refuse(app, ErrorCode.BUDGET_EXCEEDED,
                         "this app's daily token budget on this personal runtime is used up; "
                         "it resets at midnight, the machine's local time",
                         self.seconds_to_midnight())
        if limits.max_tokens is not None:
            return replace(spec, request=clamp_max_tokens(spec.request, limits.max_tokens))
        return spec

    def _refuse(self, app: str, code: ErrorCode, message: str,
                retry_after: float | None = None) -> None:
        self._roll_day()
        self._refused[app] = self._refused.get(app, 0) + 1
        raise JobRefused(code, message, retry_after)

    # -- usage (a runner observer) -------------------------------------------------------

    def job_started(self, record: JobRecord) -> None:
        pass

    def job_output(self, record: JobRecord) -> None:
        pass

    def job_ended(self, record: JobRecord) -> None:
        tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        if not tokens:
            return
        app = record.requester.credential_name if record.requester else UNKNOWN_APP
        self._roll_day()
        self._usage[app] = self._usage.get(app, 0) + tokens
        self._save_soon()

    def used_today(self, app: str) -> int:
        self._roll_day()
        return self._usage.get(app, 0)

    def _roll_day(self) -> None:
        day = local_now(self._clock).date().isoformat()
        if day != self._day:
            self._day, self._usage, self._refused = day, {}, {}

    def seconds_to_midnight(self) -> float:
        local = local_now(self._clock)
        midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                       microsecond=0)
        return max(1.0, (midnight - local).total_seconds())

    # -- what the control API shows ------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        pause = self.current_pause()
        self._roll_day()
        limits, schedule = self.config.limits, self.config.schedule
        apps = sorted(set(self._usage) | set(self._refused) | set(limits.apps))
        return {
            "paused": None if pause is None else pause.to_dict(),
            "ownerPause": None if not self._owner_paused else {
                "until": None if self._owner_until is None
                else iso_from_seconds(self._owner_until)},
            "limits": limits_dict(self.config),
            "schedule": {"pause_on_battery": schedule.pause_on_battery,
                         "serve_hours": list(schedule.serve_hours),
                         "onBattery": self._battery(),
                         "inServeHours": None if not self._windows else any(
                             in_window(w, local_now(self._clock)) for w in self._windows)},
            "today": {
                "day": self._day,
                "resetsInSeconds": round(self.seconds_to_midnight()),
                "apps": {app: {"tokens": self._usage.get(app, 0),
                               "tokensPerDay": budget_of(limits, app),
                               "refused": self._refused.get(app, 0),
                               "allowed": app_allowed(limits, app)} for app in apps},
            },
        }

    # -- the state file ------------------------------------------------------------------

    def _load(self) -> None:
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignored the unreadable controls state %s (%s)", self.state_file,
                        type(exc).__name__)
            return
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return
        pause = state.get("pause")
        if isinstance(pause, dict):
            until = pause.get("until")
            self._owner_paused = True
            self._owner_until = float(until) if isinstance(until, int | float) else None
        usage = state.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("day"), str):
            self._day = usage["day"]
            apps = usage.get("apps")
            if isinstance(apps, dict):
                self._usage = {str(k): int(v) for k, v in apps.items()
                               if isinstance(v, int) and not isinstance(v, bool) and v >= 0}
        self._roll_day()  # yesterday's counts are gone

    def save(self) -> None:
        """Write the state now (0600, atomic)."""
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        state = {"version": STATE_VERSION,
                 "pause": {"until": self._owner_until} if self._owner_paused else None,
                 "usage": {"day": self._day, "apps": self._usage}}
        try:
            write_private_file(self.state_file, json.dumps(state).encode("utf-8"))
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_file, exc.strerror)

    def _save_soon(self) -> None:
        """Behind the job's last event, coalesced: never an fsync in a job's path."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return
        if self._save_handle is None:
            self._save_handle = loop.call_later(SAVE_DELAY, self.save)

    def flush(self) -> None:
        if self._save_handle is not None:
            self.save()


def clamp_max_tokens(request: dict[str, Any], cap: int) -> dict[str, Any]:
    """The request with ``max_tokens`` / ``max_completion_tokens`` at most ``cap`` (set
    to ``cap`` when the app gave neither)."""
    clamped = dict(request)
    given = False
    for key in ("max_tokens", "max_completion_tokens"):
        value = clamped.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            given = True
            clamped[key] = min(value, cap)
    if not given:
        clamped["max_tokens"] = cap
    return clamped


# ------------------------------------------------------------------ live changes

LIMIT_KEYS = ("allowed_models", "max_concurrency", "allow", "block", "max_tokens",
              "max_prompt_chars", "tokens_per_day")
SCHEDULE_KEYS = ("pause_on_battery", "serve_hours")


def limits_dict(config: DaemonConfig) -> dict[str, Any]:
    """[limits] as daemon.toml names it, with the effective allowed_models and
    max_concurrency (wherever they are set)."""
    limits = config.limits
    return {
        "allowed_models": list(config.provider.allowed_models),
        "max_concurrency": config.daemon.max_concurrency,
        "allow": list(limits.allow),
        "block": list(limits.block),
        "max_tokens": limits.max_tokens,
        "max_prompt_chars": limits.max_prompt_chars,
        "tokens_per_day": limits.tokens_per_day,
        "apps": {name: {"tokens_per_day": app.tokens_per_day}
                 for name, app in sorted(limits.apps.items())},
    }


class PatchError(ValueError):
    """A live change that cannot be applied (the message says which key and why)."""


def apply_patch(config: DaemonConfig, body: Any) -> DaemonConfig:
    """A copy of ``config`` with ``PATCH /v1/controls/limits`` applied: ``limits`` and
    ``schedule`` objects of daemon.toml keys (null: back to the default), ``apps`` of
    app name -> {tokens_per_day} (null: the app's table goes). Checked as daemon.toml
    is; raises PatchError."""
    from dataclasses import asdict

    from .config import (
        ConfigError,
        DaemonSettings,
        ScheduleConfig,
        _limits,
        _section,
        check_limits,
        check_schedule,
    )

    if not isinstance(body, dict) or not body or set(body) - {"limits", "schedule", "apps"}:
        raise PatchError("the body must be an object with 'limits', 'schedule' and/or "
                         "'apps'")
    limits_raw: dict[str, Any] = {k: v for k, v in asdict(config.limits).items()
                                  if v is not None}
    limits_raw["apps"] = {name: {k: v for k, v in app.items() if v is not None}
                          for name, app in limits_raw["apps"].items()}
    schedule_raw = asdict(config.schedule)
    for section, raw, keys in (("limits", limits_raw, LIMIT_KEYS),
                               ("schedule", schedule_raw, SCHEDULE_KEYS)):
        changes = body.get(section, {})
        if not isinstance(changes, dict):
            raise PatchError(f"'{section}' must be an object")
        for key, value in changes.items():
            if key not in keys:
                raise PatchError(f"[{section}] has no key {key!r} (keys: {', '.join(keys)})")
            if value is None:
                raw.pop(key, None)
            else:
                raw[key] = value
    apps = body.get("apps", {})
    if not isinstance(apps, dict):
        raise PatchError("'apps' must be an object of app name -> {tokens_per_day}")
    for name, value in apps.items():
        if not name or len(name) > 256:
            raise PatchError("app names have 1 to 256 characters")
        if value is None:
            limits_raw["apps"].pop(name, None)
        elif isinstance(value, dict):
            merged = {**limits_raw["apps"].get(name, {}), **value}
            limits_raw["apps"][name] = {k: v for k, v in merged.items() if v is not None}
        else:
            raise PatchError(f'apps."{name}" must be an object or null')
    try:
        limits = _limits(limits_raw)
        schedule: ScheduleConfig = _section(ScheduleConfig, schedule_raw, "schedule")
        check_limits(limits)
        check_schedule(schedule)
    except ConfigError as exc:
        raise PatchError(str(exc)) from None
    limits.apps = {name: app for name, app in limits.apps.items()
                   if app.tokens_per_day is not None}
    provider = replace(config.provider, allowed_models=list(limits.allowed_models or []))
    daemon = replace(config.daemon, max_concurrency=limits.max_concurrency
                     or DaemonSettings().max_concurrency)
    if "limits" in body and "allowed_models" not in body["limits"]:
        provider = config.provider  # set in [provider] only: unchanged
    if "limits" in body and "max_concurrency" not in body["limits"]:
        daemon = config.daemon
    if "limits" not in body:
        provider, daemon = config.provider, config.daemon
    return replace(config, limits=limits, schedule=schedule, provider=provider,
                   daemon=daemon)
