"""`lattice-ctl ping` and `lattice-ctl status`.

Both are on the fast path (ping <= 150 ms): no httpx, no provider imports here.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from lattice_ctl import output
from lattice_ctl.control_client import NOT_RUNNING_MESSAGE, START_HINT
from lattice_ctl.daemon_link import (
    ask,
    client_for,
    describe_engine,
    describe_provider,
    format_duration,
    relay_state_line,
    try_ask,
)


def _relay_line(relay: dict[str, Any]) -> str:
    line = relay_state_line(relay)
    if relay.get("gateway"):
        # "Connected to X", but "Re-pair required (gateway X)", not "... required to X"
        joins_with_to = relay.get("state") in ("connecting", "connected", "reconnecting")
        line += f" to {relay['gateway']}" if joins_with_to else f" (gateway {relay['gateway']})"
    if relay.get("lastPollAt"):
        line += f" (last poll {relay['lastPollAt']})"
    if relay.get("lastError"):
        line += f" - {relay['lastError']}"
    return line


def _ping_text(data: dict[str, Any]) -> str:
    return "\n".join([
        f"Daemon {data.get('daemonVersion', '?')} (pid {data.get('pid', '?')}), "
        f"up {format_duration(data.get('uptimeSeconds'))}",
        f"Relay: {_relay_line(data.get('relay') or {})}",
        f"Provider: {describe_provider(data.get('provider'))}",
    ])


@click.command()
def ping() -> None:
    """Round trip to the daemon: version, uptime, relay and provider state."""
    import time

    started = time.perf_counter()
    answer = ask(client_for().ping)
    data = dict(answer.body)
    data["roundTripMs"] = round((time.perf_counter() - started) * 1000, 2)
    output.emit(data, _ping_text)


INSTANCE_CONFLICT_WARNING = (
    "Warning: another machine is serving this runtime with a copy of this pairing (the "
    "same daemon.toml and key); jobs are split between the two. Pair each machine with "
    "its own bootstrap token (lattice-ctl relay connect --replace ...).")


def _status_text(data: dict[str, Any]) -> str:
    lines = [data["stateLine"]]
    if data.get("instanceConflict"):
        lines.append(INSTANCE_CONFLICT_WARNING)
    runtime = data.get("runtime")
    if runtime:
        lines.append(f"Runtime: {runtime.get('latticeId')} "
                     f"({output.safe_text(runtime.get('displayName'))})")
    if data.get("gateway"):
        lines.append(f"Gateway: {data['gateway']}")
    if not data.get("running"):
        lines.append(f"Daemon: not running (start it with: {START_HINT})")
        provider = data.get("provider") or {}
        lines.append(f"Provider: {provider.get('kind')} at "
                     f"{provider.get('url') or 'its default URL'} (from the config)")
        return "\n".join(lines)
    relay = data.get("relay") or {}
    if data.get("paused"):
        lines.append("Why: see `lattice-ctl limits show`; `lattice-ctl resume` ends a pause "
                     "of yours")
    lines.append(f"Last successful poll: {relay.get('lastPollAt') or 'never'}")
    if relay.get("lastError"):
        lines.append(f"Last error: {relay['lastError']}")
    lines.append(f"Provider: {describe_provider(data.get('provider'))}")
    engine = (data.get("provider") or {}).get("engine")
    if engine:
        lines.append(f"Engine: {describe_engine(engine)}")
    jobs = data.get("jobs") or {}
    lines.append(f"Jobs: {jobs.get('inFlight', 0)} in flight, {jobs.get('served', 0)} served, "
                 f"{jobs.get('failed', 0)} failed (max {jobs.get('maxConcurrency', '?')} at once)")
    lines.append(f"Daemon: {data.get('daemonVersion')} (pid {data.get('pid')}), "
                 f"up {format_duration(data.get('uptimeSeconds'))}")
    return "\n".join(lines)


# `lattice-ctl status` exit codes (docs/operations.md), as `systemctl is-active` does:
# 0 only when this machine can serve its runtime now.
STATUS_EXIT_CODES = {
    "serving": 0,
    "not_running": 3,
    "not_paired": 4,
    "connecting": 5,
    "reconnecting": 5,
    "repair_required": 6,
    "model_server_down": 7,
    "paused": 8,
}


def _exit_code(data: dict[str, Any]) -> int:
    if data.get("state") == "connected":
        if data.get("paused"):
            return STATUS_EXIT_CODES["paused"]
        serving = (data.get("provider") or {}).get("ok") is True
        return STATUS_EXIT_CODES["serving" if serving else "model_server_down"]
    return STATUS_EXIT_CODES.get(str(data.get("state")), 1)


def _online_state_line(relay: dict[str, Any], provider: dict[str, Any],
                       paused: dict[str, Any] | None = None) -> str:
    """The relay and the model server side by side when the relay is up but the model
    server is not: "Connected" alone would say the runtime can serve."""
    line = relay_state_line(relay)
    if relay.get("state") == "connected" and paused:
        return f"{line}; {output.pause_line(paused)}"
    if relay.get("state") == "connected" and provider.get("ok") is False:
        return f"Relay: {line}; model server: not answering"
    return line


def _offline_status() -> dict[str, Any]:
    """What the config says, for when the daemon is not running."""
    from lattice_daemon.shared import ConfigError, get_paths, load_config

    paths = get_paths()
    try:
        config = load_config(paths)
    except ConfigError as exc:
        output.fail(f"{exc} (the daemon is not running)", data={"running": False})
    runtime = None
    if config.relay is not None:
        runtime = {"latticeId": config.relay.lattice_id,
                   "displayName": config.relay.display_name,
                   "accountId": config.relay.account_id,
                   "executionBackend": config.relay.execution_backend}
    state_line = ("Daemon not running" if config.paired
                  else "Not paired (daemon not running)")
    return {
        "running": False,
        "state": "not_running" if config.paired else "not_paired",
        "stateLine": state_line,
        "message": NOT_RUNNING_MESSAGE,
        "runtime": runtime,
        "gateway": config.relay.gateway if config.relay else None,
        "provider": {"kind": config.provider.kind, "url": config.provider.url,
                     "defaultModel": config.provider.default_model},
        "configFile": str(paths.config_file),
        "logFile": str(paths.log_file),
    }


@click.command()
def status() -> None:
    """One state line (Not paired / Connected / Reconnecting / Re-pair required), details.

    Exit 0 only when connected and the model server answers; 3 daemon not running, 4
    not paired, 5 connecting or reconnecting, 6 re-pair required, 7 model server down,
    8 paused (by you, the serving hours or the battery).
    """
    answer = try_ask(client_for().status)
    if answer is None:
        data = _offline_status()
    else:
        data = dict(answer.body)
        relay = data.get("relay") or {}
        data["running"] = True
        data["state"] = relay.get("state")
        data["stateLine"] = _online_state_line(relay, data.get("provider") or {},
                                               data.get("paused"))
        data["gateway"] = relay.get("gateway")
        data["instanceConflict"] = relay.get("instanceConflict") is True
    code = _exit_code(data)
    data["serving"] = code == 0
    output.emit(data, _status_text)
    sys.exit(code)
