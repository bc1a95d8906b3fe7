"""Added latency and throughput of gateway + relay + daemon, against calling the provider
directly, in the same run (benchmarks/README.md).

    .venv/bin/python benchmarks/relay_overhead.py [--requests 400] [--concurrent-requests 4000]

Starts, all on this machine: the instant OpenAI-compatible test server
(``tests.servers.openai_server``, a process), a real ``lattice-gateway serve`` process
(SQLite, in-process relay queue), a runtime paired to a real ``lattice-daemon`` process
whose provider is that same test server. Then sends the same small non-streaming chat
request (a) straight to the test server and (b) to the gateway as
``lattice:personal:<id>``, alternating, 1 in flight; then 32 in flight. The load
generator is a minimal keep-alive HTTP/1.1 client on asyncio (httpx would spend more
CPU than the thing measured), in this process. Every process shares the machine's
2 cores, so the 32-in-flight numbers are "everything on one small box".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = [{"role": "user", "content": "Say hello."}]


# ------------------------------------------------------------------- raw client


class RawHttp:
    """One keep-alive HTTP/1.1 connection; just enough for JSON and SSE answers."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def request_bytes(self, path: str, body: Any, headers: dict[str, str]) -> bytes:
        payload = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n" \
               "Content-Type: application/json\r\n" \
               f"Content-Length: {len(payload)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return head.encode() + b"\r\n" + payload

    async def send(self, request: bytes, first_marker: bytes | None = None
                   ) -> tuple[int, bytes, float | None, list[float]]:
        """Status, body, time of the first body piece containing ``first_marker`` (SSE),
        and arrival times of every body piece (chunk) for streams."""
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        first_at: float | None = None
        arrivals: list[float] = []
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
            arrivals.append(time.perf_counter())
        else:  # chunked
            pieces = []
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                now = time.perf_counter()
                arrivals.append(now)
                if first_marker is not None and first_at is None and first_marker in data:
                    first_at = now
                pieces.append(data[:-2])
            body = b"".join(pieces)
        if headers.get("connection", "").lower() == "close":
            await self.close()
            self.writer = None
        return status, body, first_at, arrivals


@dataclass
class Target:
    name: str
    url: str
    path: str
    model: str
    headers: dict[str, str]

    def request(self, client: RawHttp, stream: bool = False) -> bytes:
        body: dict[str, Any] = {"model": self.model, "messages": PROMPT, "stream": stream}
        return client.request_bytes(self.path, body, self.headers)


# ---------------------------------------------------------------------- the stack


@dataclass
class Stack:
    provider_url: str
    gateway: Any
    daemon: Any
    lattice_id: str
    api_key: str
    provider_model: str
    paths: Any

    @property
    def direct(self) -> Target:
        return Target("direct", self.provider_url, "/v1/chat/completions", self.provider_model,
                      {})

    @property
    def relayed(self) -> Target:
        return Target("via gateway", self.gateway.url, "/v1/chat/completions",
                      f"lattice:personal:{self.lattice_id}",
                      {"Authorization": f"Bearer {self.api_key}"})


@contextmanager
def provider_process(extra_env: dict[str, str] | None = None) -> Iterator[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(extra_env or {}))
    process = subprocess.Popen([sys.executable, "-m", "tests.servers.openai_server",
                                "--port", "0"], stdout=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"test server did not start: {line!r}")
        yield line.split(" ", 1)[1]
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def lattice_stack(max_concurrency: int = 64, gateway_settings: dict[str, Any] | None = None
                  ) -> Iterator[Stack]:
    """Provider process, gateway process, paired daemon process; torn down on exit."""
    home = tempfile.mkdtemp(prefix="lh-bench-", dir="/tmp")
    os.environ["LATTICE_HOME"] = home
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    from lattice_daemon.paths import get_paths
    from tests.daemon.support import DaemonProcess, pair_runtime, runtime_status, write_config
    from tests.support.gateway import run_gateway
    from tests.support.net import wait_until

    paths = get_paths()
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, home, True)  # runs last: after every process stopped
        provider_url = stack.enter_context(provider_process())
        gateway = stack.enter_context(run_gateway(Path(home) / "gateway",
                                                  **(gateway_settings or {})))
        runtime = pair_runtime(gateway, paths, name="benchmark")
        write_config(paths, relay=runtime.relay, provider_kind="openai",
                     provider_url=provider_url, max_concurrency=max_concurrency)
        daemon = stack.enter_context(DaemonProcess(paths).start())
        wait_until(lambda: runtime_status(gateway, runtime) == "reachable", timeout=10,
                   what="runtime reachable")
        import httpx

        models = httpx.get(provider_url + "/v1/models").json()["data"]
        yield Stack(provider_url, gateway, daemon, runtime.lattice_id, runtime.api_key,
                    models[0]["id"], paths)


# ---------------------------------------------------------------------- measuring


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


async def sequential(targets: list[Target], count: int) -> dict[str, list[float]]:
    """``count`` requests per target, alternating targets, one in flight."""
    clients = {t.name: RawHttp(t.url) for t in targets}
    requests = {t.name: t.request(clients[t.name]) for t in targets}
    latencies: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(count):
        for target in targets:
            started = time.perf_counter()
            status, body, _, _ = await clients[target.name].send(requests[target.name])
            latencies[target.name].append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"{target.name}: HTTP {status}: {body[:300]!r}")
    for client in clients.values():
        await client.close()
    return latencies


async def concurrent(target: Target, total: int, in_flight: int
                     ) -> tuple[list[float], float, int]:
    """``total`` requests with ``in_flight`` connections; latencies, wall time, errors."""
    latencies: list[float] = []
    errors = 0
    remaining = total

    async def worker() -> None:
        nonlocal remaining, errors
        client = RawHttp(target.url)
        request = target.request(client)
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                status, _, _, _ = await client.send(request)
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
                client = RawHttp(target.url)
                continue
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors += 1
        await client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return latencies, time.perf_counter() - started, errors


def report_row(label: str, values: list[float]) -> str:
    return f"  {label:<28}{ms(pct(values, 50))}{ms(pct(values, 99))}{ms(statistics.fmean(values))}"


async def run(args: argparse.Namespace) -> None:
    with lattice_stack(max_concurrency=max(64, args.in_flight * 2)) as stack:
        targets = [stack.direct, stack.relayed]
        await sequential(targets, 50)  # warm up connections, caches, the JIT-less paths
        seq = await sequential(targets, args.requests)
        direct, relayed = seq["direct"], seq["via gateway"]
        added = [r - d for r, d in zip(relayed, direct, strict=True)]
        print(f"\n1 in flight, {args.requests} requests each (alternating), milliseconds")
        print(f"  {'':<28}{'p50':>8}{'p99':>8}{'mean':>8}")
        print(report_row("direct to provider", direct))
        print(report_row("gateway+relay+daemon", relayed))
        print(report_row("added (pairwise difference)", added))
        print(f"  added p50 vs budget 2 ms: {(pct(relayed, 50) - pct(direct, 50)) * 1000:.2f} ms; "
              f"p99 vs budget 10 ms: {(pct(relayed, 99) - pct(direct, 99)) * 1000:.2f} ms")

        print(f"\n{args.in_flight} in flight, {args.concurrent_requests} requests, milliseconds")
        print(f"  {'':<28}{'p50':>8}{'p99':>8}{'mean':>8}{'req/s':>10}{'errors':>8}")
        results = {}
        for target in targets:
            await concurrent(target, min(500, args.concurrent_requests), args.in_flight)
            lat, wall, errors = await concurrent(target, args.concurrent_requests,
                                                 args.in_flight)
            results[target.name] = (lat, wall, errors)
            print(report_row(target.name, lat) + f"{len(lat) / wall:10.0f}{errors:8d}")
        d_lat, r_lat = results["direct"][0], results["via gateway"][0]
        print(f"  added p50 {ms(pct(r_lat, 50) - pct(d_lat, 50)).strip()} ms, "
              f"p99 {ms(pct(r_lat, 99) - pct(d_lat, 99)).strip()} ms; relayed completions/s "
              f"{len(r_lat) / results['via gateway'][1]:.0f} (budget >= 1500, no errors)")
        status = stack.daemon.process.poll()
        print(f"\n  daemon still running: {status is None}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400,
                        help="sequential requests per target (1 in flight)")
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--concurrent-requests", type=int, default=4000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
