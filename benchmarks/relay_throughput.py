"""Relayed completions per second through one gateway process, next to the same load
straight at an instant server, in the same run (budget: >= 1,500/s, no errors).

    .venv/bin/python benchmarks/relay_throughput.py [--requests 6000] [--in-flight 32]
                                                    [--redis redis://127.0.0.1:6379/0]

Processes, all on this machine: the instant OpenAI-compatible test server
(``tests.servers.openai_server``), a real ``lattice-gateway serve`` (SQLite; in-process
relay, or Redis with ``--redis``), and the test-side fake daemon (``tests/support/
fake_daemon.py``, answering at once; this script run with ``--fake-daemon``) paired to
it. The load generator is the minimal keep-alive HTTP/1.1 client of
``relay_overhead.py`` in this process, ``--in-flight`` connections. Everything shares
two cores, so the relayed figure is "gateway + fake daemon + load generator on one
small box"; the gateway's own CPU share is printed too (from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.relay_overhead import (  # noqa: E402
    Target,
    concurrent,
    provider_process,
    report_row,
)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run_fake_daemon(gateway_url: str, capacity: int) -> None:
    from tests.support.fake_daemon import FakeDaemon, Reply

    bootstrap_token = sys.stdin.readline().strip()  # never in argv
    daemon = FakeDaemon(gateway_url, reply=Reply(text="hello"), capacity=capacity)
    await daemon.redeem(bootstrap_token)
    await daemon.start()
    print("READY", flush=True)
    # Until the parent closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await daemon.stop()


def _pair(gateway_url: str, api_key: str) -> tuple[str, str]:
    import httpx

    headers = {"x-api-key": api_key}
    created = httpx.post(gateway_url + "/v1/personal-runtimes", headers=headers,
                         json={"displayName": "bench", "executionBackend": "local-model"})
    lattice_id = created.json()["runtime"]["latticeId"]
    minted = httpx.post(f"{gateway_url}/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                        headers=headers, json={"ttlSeconds": 600})
    return lattice_id, minted.json()["bootstrapToken"]


async def measure(direct: Target, relayed: Target, total: int, in_flight: int,
                  gateway_pid: int) -> None:
    print(f"\n{in_flight} in flight, {total} requests, milliseconds")
    print(f"  {'':<28}{'p50':>8}{'p99':>8}{'mean':>8}{'req/s':>10}{'errors':>8}")
    rates = {}
    for target in (direct, relayed):
        await concurrent(target, min(500, total), in_flight)  # warm-up
        cpu_before = _cpu_seconds(gateway_pid)
        latencies, wall, errors = await concurrent(target, total, in_flight)
        gateway_cpu = (_cpu_seconds(gateway_pid) - cpu_before) / wall
        rates[target.name] = len(latencies) / wall
        print(report_row(target.name, latencies) + f"{rates[target.name]:10.0f}{errors:8d}"
              + (f"   gateway CPU {gateway_cpu * 100:.0f} % of a core"
                 if target is relayed else ""))
    print(f"  relayed completions/s: {rates[relayed.name]:.0f} (budget >= 1500, no errors)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--redis", default=None, help="use the Redis broker at this URL")
    parser.add_argument("--fake-daemon", nargs=2, metavar=("URL", "CAPACITY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_daemon:
        url, capacity = args.fake_daemon
        asyncio.run(_run_fake_daemon(url, int(capacity)))
        return
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
        api_key = gateway.create_key("bench")
        lattice_id, token = _pair(gateway.url, api_key)
        daemon = subprocess.Popen(
            [sys.executable, __file__, "--fake-daemon", gateway.url, str(args.in_flight * 2)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        try:
            assert daemon.stdout is not None and daemon.stdin is not None
            daemon.stdin.write(token.encode() + b"\n")
            daemon.stdin.flush()
            line = daemon.stdout.readline().decode().strip()
            if line != "READY":
                raise RuntimeError(f"fake daemon did not start: {line!r}")
            print(f"broker: {'redis ' + args.redis if args.redis else 'in-process'}")
            direct = Target("direct to instant server", provider_url, "/v1/chat/completions",
                            model, {})
            relayed = Target("gateway+relay+fake daemon", gateway.url, "/v1/chat/completions",
                             f"lattice:personal:{lattice_id}",
                             {"Authorization": f"Bearer {api_key}"})
            assert gateway.pid is not None
            started = time.monotonic()
            asyncio.run(measure(direct, relayed, args.requests, args.in_flight, gateway.pid))
            print(f"  ({time.monotonic() - started:.0f} s)")
        finally:
            assert daemon.stdin is not None
            daemon.stdin.close()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()


if __name__ == "__main__":
    main()
