"""`lattice-ctl pause`, `resume` and `limits`: the owner's controls, live.

Each talks to the running daemon (docs/control-api.md: /v1/controls...); a limit
changed here is written to daemon.toml by the daemon, so it survives a restart.
"""

from __future__ import annotations

import re
from typing import Any

import click

from lattice_ctl import output
from lattice_ctl.daemon_link import ask, client_for

# daemon.toml keys `limits set` takes, by section and value kind
LIST_KEYS = {"allowed_models", "allow", "block", "serve_hours"}
BOOL_KEYS = {"pause_on_battery"}
INT_KEYS = {"max_concurrency", "max_tokens", "max_prompt_chars", "tokens_per_day"}
SCHEDULE_KEYS = {"pause_on_battery", "serve_hours"}
APP_KEYS = {"tokens_per_day"}
ALL_KEYS = sorted(LIST_KEYS | BOOL_KEYS | INT_KEYS)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30m``, ``2h``, ``90s``, ``1d`` or a plain number of seconds."""
    match = _DURATION.match(text.lower())
    if not match or float(match.group(1)) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 30m, 2h, 90s, 1d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _controls_text(data: dict[str, Any]) -> Any:
    line = output.pause_line(data.get("paused"))
    lines = [line[0].upper() + line[1:]]
    limits = data.get("limits") or {}
    schedule = data.get("schedule") or {}

    def show(value: Any) -> str:
        if value is None or value == []:
            return "-"
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        return str(value).lower() if isinstance(value, bool) else str(value)

    lines.append("")
    lines.append("[limits]")
    for key in ("allowed_models", "max_concurrency", "allow", "block", "max_tokens",
                "max_prompt_chars", "tokens_per_day"):
        lines.append(f"  {key} = {show(limits.get(key))}")
    for name, app in (limits.get("apps") or {}).items():
        lines.append(f'  apps."{name}".tokens_per_day = {show(app.get("tokens_per_day"))}')
    lines.append("[schedule]")
    lines.append(f"  pause_on_battery = {show(schedule.get('pause_on_battery'))}"
                 + ("  (on battery now)" if schedule.get("onBattery") else ""))
    lines.append(f"  serve_hours = {show(schedule.get('serve_hours'))}")
    today = data.get("today") or {}
    apps = today.get("apps") or {}
    if apps:
        lines.append("")
        lines.append(f"Today ({today.get('day')}):")
        for name, usage in apps.items():
            budget = usage.get("tokensPerDay")
            used = f"{usage.get('tokens', 0)}" + (f" of {budget}" if budget else "")
            flags = "" if usage.get("allowed", True) else ", blocked"
            lines.append(f"  {name}: {used} tokens, {usage.get('refused', 0)} refused{flags}")
    return "\n".join(lines)


@click.command()
@click.option("--for", "duration", metavar="DURATION",
              help="Resume by itself after this long (30m, 2h, 1d); default: until resumed.")
def pause(duration: str | None) -> None:
    """Stop taking new jobs (running ones finish); the gateway learns it at once."""
    seconds = None if duration is None else parse_duration(duration)
    answer = ask(lambda: client_for().request("POST", "/v1/controls/pause",
                                              {"for": seconds}))
    output.emit(answer.body, _controls_text)


@click.command()
def resume() -> None:
    """Take jobs again after `lattice-ctl pause`."""
    answer = ask(lambda: client_for().request("POST", "/v1/controls/resume", {}))
    output.emit(answer.body, _controls_text)


@click.group()
def limits() -> None:
    """Show or change [limits] and [schedule] live (written to daemon.toml)."""


@limits.command("show")
def limits_show() -> None:
    """The rules in force, the pause state and each app's use today."""
    answer = ask(lambda: client_for().request("GET", "/v1/controls"))
    output.emit(answer.body, _controls_text)


def _value(key: str, values: tuple[str, ...]) -> Any:
    if key in LIST_KEYS:
        return list(values)
    if len(values) != 1:
        raise click.BadParameter(f"{key} takes one value", param_hint="VALUE")
    text = values[0]
    if key in BOOL_KEYS:
        if text.lower() not in ("true", "false", "on", "off", "yes", "no"):
            raise click.BadParameter(f"{key} is true or false", param_hint="VALUE")
        return text.lower() in ("true", "on", "yes")
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{key} is a whole number", param_hint="VALUE") from None


def _patch(key: str, value: Any, app: str | None) -> dict[str, Any]:
    if key not in ALL_KEYS:
        raise click.BadParameter(f"no such key {key!r} (keys: {', '.join(ALL_KEYS)})",
                                 param_hint="KEY")
    if app is not None:
        if key not in APP_KEYS:
            raise click.BadParameter(f"--app takes only {', '.join(sorted(APP_KEYS))}",
                                     param_hint="KEY")
        return {"apps": {app: {key: value}}}
    return {"schedule" if key in SCHEDULE_KEYS else "limits": {key: value}}


def _send_patch(body: dict[str, Any]) -> None:
    answer = ask(lambda: client_for(timeout=15.0).request("PATCH", "/v1/controls/limits",
                                                           body))
    output.emit(answer.body, _controls_text)


@limits.command("set")
@click.argument("key")
@click.argument("values", nargs=-1, required=True, metavar="VALUE...")
@click.option("--app", metavar="NAME", help="Set the key for one app (tokens_per_day).")
def limits_set(key: str, values: tuple[str, ...], app: str | None) -> None:
    """Set KEY (a daemon.toml name): `limits set max_tokens 1024`, `limits set block
    "Notes app"`, `limits set serve_hours "Mon-Fri 09:00-18:00"`, `limits set
    tokens_per_day 50000 --app "Notes app"`. List keys take several values."""
    _send_patch(_patch(key, _value(key, values), app))


@limits.command("unset")
@click.argument("key")
@click.option("--app", metavar="NAME", help="Unset the key for one app.")
def limits_unset(key: str, app: str | None) -> None:
    """Back to the default (no limit, every app, always serving)."""
    _send_patch(_patch(key, None, app))


def _edit_list(key: str, app: str, add: bool) -> None:
    current = ask(lambda: client_for().request("GET", "/v1/controls")).body
    names = list((current.get("limits") or {}).get(key) or [])
    if add and app not in names:
        names.append(app)
    elif not add and app in names:
        names.remove(app)
    _send_patch({"limits": {key: names}})


@limits.command("block")
@click.argument("app")
def limits_block(app: str) -> None:
    """Refuse APP (a credential's name) from now on."""
    _edit_list("block", app, add=True)


@limits.command("unblock")
@click.argument("app")
def limits_unblock(app: str) -> None:
    """Serve APP again (takes it off the block list)."""
    _edit_list("block", app, add=False)
