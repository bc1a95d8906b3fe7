"""Job pickup by an idle connected daemon: from the app's request leaving the client to
the job arriving at the daemon's parked poll (SPEC §7: p99 <= 20 ms).

    .venv/bin/python benchmarks/relay_pickup.py [--jobs 1000] [--redis redis://127.0.0.1:6379/0]

Starts a real ``lattice-gateway serve`` process (SQLite; in-process relay, or Redis with
``--redis``) and, in this process, the test-side fake daemon (``tests/support/
fake_daemon.py``) paired to it, with one poll parked. Then sends ``--jobs`` non-streaming
chat requests one at a time over a keep-alive connection; each waits for its answer, so
the daemon is idle and parked when the next job is queued. Client and daemon share this
process's clock, so "pickup" is measured end to end: request written -> gateway parses,
authenticates, validates, seals, enqueues -> the parked poll's answer arrives and the
job is opened. That is an upper bound on enqueue -> poll response. Also printed: the
full relayed round trip, and the same client against an instant HTTP server (the
baseline: what one local HTTP round trip costs here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.relay_overhead import RawHttp, Target, ms, pct, provider_process  # noqa: E402

PROMPT = [{"role": "user", "content": "Say hello."}]


async def measure(gateway_url: str, api_key: str, provider_url: str, provider_model: str,
                  jobs: int) -> None:
    from tests.support.fake_daemon import Reply, paired_daemon

    picked_up: dict[str, float] = {}
    daemon = await paired_daemon(gateway_url, api_key, reply=Reply(text="hello"), capacity=4)
    daemon.on_job = lambda spec: picked_up.__setitem__(spec.job_id, time.perf_counter())
    relayed = Target("via gateway", gateway_url, "/v1/chat/completions",
                     f"lattice:personal:{daemon.lattice_id}",
                     {"Authorization": f"Bearer {api_key}"})
    direct = Target("direct", provider_url, "/v1/chat/completions", provider_model, {})
    client, direct_client = RawHttp(gateway_url), RawHttp(provider_url)
    request, direct_request = relayed.request(client), direct.request(direct_client)
    pickups: list[float] = []
    round_trips: list[float] = []
    baseline: list[float] = []
    try:
        for index in range(jobs + 50):  # the first 50 warm up connections and caches
            started = time.perf_counter()
            before = len(picked_up)
            status, body, _, _ = await client.send(request)
            finished = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
            assert len(picked_up) == before + 1
            picked_at = picked_up[daemon.jobs[-1].job_id]
            d_started = time.perf_counter()
            await direct_client.send(direct_request)
            d_finished = time.perf_counter()
            if index >= 50:
                pickups.append(picked_at - started)
                round_trips.append(finished - started)
                baseline.append(d_finished - d_started)
    finally:
        await client.close()
        await direct_client.close()
        await daemon.stop()
    print(f"\n{jobs} jobs, one at a time, milliseconds        {'p50':>8}{'p99':>8}{'max':>8}")
    print(f"  pickup (request sent -> job at daemon) {ms(pct(pickups, 50))}"
          f"{ms(pct(pickups, 99))}{ms(max(pickups))}")
    print(f"  relayed round trip                     {ms(pct(round_trips, 50))}"
          f"{ms(pct(round_trips, 99))}{ms(max(round_trips))}")
    print(f"  baseline: one round trip to an instant {ms(pct(baseline, 50))}"
          f"{ms(pct(baseline, 99))}{ms(max(baseline))}")
    print(f"  pickup p99 vs budget 20 ms: {pct(pickups, 99) * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--redis", default=None, help="use the Redis broker at this URL")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="lh-bench-", dir="/tmp")
    os.environ["LATTICE_HOME"] = home
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    from tests.support.gateway import run_gateway

    settings: dict[str, object] = {}
    env: dict[str, str] = {}
    if args.redis:
        settings["redis_url"] = args.redis
        env["LATTICE_GATEWAY_REDIS_PREFIX"] = f"lattice-bench:{secrets.token_hex(4)}:"
    with provider_process() as provider_url, \
            run_gateway(Path(home) / "gateway", env=env, **settings) as gateway:
        import httpx

        model = httpx.get(provider_url + "/v1/models").json()["data"][0]["id"]
        print(f"broker: {'redis ' + args.redis if args.redis else 'in-process'}")
        asyncio.run(measure(gateway.url, gateway.create_key("bench"), provider_url, model,
                            args.jobs))


if __name__ == "__main__":
    main()
