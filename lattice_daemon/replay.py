"""At most once across restarts: the replay guard's memory, kept in a file.

A job's sealed body can be captured from the relay queue and queued again within its
start deadline. The in-memory ``ReplayGuard`` refuses it while the daemon runs; a
restarted daemon would have forgotten it and run it again. ``PersistentReplayGuard``
appends each admitted job (id, start deadline) to ``<state dir>/replay-guard.jsonl``
(0600, in a 0700 dir) before the runner hands the job to the provider, and reads the
file back at start.

Why this and not binding jobs to the session they were leased to: the gateway seals a
job when the app asks, before any session leases it, and the broker (in-process or
Redis) picks the session. Binding would mean sealing at lease time inside both brokers,
and a job captured *before* its lease and queued again would get a fresh lease to the
new session anyway. The file needs no protocol change and covers both cases.

Durability: the entry is handed to the kernel with one ``write(2)`` on an ``O_APPEND``
descriptor before ``admit`` returns, so it survives the daemon being killed, crashing
or restarting (the threat: a restart within the job's start deadline). It is not
fsynced per job: on this project's 2-core test VM an fsync took 0.15-4 ms at p50 and
9-30 ms at p99 (the relay's whole budget is 2 ms p50, 10 ms p99), the write ~3 µs
(``benchmarks/replay_guard.py``).
An OS crash or power loss can therefore lose the entries of the last seconds before it
(the file system's commit interval, 5 s on ext4); ``sync=True`` closes that window at
the fsync's price.

Bounded: an entry is dropped once its deadline passes (a replay after the deadline is
refused as expired anyway); the file is rewritten without the dropped entries at start
and whenever it holds more than twice as many lines as live entries.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from lattice_protocol import JobSpec, ProtocolError, ReplayGuard

from .config import ensure_private_dir, write_private_file

log = logging.getLogger("lattice_daemon.replay")

COMPACT_MIN_LINES = 1024  # never rewrite the file for fewer lines than this


class PersistentReplayGuard(ReplayGuard):
    """A ``ReplayGuard`` whose admitted ids outlive the process (see the module doc)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time,
                 sync: bool = False) -> None:
        super().__init__()
        self.path = path
        self._clock = clock
        self._sync = sync
        self._lines = 0
        self._fd = -1
        ensure_private_dir(path.parent)
        self._load(clock())
        self._rewrite()

    def admit(self, spec: JobSpec, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        super().admit(spec, now)  # refuses expired jobs and replays; remembers the id
        try:
            self._append(spec.job_id, spec.deadline)
        except OSError as exc:
            # Unrecorded, the job could run again after a restart: refuse it instead.
            log.error("cannot record job %s in %s: %s", spec.job_id, self.path, exc.strerror)
            raise ProtocolError(f"cannot record job {spec.job_id} in the replay guard file "
                                f"{self.path}: {exc.strerror}", reason="unrecorded") from None
        if self._lines > COMPACT_MIN_LINES and self._lines > 2 * len(self):
            self._rewrite()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- the file -----------------------------------------------------------------------

    def _append(self, job_id: str, deadline: float) -> None:
        line = json.dumps([job_id, deadline], separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode())  # one write: a line is whole or absent
        if self._sync:
            os.fsync(self._fd)
        self._lines += 1

    def _load(self, now: float) -> None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        skipped = 0
        for line in text.splitlines():
            entry = _parse(line)
            if entry is None:
                skipped += 1  # e.g. a line cut short by a full disk: never admitted
                continue
            job_id, deadline = entry
            if deadline > now and job_id not in self._seen:
                self._remember(job_id, deadline)
        if skipped:
            log.warning("ignored %d unreadable lines in %s", skipped, self.path)

    def _remember(self, job_id: str, deadline: float) -> None:
        # The same bookkeeping ReplayGuard.admit does, for entries read back from the file.
        self._seen[job_id] = deadline
        heapq.heappush(self._by_deadline, (deadline, job_id))

    def _rewrite(self) -> None:
        """Replace the file by the live entries (atomic, 0600) and append to the new one."""
        self._forget_expired(self._clock())
        lines = "".join(json.dumps([job_id, deadline], separators=(",", ":")) + "\n"
                        for job_id, deadline in self._seen.items())
        write_private_file(self.path, lines.encode())
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._lines = len(self._seen)


def _parse(line: str) -> tuple[str, float] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int | float) and not isinstance(value[1], bool)):
        return value[0], float(value[1])
    return None
