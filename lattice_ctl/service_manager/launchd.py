"""The daemon as a LaunchAgent (macOS): ~/Library/LaunchAgents/ai.lattice.daemon.plist."""

from __future__ import annotations

import os
import plistlib
from pathlib import Path
from xml.sax.saxutils import escape

from lattice_daemon.shared import get_paths

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

LABEL = "ai.lattice.daemon"
TEMPLATE = "ai.lattice.daemon.plist.tmpl"


def agents_directory() -> Path:
    return Path.home() / "Library" / "LaunchAgents"


def render_plist(daemon: Path, environment: dict[str, str], log_dir: Path) -> str:
    entries = "".join(f"\n    <key>{escape(k)}</key>\n    <string>{escape(v)}</string>"
                      for k, v in sorted(environment.items()))
    text = fill(load_template(TEMPLATE), {
        "label": LABEL,
        "daemon": escape(str(daemon)),
        "environment": entries,
        "stdout_path": escape(str(log_dir / "service.out.log")),
        "stderr_path": escape(str(log_dir / "service.err.log")),
    })
    plistlib.loads(text.encode("utf-8"))  # a template or escaping bug fails here, not in launchd
    return text


class LaunchAgentManager(ServiceManager):
    name = "launchd"

    def __init__(self, launchctl: str = "launchctl") -> None:
        self._launchctl = launchctl
        self._domain = f"gui/{os.getuid()}"
        self._target = f"{self._domain}/{LABEL}"

    @property
    def unit_file(self) -> Path:
        return agents_directory() / f"{LABEL}.plist"

    def unavailable_reason(self) -> str | None:
        probe = call([self._launchctl, "print", self._domain], timeout=10)
        if probe.returncode == 127:
            return f"no user service manager here (launchctl not found); {NO_MANAGER_HINT}"
        if not probe.ok:  # e.g. over SSH without a desktop login: no gui/<uid> domain
            return (f"no user service manager here (no login session domain {self._domain}: "
                    f"{probe.message or 'launchctl print failed'}); {NO_MANAGER_HINT}")
        return None

    def render(self) -> tuple[str, list[str]]:
        environment, warnings = service_environment()
        return render_plist(daemon_executable(), environment, get_paths().log_dir), warnings

    def _loaded(self) -> bool:
        return call([self._launchctl, "print", self._target], timeout=10).ok

    def install(self) -> list[str]:
        self.require_available()
        text, warnings = self.render()
        log_dir = get_paths().log_dir
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._loaded():  # a reinstall or upgrade: unload the old definition first
            check([self._launchctl, "bootout", self._target])
        write_text_atomically(self.unit_file, text)
        call([self._launchctl, "enable", self._target])  # undo an earlier `disable`
        check([self._launchctl, "bootstrap", self._domain, str(self.unit_file)])
        return warnings

    def uninstall(self) -> bool:
        if not self.installed():
            return False
        if self._loaded():
            check([self._launchctl, "bootout", self._target])
        self.unit_file.unlink(missing_ok=True)
        return True

    def start(self) -> None:
        self.require_available()
        if not self.installed():
            raise ServiceError("the LaunchAgent is not installed; "
                               "run `lattice-ctl service install`")
        if self._loaded():
            check([self._launchctl, "kickstart", self._target])
        else:
            check([self._launchctl, "bootstrap", self._domain, str(self.unit_file)])

    def stop(self) -> None:
        # SIGTERM: the daemon drains and exits 0, and KeepAlive{SuccessfulExit=false}
        # leaves it stopped until the next login or start.
        self.require_available()
        if self._loaded():
            check([self._launchctl, "kill", "SIGTERM", self._target])

    def restart(self) -> None:
        self.require_available()
        if self._loaded():
            check([self._launchctl, "kickstart", "-k", self._target])
        else:
            self.start()

    def status(self) -> ServiceStatus:
        reason = self.unavailable_reason()
        installed = self.installed()
        if reason is not None:
            return ServiceStatus(self.name, False, installed, False, False,
                                 str(self.unit_file), reason)
        printed = call([self._launchctl, "print", self._target], timeout=10)
        running = printed.ok and "state = running" in printed.stdout
        detail = "running" if running else ("loaded, not running" if printed.ok
                                            else "not loaded")
        return ServiceStatus(self.name, True, installed, running, printed.ok and installed,
                             str(self.unit_file), detail)
