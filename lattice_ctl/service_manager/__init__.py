"""The daemon as a user service: a systemd user unit on Linux, a LaunchAgent on macOS.

Rendered from the templates in ``packaging/`` (linked beside this module so they ship in
the wheel). Used by `lattice-ctl service ...`, and by other commands through these
helpers (all act on the current user's service; none needs root):

* ``installed() -> bool``: the unit/plist file exists (no subprocess; cheap).
* ``active() -> bool``: the service manager runs the daemon now (False when unavailable).
* ``start()``, ``stop()``, ``restart()``: through the service manager (`systemctl --user`,
  `launchctl`); ``stop`` lets the daemon drain and exit 0, which is not restarted.
* ``install() -> list[str]``: write, enable and (re)start; returns warnings.
* ``uninstall() -> bool``: stop, disable, remove; False when nothing was installed.
* ``status() -> ServiceStatus``, ``render() -> (text, warnings)``, ``current()``.

Errors: ``ServiceUnavailable`` when there is no user service manager (containers, no
systemd user session, macOS without a login session), with a message that says to run
`lattice-ctl daemon start` instead; ``ServiceError`` when a service-manager call fails.
Nothing here ever writes a secret: the daemon reads its token and key from its own files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .base import ServiceError, ServiceManager, ServiceStatus, ServiceUnavailable

__all__ = [
    "ServiceError",
    "ServiceManager",
    "ServiceStatus",
    "ServiceUnavailable",
    "active",
    "current",
    "install",
    "installed",
    "render",
    "restart",
    "start",
    "status",
    "stop",
    "uninstall",
]


class _NoManager(ServiceManager):
    """Platforms without a supported user service manager (e.g. Windows, BSDs)."""

    name = "none"

    def __init__(self, platform: str) -> None:
        self._platform = platform

    @property
    def unit_file(self) -> Path:
        return Path("/nonexistent/lattice-daemon.service")  # never exists: not installable

    def unavailable_reason(self) -> str | None:
        return (f"no user service manager here ({self._platform} is not supported: "
                "Linux with systemd or macOS); run `lattice-ctl daemon start` instead")

    def render(self) -> tuple[str, list[str]]:
        raise ServiceUnavailable(self.unavailable_reason() or "")

    def install(self) -> list[str]:
        raise ServiceUnavailable(self.unavailable_reason() or "")

    def uninstall(self) -> bool:
        return False

    def start(self) -> None:
        raise ServiceUnavailable(self.unavailable_reason() or "")

    stop = restart = start

    def status(self) -> ServiceStatus:
        return ServiceStatus(self.name, False, False, False, False, None,
                             self.unavailable_reason() or "")


def current() -> ServiceManager:
    """The backend for this platform."""
    if sys.platform == "darwin":
        from .launchd import LaunchAgentManager

        return LaunchAgentManager()
    if sys.platform.startswith("linux"):
        from .systemd import SystemdUserManager

        return SystemdUserManager()
    return _NoManager(sys.platform)


def installed() -> bool:
    return current().installed()


def active() -> bool:
    manager = current()
    return manager.installed() and manager.status().active


def start() -> None:
    current().start()


def stop() -> None:
    current().stop()


def restart() -> None:
    current().restart()


def install() -> list[str]:
    return current().install()


def uninstall() -> bool:
    return current().uninstall()


def status() -> ServiceStatus:
    return current().status()


def render() -> tuple[str, list[str]]:
    return current().render()
