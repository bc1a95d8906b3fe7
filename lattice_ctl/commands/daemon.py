"""`lattice-ctl daemon start | stop | restart | status | logs`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from lattice_ctl import output
from lattice_ctl.control_client import Answer, ControlClient, ControlError, DaemonNotRunning
from lattice_ctl.daemon_link import client_for, format_duration, relay_state_line, try_ask
from lattice_daemon.shared import exitcodes

_POLL_INTERVAL = 0.02


@click.group()
def daemon() -> None:
    """Start, stop and inspect the local daemon."""


def daemon_command() -> list[str]:
    """How to run the daemon: the `lattice-daemon` script beside this Python, else -m."""
    beside = Path(sys.executable).parent / "lattice-daemon"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("lattice-daemon")
    if found:
        return [found]
    return [sys.executable, "-m", "lattice_daemon"]


def _stderr_file() -> Path:
    """Where a detached daemon's stderr goes: startup crashes land here, not in the void."""
    from lattice_daemon.shared import ensure_private_dir, get_paths

    log_dir = get_paths().log_dir
    ensure_private_dir(log_dir)
    return log_dir / "daemon.stderr.log"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


def lock_holder() -> int | None:
    """The pid of a daemon holding this config's instance lock (0 if unreadable), or None.

    The daemon's flock is the ground truth for "is one running", even when its socket
    does not answer (busy, wedged, or LATTICE_SOCKET pointing elsewhere).
    """
    import fcntl

    from lattice_daemon.shared import get_paths

    try:
        fd = os.open(get_paths().lock_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _ping(client: ControlClient) -> Answer | None:
    try:
        return client.ping()
    except ControlError:
        return None


def spawn_detached(socket_path: Path) -> subprocess.Popen[bytes]:
    """Start the daemon in its own session, stdio detached; no secret is in argv."""
    env = dict(os.environ)
    env["LATTICE_SOCKET"] = str(socket_path)
    stderr_path = _stderr_file()
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return subprocess.Popen(
            daemon_command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=fd, env=env, start_new_session=True, close_fds=True)
    finally:
        os.close(fd)


def _service_serves_this_config() -> bool:
    """True when an installed user service runs the daemon of *this* config.

    The unit records LATTICE_HOME when it was installed with one; starting a service that
    serves another home (or the default one while LATTICE_HOME is set) would start the
    wrong daemon, so then we spawn a detached one instead.
    """
    try:
        from lattice_ctl import service_manager
    except ImportError:  # pragma: no cover - the distribution piece is optional here
        return False
    try:
        if not service_manager.installed():
            return False
        unit_text = service_manager.current().unit_file.read_text(encoding="utf-8")
    except (OSError, service_manager.ServiceError):
        return False
    home = os.environ.get("LATTICE_HOME")
    if home:
        return f"LATTICE_HOME={Path(home).expanduser().absolute()}" in unit_text
    return "LATTICE_HOME" not in unit_text and not os.environ.get("LATTICE_SOCKET")


def _start_through_service() -> bool:
    from lattice_ctl import service_manager

    try:
        service_manager.start()
        return True
    except service_manager.ServiceError as exc:
        output.warn(f"could not start the installed service ({exc}); starting the daemon "
                    "detached instead")
        return False


def start_daemon(client: ControlClient, timeout: float) -> dict[str, Any]:
    """Start (unless running) and wait until the socket answers ping; exits on failure."""
    running = _ping(client)
    if running is not None:
        return {"started": False, "alreadyRunning": True, **running.body}
    holder = lock_holder()
    if holder is not None:
        output.fail(f"a daemon (pid {holder or 'unknown'}) already runs for this config but "
                    f"does not answer on {client.socket_path}; stop it with: "
                    "lattice-ctl daemon stop", data={"pid": holder or None})
    process = None
    via = "service"
    if not (_service_serves_this_config() and _start_through_service()):
        process = spawn_detached(client.socket_path)
        via = "detached"
    deadline = time.monotonic() + timeout
    with output.spinner("Starting the Lattice daemon..."):
        while time.monotonic() < deadline:
            answer = _ping(client)
            if answer is not None:
                return {"started": True, "alreadyRunning": False, "via": via, **answer.body}
            code = process.poll() if process is not None else None
            if code is not None:
                _explain_early_exit(code)
            time.sleep(_POLL_INTERVAL)
    where = f"pid {process.pid}" if process is not None else "started by the service"
    output.fail(f"the daemon did not answer on {client.socket_path} within {timeout:g} s "
                f"({where}); see: lattice-ctl daemon logs",
                data={"pid": process.pid if process is not None else None})


def _explain_early_exit(code: int) -> None:
    details = _tail(_stderr_file())
    if code == exitcodes.ALREADY_RUNNING:
        reason = "another daemon already runs with this config"
    elif code == exitcodes.CONFIG:
        reason = "the daemon's config or key is unusable (run: lattice-ctl doctor)"
    else:
        reason = f"the daemon exited at once with code {code}"
    output.fail(f"{reason}{': ' + details if details else ''}", exit_code=1,
                data={"exitCode": code})


def _wait_gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited. A zombie counts as gone: the daemon is not our child
    (its starter exited), and whoever reaps it may take its time."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)


def stop_daemon(client: ControlClient, timeout: float) -> dict[str, Any]:
    """Ask for the graceful stop, wait for the exit; SIGTERM, then SIGKILL as fallbacks."""
    answer = _ping(client)
    pid = int(answer.body.get("pid") or 0) if answer is not None else 0
    if answer is None:
        # No answer on the socket: a daemon may still hold the lock (wedged, busy).
        pid = lock_holder() or 0
        if not pid:
            return {"stopped": False, "wasRunning": False}
        output.warn(f"the daemon (pid {pid}) does not answer on {client.socket_path}; "
                    "sending it SIGTERM")
        _signal(pid, signal.SIGTERM)
    else:
        try:
            client.shutdown()
        except DaemonNotRunning:
            pass
        except ControlError:
            if pid:
                _signal(pid, signal.SIGTERM)
    with output.spinner("Stopping the Lattice daemon (draining jobs)..."):
        if not pid or _wait_gone(pid, timeout):
            return {"stopped": True, "wasRunning": True, "pid": pid, "forced": False}
        _signal(pid, signal.SIGTERM)  # a second signal: exit at once
        if _wait_gone(pid, 3.0):
            return {"stopped": True, "wasRunning": True, "pid": pid, "forced": True}
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, 3.0)
    return {"stopped": True, "wasRunning": True, "pid": pid, "forced": True, "killed": True}


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _started_text(data: dict[str, Any]) -> str:
    verb = "is already running" if data.get("alreadyRunning") else "started"
    return (f"Lattice daemon {verb} (pid {data.get('pid')}); "
            f"relay: {relay_state_line(data.get('relay'))}")


@daemon.command()
@click.option("--timeout", default=15.0, show_default=True,
              help="Seconds to wait for the daemon to answer.")
def start(timeout: float) -> None:
    """Start the daemon detached and wait until its socket answers."""
    output.emit(start_daemon(client_for(), timeout), _started_text)


def _stopped_text(data: dict[str, Any]) -> str:
    if not data.get("wasRunning"):
        return "The Lattice daemon is not running."
    forced = " (forced)" if data.get("forced") else ""
    return f"Lattice daemon stopped{forced} (pid {data.get('pid')})."


@daemon.command()
@click.option("--timeout", default=35.0, show_default=True,
              help="Seconds to let in-flight jobs drain before forcing the stop.")
def stop(timeout: float) -> None:
    """Stop the daemon gracefully (drains in-flight jobs)."""
    output.emit(stop_daemon(client_for(), timeout), _stopped_text)


@daemon.command()
@click.option("--timeout", default=35.0, show_default=True,
              help="Seconds to let in-flight jobs drain before forcing the stop.")
def restart(timeout: float) -> None:
    """Stop the daemon (if running), then start it."""
    client = client_for()
    stopped = stop_daemon(client, timeout)
    started = start_daemon(client, 15.0)
    output.emit({"stopped": stopped, **started}, _started_text)


def _status_text(data: dict[str, Any]) -> str:
    if not data.get("running"):
        return "The Lattice daemon is not running."
    return (f"The Lattice daemon is running: pid {data.get('pid')}, "
            f"up {format_duration(data.get('uptimeSeconds'))}, "
            f"version {data.get('daemonVersion')}")


@daemon.command(name="status")
def status_cmd() -> None:
    """Running or not, pid and uptime. Exits 3 when the daemon is not running."""
    answer = try_ask(client_for().ping)
    if answer is None:
        output.emit({"running": False}, _status_text)
        sys.exit(3)  # LSB: program is not running
    output.emit({"running": True, **answer.body}, _status_text)


@daemon.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they come.")
@click.option("-n", "--lines", default=200, show_default=True, type=click.IntRange(min=0),
              help="How many lines to show (0: none, e.g. with -f for new lines only).")
def logs(follow: bool, lines: int) -> None:
    """Print the daemon's log file (-f follows it)."""
    from lattice_daemon.shared import get_paths

    log_file = get_paths().log_file
    if not log_file.exists() and not follow:
        output.fail(f"no log file yet at {log_file}")
    position, inode = 0, None
    if log_file.exists():
        with open(log_file, "rb") as f:
            data = f.read()
            inode = os.fstat(f.fileno()).st_ino
        position = len(data)  # follow from exactly what was printed: no line is lost
        # [-0:] would be every line; -n 0 means none (as with tail -n 0 -f)
        tail = data.decode("utf-8", errors="replace").splitlines()[-lines:] if lines else []
        if not follow and output.json_mode():
            output.emit({"logFile": str(log_file), "lines": tail})
            return
        if tail:
            sys.stdout.write("\n".join(tail) + "\n")
            sys.stdout.flush()
    if follow:
        _follow(log_file, position, inode)


def _follow(log_file: Path, position: int, inode: int | None) -> None:
    """Like `tail -F`: follows the file across rotation (a new inode) until Ctrl-C."""
    try:
        while True:
            try:
                stat = log_file.stat()
            except FileNotFoundError:
                time.sleep(0.2)
                continue
            if stat.st_ino != inode or stat.st_size < position:
                inode, position = stat.st_ino, 0  # rotated or truncated: start over
            if stat.st_size > position:
                with open(log_file, "rb") as f:
                    f.seek(position)
                    data = f.read()
                position += len(data)
                sys.stdout.write(data.decode("utf-8", errors="replace"))
                sys.stdout.flush()
            time.sleep(0.2)
    except KeyboardInterrupt:
        return
