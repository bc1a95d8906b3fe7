"""Job pickup by an idle connected daemon: from the app's request leaving the client to
the job arriving at the daemon's parked poll (budget: p99 <= 20 ms).

    .venv/bin/python benchmarks/relay_pickup.py [--jobs 1000] [--redis redis://127.0.0.1:6379/0]
                                                [--idle-sessions 10000]

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

``--idle-sessions N`` first parks N other daemons' polls on the gateway (N paired
runtimes made through the store, one session and one held poll each, over raw
keep-alive connections from this process) and prints the gateway's RSS per parked poll
and its idle CPU, then measures pickup with all of them parked (budget: >= 10,000 idle
connected daemons per gateway process). Needs ``ulimit -n`` above 2 N + 100.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


async def park_idle_sessions(gateway_url: str, database: str, gateway_pid: int,
                             count: int) -> list[RawHttp]:
    """``count`` paired runtimes with one parked poll each; prints the gateway's cost."""
    import psutil

    from lattice_gateway.store import SqlStore
    from lattice_protocol import KeyPair

    started = time.monotonic()
    store = await SqlStore.open(database)
    account = await store.ensure_account("idle")
    public_key = KeyPair.generate().public_text()
    tokens = []
    for index in range(count):
        runtime = await store.create_runtime(account, f"idle {index}", "local-model")
        minted = await store.mint_bootstrap_token(runtime.lattice_id, 600)
        redeemed = await store.redeem_bootstrap_token(
            minted.token, daemon_public_key=public_key, daemon_version="bench")
        tokens.append(redeemed.daemon_token)
    await store.close()
    register = {"daemonVersion": "bench", "maxConcurrency": 1,
                "provider": {"kind": "ollama", "models": ["m"], "defaultModel": "m"}}
    sessions: list[tuple[str, str]] = []
    pending = list(tokens)

    async def registrar() -> None:
        client = RawHttp(gateway_url)
        while pending:
            token = pending.pop()
            status, body, _, _ = await client.send(client.request_bytes(
                "/v1/relay/sessions", register, {"Authorization": f"Bearer {token}"}))
            if status != 201:
                raise RuntimeError(f"register: HTTP {status}: {body[:200]!r}")
            sessions.append((token, json.loads(body)["sessionId"]))
        await client.close()

    await asyncio.gather(*(registrar() for _ in range(16)))
    print(f"{count} paired runtimes with a registered session in "
          f"{time.monotonic() - started:.0f} s")
    gateway = psutil.Process(gateway_pid)
    rss_before = gateway.memory_info().rss
    connections = []
    for token, session_id in sessions:
        client = RawHttp(gateway_url)
        await client.connect()
        assert client.writer is not None
        client.writer.write(client.request_bytes(
            f"/v1/relay/sessions/{session_id}/poll", {"capacity": 1},
            {"Authorization": f"Bearer {token}"}))
        connections.append(client)
    await asyncio.sleep(5)  # let the gateway read and park them all (nothing to wait on)
    cpu_before, wall_before = gateway.cpu_times(), time.monotonic()
    await asyncio.sleep(10)
    cpu_after, wall_after = gateway.cpu_times(), time.monotonic()
    rss_after = gateway.memory_info().rss
    cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) \
        / (wall_after - wall_before)
    print(f"gateway RSS {rss_before / 2**20:.0f} MB -> {rss_after / 2**20:.0f} MB with {count} "
          f"parked polls ({(rss_after - rss_before) / count / 1024:.1f} KB each); "
          f"idle CPU {cpu * 100:.2f} % of a core")
    return connections


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
    parser.add_argument("--idle-sessions", type=int, default=0,
                        help="park this many other daemons' polls first")
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
    if args.idle_sessions:
        settings.update(poll_window_seconds=50, presence_window_seconds=120)
    with provider_process() as provider_url, \
            run_gateway(Path(home) / "gateway", env=env, **settings) as gateway:
        import httpx

        model = httpx.get(provider_url + "/v1/models").json()["data"][0]["id"]
        print(f"broker: {'redis ' + args.redis if args.redis else 'in-process'}")

        async def run() -> None:
            idle: list[RawHttp] = []
            if args.idle_sessions:
                assert gateway.pid is not None
                idle = await park_idle_sessions(gateway.url, gateway.database, gateway.pid,
                                                args.idle_sessions)
            await measure(gateway.url, gateway.create_key("bench"), provider_url, model,
                          args.jobs)
            for client in idle:
                await client.close()

        asyncio.run(run())


if __name__ == "__main__":
    main()
