"""An idle, connected daemon: memory, CPU and relay traffic (budget: RSS <= 30 MB,
CPU <= 0.05 %, <= 2 MB/day of traffic).

    .venv/bin/python benchmarks/idle_daemon.py [--window 120] [--poll-window 25]

Starts the test provider, a gateway process (poll window ``--poll-window`` seconds, the
production default is 25) and a paired daemon process whose relay traffic goes through a
byte-counting TCP relay in this process. After the daemon is reachable and has settled,
it samples the daemon for ``--window`` seconds with psutil: RSS/USS at the end, CPU time
used over the window, bytes both ways, extrapolated to a day. Baselines from the same
run: idle Python processes that import only asyncio, and asyncio + httpx (the floor
any httpx-based daemon starts from). Traffic counts HTTP bytes (headers + bodies), not
TCP/IP framing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relay_overhead import provider_process  # also puts the repo root on sys.path

BASELINES = {
    "python + asyncio, idle": "import asyncio; asyncio.run(asyncio.sleep(3600))",
    "python + asyncio + httpx client, idle":
        "import asyncio, httpx\n"
        "async def main():\n"
        "    async with httpx.AsyncClient():\n"
        "        await asyncio.sleep(3600)\n"
        "asyncio.run(main())",
}


@dataclass
class Counter:
    up: int = 0  # daemon -> gateway
    down: int = 0  # gateway -> daemon
    connections: int = 0


class CountingRelay:
    """A TCP forwarder on 127.0.0.1 that counts the bytes it carries; own thread."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.counter = Counter()
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counter.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(65536):
                    if up:
                        self.counter.up += len(data)
                    else:
                        self.counter.down += len(data)
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))


def cpu_seconds(process: object) -> float:
    times = process.cpu_times()  # type: ignore[attr-defined]
    return float(times.user + times.system)


def measure_baseline(code: str, settle: float) -> tuple[float, float]:
    import psutil

    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(settle)
        info = psutil.Process(process.pid).memory_full_info()
        return info.rss / 1e6, info.uss / 1e6
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=120.0, help="seconds to sample")
    parser.add_argument("--poll-window", type=float, default=25.0,
                        help="the gateway's poll window (production default 25)")
    parser.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args()

    import psutil

    home = tempfile.mkdtemp(prefix="lh-idle-", dir="/tmp")
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
                                                  poll_window_seconds=args.poll_window))
        relay = CountingRelay(gateway.port)
        runtime = pair_runtime(gateway, paths, name="idle benchmark")
        counted = replace(runtime.relay, relay_url=f"http://127.0.0.1:{relay.port}")
        write_config(paths, relay=counted, provider_kind="openai", provider_url=provider_url)
        daemon = stack.enter_context(DaemonProcess(paths).start())
        wait_until(lambda: runtime_status(gateway, runtime) == "reachable", timeout=10)
        time.sleep(args.settle)  # a benchmark window, not test synchronisation
        process = psutil.Process(daemon.process.pid)
        up0, down0 = relay.counter.up, relay.counter.down
        cpu0, t0 = cpu_seconds(process), time.monotonic()
        time.sleep(args.window)
        cpu1, t1 = cpu_seconds(process), time.monotonic()
        up, down = relay.counter.up - up0, relay.counter.down - down0
        info = process.memory_full_info()
        threads = process.num_threads()
        reachable = runtime_status(gateway, runtime)

    elapsed = t1 - t0
    per_day = (up + down) * 86400 / elapsed
    cpu_pct = 100 * (cpu1 - cpu0) / elapsed
    print(f"\nidle connected daemon, {elapsed:.0f} s window, gateway poll window "
          f"{args.poll_window:g} s")
    print(f"  {'RSS':<40}{info.rss / 1e6:8.1f} MB   (budget 30 MB)")
    print(f"  {'USS (memory only this process holds)':<40}{info.uss / 1e6:8.1f} MB")
    print(f"  {'threads':<40}{threads:8d}")
    print(f"  {'CPU over the window':<40}{cpu_pct:8.3f} %    (budget 0.05 %; "
          f"{(cpu1 - cpu0) * 1000:.0f} ms CPU)")
    print(f"  {'relay traffic up / down':<40}{up:8d} / {down} bytes")
    print(f"  {'extrapolated per day':<40}{per_day / 1e6:8.2f} MB   (budget 2 MB/day)")
    print(f"  {'runtime status at the end':<40}{reachable:>8}")
    print("\nbaselines (same machine, same run)")
    for label, code in BASELINES.items():
        rss, uss = measure_baseline(code, settle=1.5)
        print(f"  {label:<40}{rss:8.1f} MB RSS, {uss:.1f} MB USS")


if __name__ == "__main__":
    main()
