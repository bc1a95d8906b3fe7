"""Soak: mixed load on two gateway replicas while one replica and Redis restart.

    .venv/bin/python benchmarks/soak.py [--seconds 75] [--daemons 4] [--in-flight 8]

Processes, all on this machine: two ``lattice-gateway serve`` replicas sharing PostgreSQL
(127.0.0.1:5432, a private schema dropped afterwards) and a private ``redis-server``
(free port, no persistence); ``--daemons`` real ``lattice-daemon`` processes, paired the
documented way (half poll replica A, half B), all backed by one Ollama-compatible test
server (tests/servers, in this process) that records every prompt it receives. The load
generator sends ``--in-flight`` concurrent chats, alternately streaming and not, to
either replica, each with a unique prompt. At 35 % of the run replica B restarts
(SIGTERM, same port and database); at 65 % Redis restarts (every key lost).

Printed: requests, answers, errors by code, jobs lost (no answer and no error within
30 s), jobs duplicated (a prompt that reached the provider more than once), and the RSS
of each process at start (after warm-up) and at the end. Errors while a replica or Redis
restarts are expected (the app is told, and may retry); lost and duplicated must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
REQUEST_TIMEOUT = 30.0
GATEWAY_SETTINGS: dict[str, Any] = {
    "poll_window_seconds": 5, "presence_window_seconds": 3, "pickup_timeout_seconds": 5,
    "job_start_deadline_seconds": 5, "first_token_timeout_seconds": 10,
    "idle_timeout_seconds": 10, "sse_keepalive_seconds": 1,
}


def rss_mb(pid: int | None) -> str:
    import psutil

    if pid is None:
        return "-"
    try:
        return f"{psutil.Process(pid).memory_info().rss / 1e6:.1f}"
    except psutil.Error:
        return "gone"


async def one_request(http: Any, url: str, key: str, model: str, prompt: str,
                      stream: bool) -> str:
    """The outcome: "ok", an error code, or "lost" (nothing within the timeout)."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "stream": stream}
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            async with http.stream("POST", url + "/v1/chat/completions", json=body,
                                   headers={"x-api-key": key}) as response:
                raw = await response.aread()
    except TimeoutError:
        return "lost"
    except httpx.HTTPError as exc:
        return f"connection:{type(exc).__name__}"
    if response.status_code != 200:
        try:
            return f"{response.status_code}:{json.loads(raw)['error']['code']}"
        except (ValueError, KeyError, TypeError):
            return f"{response.status_code}:not-an-envelope"
    if not stream:
        return "ok" if json.loads(raw)["choices"][0]["message"]["content"] else "empty"
    text = raw.decode()
    if '"error"' in text:
        for line in text.splitlines():
            if line.startswith("data: {") and '"error"' in line:
                return "sse:" + str(json.loads(line[6:])["error"].get("code"))
    return "ok" if "data: [DONE]" in text else "sse:truncated"


async def load(urls: list[str], key: str, models: list[str], seconds: float, in_flight: int,
               outcomes: collections.Counter[str], prompts: list[str]) -> None:
    import httpx

    stop_at = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT + 5, trust_env=False) as http:
            while time.monotonic() < stop_at:
                n = next(counter)
                prompt = f"soak-{n}-{secrets.token_hex(4)}"
                prompts.append(prompt)
                outcome = await one_request(http, urls[(n // 2) % len(urls)], key,
                                            models[n % len(models)], prompt, n % 2 == 1)
                outcomes[outcome] += 1

    await asyncio.gather(*(worker() for _ in range(in_flight)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=75.0)
    parser.add_argument("--daemons", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args()

    import asyncpg

    import tests.servers._core as server_core
    from tests.e2e.harness import (
        create_runtime,
        mint_bootstrap,
        run_command_string,
        start_daemon,
        stop_daemon,
        write_provider_config,
    )
    from tests.support.gateway import run_coroutine_blocking, run_gateway
    from tests.support.redis_server import private_redis

    server_core.MAX_RECORDED_REQUESTS = 10**7  # every prompt, to find duplicates
    from tests.servers import run_ollama_server

    schema = "soak_" + secrets.token_hex(4)
    database = f"{POSTGRES}?schema={schema}"
    homes: list[Path] = []
    with run_ollama_server(reply="soak answer in a few words", chunk_delay=0.01) as provider, \
            private_redis() as redis_server:
        settings = {**GATEWAY_SETTINGS, "redis_url": redis_server.url}
        with run_gateway(database, **settings) as a, run_gateway(database, **settings) as b:
            key = a.create_key("soak")
            daemon_pids: list[int] = []
            models: list[str] = []
            try:
                for i in range(args.daemons):
                    gateway = (a, b)[i % 2]
                    home = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
                    homes.append(home)
                    runtime = create_runtime(gateway.url, key, name=f"soak {i}")
                    minted = mint_bootstrap(gateway.url, key, runtime["latticeId"])
                    write_provider_config(home, "ollama", provider.url,
                                          first_token_timeout=10.0, idle_timeout=10.0)
                    done = run_command_string(home, minted["command"])
                    assert done.returncode == 0, done.stderr
                    daemon_pids.append(start_daemon(home))
                    models.append(f"lattice:personal:{runtime['latticeId']}")
                time.sleep(2)  # let every daemon register (a warm-up, not a sync)
                outcomes: collections.Counter[str] = collections.Counter()
                prompts: list[str] = []
                asyncio.run(load([a.url, b.url], key, models, 3, args.in_flight,
                                 collections.Counter(), []))  # warm-up
                rss_start = {"gateway A": rss_mb(a.pid), "gateway B": rss_mb(b.pid),
                             "redis": rss_mb(redis_server.process.pid
                                             if redis_server.process else None),
                             "soak (load + provider)": rss_mb(os.getpid())}
                for i, pid in enumerate(daemon_pids):
                    rss_start[f"daemon {i}"] = rss_mb(pid)
                provider.reset()
                provider.configure(reply="soak answer in a few words", chunk_delay=0.01)

                events: list[str] = []

                def faults() -> None:
                    time.sleep(args.seconds * 0.35)
                    started = time.monotonic()
                    b.restart()
                    events.append(f"replica B restarted in {time.monotonic() - started:.1f} s "
                                  f"at {args.seconds * 0.35:.0f} s")
                    time.sleep(max(0.0, args.seconds * 0.30 - (time.monotonic() - started)))
                    started = time.monotonic()
                    redis_server.restart()
                    events.append(f"Redis restarted in {time.monotonic() - started:.1f} s "
                                  f"at ~{args.seconds * 0.65:.0f} s")

                chaos = threading.Thread(target=faults, daemon=True)
                chaos.start()
                began = time.monotonic()
                asyncio.run(load([a.url, b.url], key, models, args.seconds, args.in_flight,
                                 outcomes, prompts))
                wall = time.monotonic() - began
                chaos.join(30)
                rss_end = {"gateway A": rss_mb(a.pid), "gateway B": rss_mb(b.pid),
                           "redis": rss_mb(redis_server.process.pid
                                           if redis_server.process else None),
                           "soak (load + provider)": rss_mb(os.getpid())}
                for i, pid in enumerate(daemon_pids):
                    rss_end[f"daemon {i}"] = rss_mb(pid)
                seen: collections.Counter[str] = collections.Counter()
                for request in provider.stats()["requests"]:
                    body = request.get("body")
                    if isinstance(body, dict) and body.get("messages"):
                        seen[str(body["messages"][-1].get("content"))] += 1
            finally:
                for home in homes:
                    stop_daemon(home)
    run_coroutine_blocking(_drop(schema, asyncpg))

    total = sum(outcomes.values())
    duplicated = sum(1 for prompt in prompts if seen[prompt] > 1)
    print(f"\nsoak: {wall:.0f} s, {args.daemons} daemons, {args.in_flight} in flight, "
          "2 replicas (PostgreSQL + Redis)")
    for event in events:
        print(f"  {event}")
    print(f"requests: {total}  answered: {outcomes['ok']}  ({total / wall:.1f}/s)")
    print("errors by code:")
    for outcome, count in sorted(outcomes.items(), key=lambda item: -item[1]):
        if outcome != "ok":
            print(f"  {outcome:<40}{count:>6}")
    print(f"jobs lost: {outcomes['lost']}")
    print(f"jobs duplicated: {duplicated}")
    print(f"\n{'process':<26}{'RSS start MB':>14}{'RSS end MB':>12}")
    for name in rss_start:
        note = " (restarted)" if name in ("gateway B", "redis") else ""
        print(f"{name + note:<26}{rss_start[name]:>14}{rss_end[name]:>12}")


async def _drop(schema: str, asyncpg: Any) -> None:
    connection = await asyncpg.connect(POSTGRES)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


if __name__ == "__main__":
    main()
