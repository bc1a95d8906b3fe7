"""One daemon per config: an exclusive ``flock`` on ``daemon.lock``.

The kernel drops the lock when the process dies, however it dies, so a crashed daemon
never leaves a stale lock behind (unlike a PID file). The file holds the owner's PID
for people and `lattice-ctl`, but the lock, not the content, is what counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .config import ensure_private_dir


class AlreadyRunning(Exception):
    """Another process holds the lock; ``pid`` is its PID when readable."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f" (pid {pid})" if pid else ""
        super().__init__(f"another lattice-daemon is already running for this config{who}; "
                         f"lock file {path}")
        self.pid = pid


class InstanceLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise AlreadyRunning(self.path, pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
