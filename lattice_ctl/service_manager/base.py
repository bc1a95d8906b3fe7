"""What every service backend shares: errors, status, the daemon's command line and
environment, template rendering and running the service manager's CLI with a deadline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lattice_ctl.pairing import PROXY_VARIABLES

NO_MANAGER_HINT = "run `lattice-ctl daemon start` instead"
SERVICE_CALL_TIMEOUT = 60.0  # a stop waits for the daemon's drain (~30 s) plus margin

# Variables the service passes on to the daemon when they are set at install time: a
# user service does not inherit the login shell's environment, and the daemon honours
# these for the relay.
PASSED_ENVIRONMENT = ("LATTICE_HOME", "LATTICE_SOCKET", *PROXY_VARIABLES, "NO_PROXY",
                      "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR")


class ServiceError(Exception):
    """A service-manager call failed; ``str(exc)`` is a one-line reason for people."""


class ServiceUnavailable(ServiceError):
    """No user service manager on this machine (containers, no systemd user session)."""


@dataclass
class ServiceStatus:
    manager: str  # "systemd" | "launchd" | "none"
    available: bool  # the user service manager answers
    installed: bool  # the unit/plist file exists
    active: bool  # the manager runs the daemon now
    enabled: bool  # starts at login
    unit_file: str | None
    detail: str = ""  # the manager's own words, or why it is unavailable
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CallResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def message(self) -> str:
        text = self.stderr.strip() or self.stdout.strip()
        return text.splitlines()[-1] if text else ""


def call(argv: list[str], timeout: float = SERVICE_CALL_TIMEOUT) -> CallResult:
    """Run a service-manager command; never raises for a non-zero exit."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return CallResult(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return CallResult(124, "", f"`{' '.join(argv)}` did not finish within {timeout:.0f} s")
    return CallResult(done.returncode, done.stdout, done.stderr)


def check(argv: list[str], timeout: float = SERVICE_CALL_TIMEOUT) -> CallResult:
    """Run a service-manager command; ServiceError naming the command if it fails."""
    result = call(argv, timeout)
    if not result.ok:
        raise ServiceError(f"`{' '.join(argv)}` failed (exit {result.returncode})"
                           + (f": {result.message}" if result.message else ""))
    return result


def daemon_executable() -> Path:
    """The absolute path of `lattice-daemon` from the same installation as this CLI."""
    # The venv's bin dir first (sys.executable is the venv python even when lattice-ctl
    # was started through a link in ~/.local/bin); do not resolve: the venv path is the
    # stable one across upgrades.
    sibling = Path(sys.executable).parent / "lattice-daemon"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return sibling.absolute()
    found = shutil.which("lattice-daemon")
    if found:
        return Path(found).absolute()
    raise ServiceError("cannot find the `lattice-daemon` program next to lattice-ctl "
                       f"({sibling.parent}) or on PATH; reinstall Lattice")


def service_environment() -> tuple[dict[str, str], list[str]]:
    """The environment the service gives the daemon, and warnings about what was left out.

    A proxy URL with a user name or password is left out: the unit file is not a place
    for secrets.
    """
    env: dict[str, str] = {}
    warnings: list[str] = []
    for name in PASSED_ENVIRONMENT:
        value = os.environ.get(name)
        if not value:
            continue
        if "\n" in value or "\r" in value or "\0" in value:
            warnings.append(f"{name} contains a line break; not passed to the service")
            continue
        if name in PROXY_VARIABLES and _has_credentials(value):
            warnings.append(f"{name} holds credentials, which must not be written into the "
                            "service file; it was left out (see docs/operations.md)")
            continue
        if name == "LATTICE_HOME":
            value = str(Path(value).expanduser().absolute())
        env[name] = value
    return env, warnings


def _has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
    except ValueError:
        return True  # cannot tell: err on the side of not writing it down
    return bool(parts.username or parts.password)


def load_template(name: str) -> str:
    """A template shipped beside this module (links to the canonical ones in packaging/)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def fill(template: str, values: dict[str, str]) -> str:
    """Replace ``{{key}}`` placeholders; a placeholder left over is a packaging bug."""
    text = template
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        start = text.index("{{")
        raise RuntimeError(f"template placeholder not filled: {text[start:start + 40]!r}")
    return text


def write_text_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ServiceManager(ABC):
    """One platform's user service manager, for the daemon's one service."""

    name: str

    @property
    @abstractmethod
    def unit_file(self) -> Path: ...

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """Why the user service manager cannot be used here, or None when it can."""

    @abstractmethod
    def render(self) -> tuple[str, list[str]]:
        """The unit/plist text for this installation, and warnings."""

    @abstractmethod
    def install(self) -> list[str]:
        """Write the file, enable and (re)start the service; returns warnings."""

    @abstractmethod
    def uninstall(self) -> bool:
        """Stop and disable the service and remove the file; False if none was there."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def restart(self) -> None: ...

    @abstractmethod
    def status(self) -> ServiceStatus: ...

    def installed(self) -> bool:
        return self.unit_file.is_file()

    def require_available(self) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise ServiceUnavailable(reason)
