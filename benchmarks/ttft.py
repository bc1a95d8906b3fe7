"""Time to first token and inter-chunk latency of a streamed chat, direct vs through the
gateway + relay + daemon, in the same run (budget: added TTFT p50 <= 3 ms).

    .venv/bin/python benchmarks/ttft.py [--requests 200] [--chunks 8] [--chunk-delay 0.01]

Same stack as relay_overhead.py (test server process, gateway process, daemon process).
The test server streams ``--chunks`` content chunks ``--chunk-delay`` seconds apart, the
first one at once. TTFT is measured from sending the request to the arrival of the
first content chunk (not the role chunk); inter-chunk latency is the gap between
consecutive content chunks as the client sees them (ideal: the configured delay).
Requests alternate between the two targets, one in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from relay_overhead import RawHttp, Target, lattice_stack, ms, pct

MARKER = b"tok0"


async def stream_once(client: RawHttp, request: bytes) -> tuple[float, list[float]]:
    started = time.perf_counter()
    status, body, first_at, arrivals = await client.send(request, first_marker=MARKER)
    if status != 200 or first_at is None:
        raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
    return first_at - started, [t for t in arrivals if t >= first_at]


async def run(args: argparse.Namespace) -> None:
    from tests.servers import ControlClient

    with lattice_stack() as stack:
        control = ControlClient(stack.provider_url)
        control.configure(chunks=[f"tok{i} " for i in range(args.chunks)],
                          chunk_delay=args.chunk_delay)
        targets: list[Target] = [stack.direct, stack.relayed]
        clients = {t.name: RawHttp(t.url) for t in targets}
        requests = {t.name: t.request(clients[t.name], stream=True) for t in targets}
        ttft: dict[str, list[float]] = {t.name: [] for t in targets}
        gaps: dict[str, list[float]] = {t.name: [] for t in targets}
        for index in range(args.requests + 20):
            for target in targets:
                first, arrivals = await stream_once(clients[target.name],
                                                    requests[target.name])
                if index < 20:
                    continue  # warm-up
                ttft[target.name].append(first)
                # Gaps between body pieces from the first token on. Pieces closer than
                # a quarter of the delay belong to one chunk (framing, the final events).
                gaps[target.name].extend(b - a for a, b in itertools.pairwise(arrivals)
                                         if b - a > args.chunk_delay / 4)
        control.close()
        direct, relayed = ttft["direct"], ttft["via gateway"]
        print(f"\nstreaming, {args.requests} requests each (alternating), 1 in flight, ms")
        print(f"  {'time to first token':<30}{'p50':>8}{'p99':>8}")
        print(f"  {'direct to provider':<30}{ms(pct(direct, 50))}{ms(pct(direct, 99))}")
        print(f"  {'gateway+relay+daemon':<30}{ms(pct(relayed, 50))}{ms(pct(relayed, 99))}")
        added = [r - d for r, d in zip(relayed, direct, strict=True)]
        print(f"  {'added (pairwise difference)':<30}{ms(pct(added, 50))}{ms(pct(added, 99))}"
              "   (budget: p50 <= 3 ms)")
        print(f"\n  inter-chunk gap (configured {args.chunk_delay * 1000:.1f} ms)"
              f"{'p50':>8}{'p99':>8}")
        for name in ("direct", "via gateway"):
            print(f"  {name:<30}{ms(pct(gaps[name], 50))}{ms(pct(gaps[name], 99))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk-delay", type=float, default=0.01)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
