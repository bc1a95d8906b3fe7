"""`lattice-ctl` as a user runs it: `--version`, `ping`, `status`, and `relay connect`
until the runtime is reachable (budget: --version <= 100 ms, ping <= 150 ms, relay
connect -> reachable <= 1 s with the daemon running).

    .venv/bin/python benchmarks/ctl_latency.py [--runs 30] [--connects 5]

Each figure is a whole command, process start included, timed from this process. The
baseline, measured in the same run, is the same interpreter starting and doing nothing
(``python -c pass``): what any Python CLI pays before its first line runs.

Two installations are timed: this dev virtualenv (an editable install, whose import hook
costs every process ~25 ms at start) and a regular install made for the run in a temporary
virtualenv (``pip install '.[daemon]'``, what install.sh does; ~20 s, from the pip cache).

`relay connect` is timed on a fresh LATTICE_HOME with its daemon already running
(unpaired), against a real gateway process and the Ollama test server: the command
string the gateway mints, run verbatim, until it returns "Connected"; the gateway is
then asked whether the runtime is reachable (it must be, or the run fails).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGETS_MS = {"lattice-ctl --version": 100, "lattice-ctl ping": 150,
              "relay connect -> reachable": 1000}


def timed(command: Callable[[], subprocess.CompletedProcess[str]], runs: int) -> list[float]:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        done = command()
        timings.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"{done.args} exited {done.returncode}: {done.stderr[-500:]}")
    return timings


def line(name: str, timings: list[float]) -> str:
    ordered = sorted(timings)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    budget = BUDGETS_MS.get(name)
    verdict = ""
    if budget is not None:
        median = statistics.median(ordered) * 1e3
        verdict = f"  budget {budget} ms: {'met' if median <= budget else 'MISSED'}"
    return (f"  {name:<28} median {statistics.median(ordered) * 1e3:7.1f} ms   "
            f"p90 {p90 * 1e3:7.1f} ms   min {ordered[0] * 1e3:7.1f} ms  "
            f"({len(ordered)} runs){verdict}")


def regular_install(where: Path) -> Path:
    """``pip install '.[daemon]'`` into a new virtualenv; its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", f"{ROOT}[daemon]"], check=True)
    return where / "bin"


def measure(bin_dir: Path, runs: int, connects: int) -> dict[str, list[float]]:
    from tests.e2e import harness
    from tests.support.gateway import run_gateway

    ctl = str(bin_dir / "lattice-ctl")
    python = [str(bin_dir / "python"), "-c", "pass"]
    results = {"python -c pass (baseline)": timed(
        lambda: subprocess.run(python, capture_output=True, text=True), runs)}
    base = Path(tempfile.mkdtemp(prefix="ctl-latency-"))
    homes: list[Path] = []
    try:
        with harness.provider_process("ollama") as provider, run_gateway() as gateway:
            key = gateway.create_key()
            connected = []
            for index in range(connects):
                home = base / f"home{index}"
                homes.append(home)
                harness.write_provider_config(home, provider.kind, provider.url)
                harness.start_daemon(home)
                runtime = harness.create_runtime(gateway.url, key)
                minted = harness.mint_bootstrap(gateway.url, key, runtime["latticeId"])
                argv = [ctl, *shlex.split(minted["command"])[1:]]
                started = time.perf_counter()
                done = subprocess.run(argv, capture_output=True, text=True,
                                      env=harness.ctl_env(home), stdin=subprocess.DEVNULL)
                connected.append(time.perf_counter() - started)
                if done.returncode != 0 or "Connected" not in done.stdout:
                    raise RuntimeError(f"relay connect failed: {done.stdout} {done.stderr}")
                status = harness.runtime_status(gateway.url, key, runtime["latticeId"])
                if status != "reachable":
                    raise RuntimeError(f"runtime is {status!r} after relay connect returned")

            env = harness.ctl_env(homes[-1])
            for name, argv in (("lattice-ctl --version", ["--version"]),
                               ("lattice-ctl ping", ["ping"]),
                               ("lattice-ctl status", ["status"])):
                command = [ctl, *argv]
                results[name] = timed(lambda c=command: subprocess.run(  # type: ignore[misc]
                    c, capture_output=True, text=True, env=env), runs)
            results["relay connect -> reachable"] = connected
    finally:
        for home in homes:
            harness.stop_daemon(home)
        shutil.rmtree(base, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--connects", type=int, default=5)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="ctl-install-"))
    try:
        installs = {"dev virtualenv (editable)": Path(sys.executable).parent,
                    "regular install (pip install '.[daemon]')": regular_install(scratch / "venv")}
        measured = {label: measure(bin_dir, args.runs, args.connects)
                    for label, bin_dir in installs.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"lattice-ctl, whole commands (process start included), {os.cpu_count()} cores")
    for label, results in measured.items():
        print(label)
        for name, timings in results.items():
            print(line(name, timings))


if __name__ == "__main__":
    main()
