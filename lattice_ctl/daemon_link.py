"""What every command needs to reach the daemon: the client, and errors as one-liners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from lattice_ctl import output
from lattice_ctl.control_client import (
    Answer,
    ControlClient,
    ControlError,
    DaemonNotRunning,
    version_mismatch,
)


def client_for(ctx: click.Context | None = None, timeout: float = 5.0) -> ControlClient:
    """A client for the socket named by ``--socket``/LATTICE_SOCKET, else the default."""
    ctx = ctx or click.get_current_context()
    socket_path = None
    while ctx is not None:
        if isinstance(ctx.obj, dict) and ctx.obj.get("socket"):
            socket_path = ctx.obj["socket"]
            break
        ctx = ctx.parent
    return ControlClient(socket_path, timeout=timeout)


def try_ask(call: Callable[[], Answer]) -> Answer | None:
    """The answer, or None when the daemon is not running; other failures exit."""
    try:
        answer = call()
    except DaemonNotRunning:
        return None
    except ControlError as exc:
        output.fail(str(exc), data={"code": exc.code})
    warning = version_mismatch(answer)
    if warning:
        output.warn(warning)
    return answer


def ask(call: Callable[[], Answer]) -> Answer:
    """The answer; exits with the not-running message when there is no daemon."""
    answer = try_ask(call)
    if answer is None:
        output.fail(DaemonNotRunning().args[0], data={"running": False,
                                                       "code": "daemon_not_running"})
    return answer


def format_duration(seconds: float | int | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def describe_provider(provider: dict[str, Any] | None) -> str:
    if not provider:
        return "unknown"
    kind = provider.get("kind") or "?"
    url = provider.get("url") or "default URL"
    state = "ok" if provider.get("ok") else f"not ok ({provider.get('detail') or 'unknown'})"
    if provider.get("ok") is None:
        state = "not checked yet"
    models = provider.get("models") or []
    default = provider.get("defaultModel")
    text = f"{kind} at {url}: {state}"
    if models:
        text += f"; models: {', '.join(map(str, models))}"
    if default:
        text += f" (default {default})"
    return text


def describe_engine(engine: dict[str, Any]) -> str:
    """The embedded engine's state: its model, loaded or not, the worker's memory."""
    text = str(engine.get("model") or "no model configured")
    if engine.get("loaded"):
        rss = engine.get("workerRssBytes")
        memory = f", {rss / 2**20:.0f} MB" if rss else ""
        text += f", loaded (worker pid {engine.get('workerPid')}{memory})"
    else:
        text += (f", not loaded (loads on the next request; unloads after "
                 f"{engine.get('keepAliveSeconds'):g} s idle)")
    return text


RELAY_STATE_LINES = {
    "not_paired": "Not paired",
    "connecting": "Connecting",
    "connected": "Connected",
    "reconnecting": "Reconnecting",
    "repair_required": "Re-pair required",
}


def relay_state_line(relay: dict[str, Any] | None) -> str:
    relay = relay or {}
    state = str(relay.get("state") or "unknown")
    line = RELAY_STATE_LINES.get(state, state)
    if state == "reconnecting" and relay.get("since"):
        line = f"Reconnecting since {relay['since']}"
    return line
