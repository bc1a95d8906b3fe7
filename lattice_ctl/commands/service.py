"""`lattice-ctl service install | uninstall | status`: the daemon as a user
service (systemd user unit on Linux, LaunchAgent on macOS); see lattice_ctl.service_manager."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from lattice_ctl import output, service_manager
from lattice_ctl.service_manager import ServiceError, ServiceStatus, ServiceUnavailable

_WAIT_INTERVAL = 0.05


@click.group()
def service() -> None:
    """Install the daemon as a launchd/systemd user service (starts at login)."""


def _status_data(status: ServiceStatus) -> dict[str, Any]:
    return {"manager": status.manager, "available": status.available,
            "installed": status.installed, "active": status.active,
            "enabled": status.enabled, "unitFile": status.unit_file,
            "detail": status.detail, "warnings": status.warnings}


def _json_mode() -> bool:
    obj = click.get_current_context().find_root().obj
    return bool(isinstance(obj, dict) and obj.get("json"))


def _hand_over_from_detached_daemon() -> None:
    """Stop a daemon started by `daemon start`: the service's own would exit 73
    (another instance holds the lock) and never come up."""
    from lattice_ctl.commands.daemon import stop_daemon
    from lattice_ctl.daemon_link import client_for

    result = stop_daemon(client_for(timeout=2.0), timeout=45.0)
    if result.get("wasRunning"):
        output.info("Stopped the daemon started by `lattice-ctl daemon start`; "
                    "the service runs it from now on.")


def _wait_for_socket(timeout: float) -> bool:
    from lattice_ctl.control_client import ControlError
    from lattice_ctl.daemon_link import client_for

    client = client_for(timeout=1.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.ping()
            return True
        except ControlError:
            time.sleep(_WAIT_INTERVAL)
    return False


@service.command()
@click.option("--print", "--dry-run", "print_only", is_flag=True,
              help="Print the unit/plist that would be installed; change nothing.")
@click.option("--timeout", default=15.0, show_default=True,
              help="Seconds to wait for the started daemon to answer on its socket.")
def install(print_only: bool, timeout: float) -> None:
    """Install, enable and start the daemon as a user service (reinstall: restart)."""
    manager = service_manager.current()
    if print_only:
        try:
            text, warnings = manager.render()
        except ServiceError as exc:
            output.fail(str(exc), data={"code": "service_unavailable"})
        for warning in warnings:
            output.warn(warning)
        if _json_mode():
            output.emit({"manager": manager.name, "unitFile": str(manager.unit_file),
                         "content": text, "warnings": warnings})
        else:
            sys.stdout.write(text)  # raw: the unit's [Section] lines are not rich markup
        return
    reason = manager.unavailable_reason()
    if reason:
        output.fail(reason, data={"code": "no_service_manager", "manager": manager.name})
    try:
        if not manager.status().active:
            _hand_over_from_detached_daemon()
        with output.spinner("Installing and starting the Lattice service..."):
            warnings = manager.install()
    except ServiceError as exc:
        output.fail(str(exc), data={"code": "service_error"})
    for warning in warnings:
        output.warn(warning)
    answering = _wait_for_socket(timeout)
    status = manager.status()
    status.warnings = warnings
    if not answering:
        output.warn(f"the service is installed but the daemon did not answer within "
                    f"{timeout:g} s; see `lattice-ctl daemon logs` and `lattice-ctl doctor`")
    output.emit({**_status_data(status), "answering": answering}, _installed_text)


@service.command()
def uninstall() -> None:
    """Stop and remove the user service (config, keys and logs stay)."""
    manager = service_manager.current()
    try:
        removed = manager.uninstall()
    except ServiceError as exc:
        output.fail(str(exc), data={"code": "service_error"})
    output.emit({"removed": removed, "manager": manager.name,
                 "unitFile": str(manager.unit_file)}, _removed_text)


def _status_text(data: dict[str, Any]) -> str:
    if not data["installed"]:
        line = "Lattice service: not installed (install it: lattice-ctl service install)"
    else:
        state = "active" if data["active"] else "not active"
        line = f"Lattice service: installed, {state} ({data['manager']}: {data['unitFile']})"
    if data["detail"]:
        line += f"\n  {data['detail']}"
    return line


def _installed_text(data: dict[str, Any]) -> str:
    state = "running" if data["answering"] else data["detail"]
    return (f"Lattice service installed ({data['unitFile']}): {state}; it starts at "
            "login and restarts after a failure.")


def _removed_text(data: dict[str, Any]) -> str:
    if not data["removed"]:
        return "The Lattice service is not installed; nothing to remove."
    return f"Lattice service removed ({data['unitFile']})."


@service.command(name="status")
def status_cmd() -> None:
    """Whether the service is installed and running."""
    try:
        status = service_manager.current().status()
    except ServiceUnavailable as exc:  # pragma: no cover - status() reports, not raises
        output.fail(str(exc))
    output.emit(_status_data(status), _status_text)
