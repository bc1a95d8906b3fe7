"""What at-most-once across restarts costs per job: the daemon's replay guard admitting
jobs in memory only (the baseline, what earlier daemons did), with its file record
(``lattice_daemon/replay.py``: one write(2) per job, what the daemon does), and with an
fsync per job (``sync=True``, for comparison). Prints p50/p99 per admit in microseconds.

    .venv/bin/python benchmarks/replay_guard.py [--jobs 20000] [--fsync-jobs 300]

The file lives in a temporary directory on the same file system as the system's temp
dir; run it where the daemon's state dir is to measure that disk.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lattice_daemon.replay import PersistentReplayGuard
from lattice_protocol import JobSpec, ReplayGuard


def _spec(n: int, now: float) -> JobSpec:
    # The gateway's default start deadline: 60 s, so the guard holds ~all of them.
    return JobSpec(job_id=f"job_{n:032x}", lattice_id="lat_bench", deadline=now + 60,
                   stream=False, request={})


def _measure(admit: Callable[[JobSpec], None], jobs: int) -> list[float]:
    now = time.time()
    specs = [_spec(n, now) for n in range(jobs)]
    times = []
    for spec in specs:
        started = time.perf_counter()
        admit(spec)
        times.append((time.perf_counter() - started) * 1e6)
    return times


def _row(name: str, times: list[float]) -> str:
    times = sorted(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return (f"{name:<34} {len(times):>7} jobs  p50 {statistics.median(times):9.2f} us  "
            f"p99 {p99:9.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--fsync-jobs", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        memory = _measure(ReplayGuard().admit, args.jobs)
        guard = PersistentReplayGuard(Path(tmp) / "state" / "replay-guard.jsonl")
        recorded = _measure(guard.admit, args.jobs)
        guard.close()
        synced_guard = PersistentReplayGuard(Path(tmp) / "synced" / "replay-guard.jsonl",
                                             sync=True)
        synced = _measure(synced_guard.admit, args.fsync_jobs)
        synced_guard.close()
    print(_row("in memory (baseline)", memory))
    print(_row("file record, write(2) (the daemon)", recorded))
    print(_row("file record + fsync (sync=True)", synced))
    added = statistics.median(recorded) - statistics.median(memory)
    print(f"added per job by the record: {added:.2f} us p50 "
          f"({statistics.median(recorded) / statistics.median(memory):.1f}x the in-memory "
          f"admit); an fsync would add {statistics.median(synced) / 1000:.2f} ms")


if __name__ == "__main__":
    main()
