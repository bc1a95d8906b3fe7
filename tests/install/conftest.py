"""Fixtures for running install.sh for real: wheels built from this checkout, a clean HOME.

The wheels are built once per test session (per xdist worker) from a copy of the
sources, so parallel workers never share a build directory in the checkout. The
package's dependencies come from the normal package index through the user's pip cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lattice_protocol._version import __version__

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO / "install.sh"
UPGRADE_VERSION = f"{__version__}.post1"
_SOURCES = ("pyproject.toml", "README.md", "lattice_protocol", "providers", "lattice_daemon",
            "lattice_ctl", "lattice_gateway", "lattice_client")


@dataclass(frozen=True)
class Wheels:
    current: Path  # the checkout as it is
    upgrade: Path  # the same code with a higher version number
    wheelhouse: Path  # the dependencies, so each install runs offline: --no-index
    # The dependencies and the build backend only: an index without lattice-runtimes.
    dependencies: Path

    @property
    def pip_args(self) -> str:
        return f"--no-index --find-links {self.wheelhouse}"

    @property
    def dependencies_only_pip_args(self) -> str:
        return f"--no-index --find-links {self.dependencies}"


def _build_wheel(source: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", str(source), "-w", str(out)],
                   check=True, timeout=300)
    (wheel,) = out.glob("lattice_runtimes-*.whl")
    return wheel


def _copy_sources(destination: Path, version: str) -> Path:
    destination.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in _SOURCES:
        source = REPO / name
        if source.is_dir():  # symlinks (the service templates) are copied as files
            shutil.copytree(source, destination / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, destination / name)
    (destination / "lattice_protocol" / "_version.py").write_text(
        f'__version__ = "{version}"\n')
    return destination


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    base = tmp_path_factory.mktemp("wheels")
    current = _build_wheel(_copy_sources(base / "src-current", __version__), base / "current")
    upgrade = _build_wheel(_copy_sources(base / "src-upgrade", UPGRADE_VERSION),
                           base / "upgrade")
    # One resolution against the package index per session; every install after that is
    # offline, which is also how LATTICE_PIP_ARGS is meant for air-gapped machines.
    dependencies = base / "dependencies"
    build_backend = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                    "--disable-pip-version-check", "--dest", str(dependencies),
                    f"{current}[daemon]",
                    *build_backend["requires"]],  # to build a checkout
                   check=True, timeout=300)
    (dependencies / current.name).unlink()
    # The wheelhouse plays the package index: both versions of lattice-runtimes are in it,
    # so the default package name and a "==VERSION" constraint resolve as they would on PyPI.
    wheelhouse = base / "wheelhouse"
    shutil.copytree(dependencies, wheelhouse)
    for wheel in (current, upgrade):
        shutil.copy2(wheel, wheelhouse / wheel.name)
    return Wheels(current, upgrade, wheelhouse, dependencies)


def checkout_copy(destination: Path, version: str) -> Path:
    """A source checkout (with its install.sh) at ``version``, outside this repository."""
    checkout = _copy_sources(destination, version)
    shutil.copy2(INSTALL_SH, checkout / "install.sh")
    return checkout


@pytest.fixture
def clean_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    yield home
    shutil.rmtree(runtime_dir_for(home), ignore_errors=True)


def runtime_dir_for(home: Path) -> Path:
    """A short XDG_RUNTIME_DIR per HOME: the daemon's socket path must stay < 108 bytes."""
    return Path("/tmp") / f"lrun-{hashlib.sha1(str(home).encode()).hexdigest()[:12]}"


def installer_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user who has never installed Lattice."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LATTICE_", "XDG_", "PIP_")) and k != "VIRTUAL_ENV"}
    # Keep downloads of the dependencies cached across tests (the real user's pip cache).
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR",
                                          str(Path.home() / ".cache" / "pip"))
    runtime = runtime_dir_for(home)
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime), SHELL="/bin/bash",
               LATTICE_PYTHON=sys.executable,
               # system tools only: per-user shims (pyenv, rustup) write into HOME
               PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(extra)
    return env


def run_installer(env: dict[str, str], *args: str, script: Path = INSTALL_SH,
                  timeout: float = 300, piped: bool = False
                  ) -> subprocess.CompletedProcess[str]:
    """`sh install.sh ARGS`, or with ``piped`` the way `curl ... | sh -s -- ARGS` runs it."""
    if piped:
        return subprocess.run(["/bin/sh", "-s", "--", *args], input=script.read_text(),
                              env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=env["HOME"])
    return subprocess.run(["/bin/sh", str(script), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=env["HOME"], stdin=subprocess.DEVNULL)


# A stand-in for `systemctl --user` with a running user manager: it runs the installed
# unit's ExecStart in the background, so the service really serves the daemon.
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$FAKE_SYSTEMCTL_LOG"
unit="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/lattice-daemon.service"
pidfile="$FAKE_SYSTEMCTL_LOG.pid"
stop_unit() {
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    rm -f "$pidfile"
    kill "$pid" 2>/dev/null || return 0
    i=0  # wait (bounded) for the drain and exit, as systemd does
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 400 ]; do sleep 0.05; i=$((i + 1)); done
}
start_unit() {
    stop_unit
    exec_start=$(sed -n 's/^ExecStart="\\(.*\\)"$/\\1/p' "$unit")
    "$exec_start" </dev/null >/dev/null 2>&1 &
    echo $! > "$pidfile"
}
case "$2" in
    is-system-running) echo running ;;
    is-active)
        if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo active
        else echo inactive; exit 3; fi ;;
    is-enabled) if [ -f "$unit" ]; then echo enabled; else echo disabled; exit 1; fi ;;
    enable) if [ "$3" = --now ]; then start_unit; fi ;;
    start | restart) start_unit ;;
    stop) stop_unit ;;
    disable) if [ "$3" = --now ]; then stop_unit; fi ;;
esac
"""


def fake_systemctl(directory: Path) -> Path:
    """Write the stand-in as ``directory/systemctl``; returns its call log."""
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / "systemctl"
    program.write_text(FAKE_SYSTEMCTL)
    program.chmod(0o755)
    return directory / "systemctl.log"


def files_under(root: Path) -> set[str]:
    """Every file and link under ``root`` (directories left empty do not count)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}
