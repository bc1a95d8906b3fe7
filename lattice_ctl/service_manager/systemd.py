"""The daemon as a systemd **user** unit (Linux): ~/.config/systemd/user/lattice-daemon.service."""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    NO_MANAGER_HINT,
    ServiceError,
    ServiceManager,
    ServiceStatus,
    call,
    check,
    daemon_executable,
    fill,
    load_template,
    service_environment,
    write_text_atomically,
)

UNIT_NAME = "lattice-daemon.service"
TEMPLATE = "lattice-daemon.service.tmpl"
# `systemctl --user is-system-running` states in which the user manager takes orders.
_USABLE_STATES = {"running", "degraded", "starting", "initializing", "maintenance"}


def unit_directory() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user"


def quote_value(value: str) -> str:
    """A systemd unit-file word in double quotes: specifiers (%) and variables ($) literal."""
    if any(c in value for c in "\n\r\0"):
        raise ServiceError("a path or variable for the unit contains a line break")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def render_unit(daemon: Path, environment: dict[str, str]) -> str:
    lines = [f"Environment={quote_value(f'{k}={v}')}" for k, v in sorted(environment.items())]
    return fill(load_template(TEMPLATE), {
        "exec_start": quote_value(str(daemon)),
        "environment": "\n".join(lines) if lines else "# (no environment variables needed)",
    })


class SystemdUserManager(ServiceManager):
    name = "systemd"

    def __init__(self, systemctl: str = "systemctl") -> None:
        self._systemctl = systemctl

    @property
    def unit_file(self) -> Path:
        return unit_directory() / UNIT_NAME

    def _ctl(self, *args: str) -> list[str]:
        return [self._systemctl, "--user", *args]

    def unavailable_reason(self) -> str | None:
        probe = call(self._ctl("is-system-running"), timeout=10)
        state = probe.stdout.strip()
        if probe.returncode == 127:
            return f"no user service manager here (systemctl not found); {NO_MANAGER_HINT}"
        if state in _USABLE_STATES:
            return None
        return ("no user service manager here (systemd user session not running"
                + (f": {state or probe.message}" if (state or probe.message) else "")
                + f"); {NO_MANAGER_HINT}")

    def render(self) -> tuple[str, list[str]]:
        environment, warnings = service_environment()
        return render_unit(daemon_executable(), environment), warnings

    def install(self) -> list[str]:
        self.require_available()  # before writing anything: nothing half-installed
        text, warnings = self.render()
        was_active = self._is_active()
        write_text_atomically(self.unit_file, text)
        check(self._ctl("daemon-reload"))
        if was_active:  # a reinstall or upgrade: run the new unit and the new code
            check(self._ctl("enable", UNIT_NAME))
            check(self._ctl("restart", UNIT_NAME))
        else:
            check(self._ctl("enable", "--now", UNIT_NAME))
        return warnings

    def uninstall(self) -> bool:
        if not self.installed():
            return False
        manager_up = self.unavailable_reason() is None
        if manager_up:
            check(self._ctl("disable", "--now", UNIT_NAME))
        self.unit_file.unlink(missing_ok=True)
        if manager_up:
            call(self._ctl("daemon-reload"))
            call(self._ctl("reset-failed", UNIT_NAME))  # forget an old failed state
        return True

    def start(self) -> None:
        self.require_available()
        check(self._ctl("start", UNIT_NAME))

    def stop(self) -> None:
        self.require_available()
        check(self._ctl("stop", UNIT_NAME))

    def restart(self) -> None:
        self.require_available()
        check(self._ctl("restart", UNIT_NAME))

    def _is_active(self) -> bool:
        return call(self._ctl("is-active", UNIT_NAME), timeout=10).stdout.strip() == "active"

    def status(self) -> ServiceStatus:
        reason = self.unavailable_reason()
        installed = self.installed()
        if reason is not None:
            return ServiceStatus(self.name, False, installed, False, False,
                                 str(self.unit_file), reason)
        active_state = call(self._ctl("is-active", UNIT_NAME), timeout=10).stdout.strip()
        enabled_state = call(self._ctl("is-enabled", UNIT_NAME), timeout=10).stdout.strip()
        return ServiceStatus(self.name, True, installed, active_state == "active",
                             enabled_state == "enabled", str(self.unit_file),
                             f"{active_state or 'unknown'}, {enabled_state or 'not enabled'}")
