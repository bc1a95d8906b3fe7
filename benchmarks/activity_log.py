"""What the activity log costs the daemon's event loop per job, and what a query costs.

Per job: the recorder's calls for one streamed job of ``--chunks`` chunks (job_started,
one job_output per chunk, job_ended: the entry, one ``os.write`` to ``activity.jsonl``
on a real file, today's usage), without and with ``log_prompts``. Baseline in the same
run: sealing the same job's events (one per chunk plus ``end``), which the runner pays
for every job anyway. The query (``GET /v1/activity``, in a worker thread, not on the
loop): reading and summing ``--entries`` entries.

    .venv/bin/python benchmarks/activity_log.py   # ~10 s
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lattice_daemon.activity import ActivityLog, ActivityQuery, ActivityRecorder, query_activity
from lattice_daemon.runner import JobRecord
from lattice_protocol import KeyPair, Requester, Sealer

REQUESTER = Requester(account_id="acct_0123456789", credential_kind="apiKey",
                      credential_id="key_0123456789", credential_name="notes-app",
                      user="alice", request_id="req_0123456789abcdef")
MESSAGES = [{"role": "user", "content": "Summarise the meeting notes below. " * 20}]


def chunk(n: int) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "llama3.2", "choices": [{"index": 0, "delta": {"content": f" w{n}"},
                                              "finish_reason": None}]}


def one_job(recorder: ActivityRecorder, n: int, chunks: int) -> None:
    record = JobRecord(job_id=f"job_{n:08d}", requester=REQUESTER, stream=True,
                       started_at=time.time(), request={"messages": MESSAGES})
    recorder.job_started(record)
    record.model = "llama3.2"
    for i in range(chunks):
        record.first_output_at = record.first_output_at or time.time()
        record.chunks += 1
        record.last_output = chunk(i)
        recorder.job_output(record)
    record.prompt_tokens, record.completion_tokens = 180, chunks
    record.ended_at, record.outcome = time.time(), "ok"
    recorder.job_ended(record)


def per_job_us(run: Any, jobs: int) -> list[float]:
    samples = []
    for n in range(jobs):
        started = time.perf_counter()
        run(n)
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def show(label: str, samples: list[float]) -> float:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(f"  {label:<34} p50 {p50:8.1f} us   p99 {p99:8.1f} us")
    return p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--entries", type=int, default=50000)
    args = parser.parse_args()

    sealer = Sealer(KeyPair.generate(), KeyPair.generate().public)
    events = [chunk(i) for i in range(args.chunks)] + [{"kind": "end"}]
    with tempfile.TemporaryDirectory() as directory:
        plain = ActivityRecorder(ActivityLog(Path(directory) / "plain"))
        prompts = ActivityRecorder(ActivityLog(Path(directory) / "prompts"), log_prompts=True)
        print(f"per job ({args.jobs} jobs, {args.chunks} chunks each), on the event loop:")
        base = show("baseline: sealing its events",
                    per_job_us(lambda n: [sealer.seal_json(e) for e in events], args.jobs))
        cost = show("activity recorder", per_job_us(
            lambda n: one_job(plain, n, args.chunks), args.jobs))
        with_text = show("activity recorder, log_prompts", per_job_us(
            lambda n: one_job(prompts, n, args.chunks), args.jobs))
        print(f"  recorder / sealing: {cost / base:.2f}x; with log_prompts "
              f"{with_text / base:.2f}x")
        line = plain.log.path.stat().st_size / args.jobs
        print(f"  entry size: {line:.0f} bytes (log_prompts: "
              f"{prompts.log.path.stat().st_size / args.jobs:.0f} bytes)")

        big = ActivityRecorder(ActivityLog(Path(directory) / "big"))
        for n in range(args.entries):
            one_job(big, n, 1)
        started = time.perf_counter()
        answer = query_activity(big.log, ActivityQuery(since=time.time() - 3600))
        elapsed = time.perf_counter() - started
        size = sum(path.stat().st_size for path in big.log.files())
        print(f"query of {answer['count']} entries ({size / 1e6:.1f} MB in "
              f"{len(big.log.files())} files), worker thread: {elapsed * 1000:.0f} ms")
        for recorder in (plain, prompts, big):
            recorder.close()


if __name__ == "__main__":
    main()
