"""The README's main job, end to end on this machine (run through ``scripts/quickstart``).

A local gateway (SQLite under ./.quickstart/), an API key, a runtime and its bootstrap
token over HTTP, the gateway's ``command`` string run verbatim, ``lattice-ctl daemon
start``, then the documented chat request with the official ``openai`` client, answered
by this machine's Ollama or LM Studio (or, with ``--demo``, the Ollama wire-format test
server). Everything is stopped at the end; nothing touches a real install (LATTICE_HOME
points into the quickstart directory).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCOPES = ("lattice:compute:inference", "lattice:compute:personal_runtime:manage")
NO_PROVIDER_HELP = """\
No local model server is running. Start one of:
  * Ollama:    ollama serve            (then: ollama pull llama3.2)
  * LM Studio: load a model, then start its server (Developer tab, or: lms server start)
or point the quickstart at a server you run:
  scripts/quickstart --provider-url http://127.0.0.1:8000 --provider openai
or see the whole path work without a model:
  scripts/quickstart --demo"""


class QuickstartError(Exception):
    """A step failed; the message says which and what to do."""


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise QuickstartError(f"timed out after {timeout:g} s waiting for {what}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true",
                        help="serve with the Ollama wire-format test server (no model needed)")
    parser.add_argument("--provider", choices=("ollama", "lmstudio", "openai"),
                        help="the local model server's kind (default: detect)")
    parser.add_argument("--provider-url", help="its base URL (default: detect on the usual ports)")
    parser.add_argument("--model", help="local model to use (default: the provider's first)")
    parser.add_argument("--prompt", default="Say hello in five words.",
                        help="what to ask the model")
    parser.add_argument("--dir", type=Path, default=REPO / ".quickstart",
                        help="where the gateway database, LATTICE_HOME and logs go")
    return parser.parse_args(argv)


# -- the provider ------------------------------------------------------------------------
def start_demo_provider(stack: ExitStack) -> tuple[str, str]:
    process = subprocess.Popen([sys.executable, "-m", "tests.servers.ollama_server",
                                "--port", "0"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    stack.callback(_stop, process)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 20)  # never wait forever
    line = process.stdout.readline() if ready else ""
    if not line.startswith("READY "):
        raise QuickstartError("the demo provider (tests/servers/ollama_server.py) did not start")
    url = line.split()[1]
    say(f"Demo provider (Ollama wire format) at {url}")
    return "ollama", url


def find_provider(kind: str | None, url: str | None) -> tuple[str, str, list[str]]:
    from providers import DEFAULT_URLS, detect_providers

    if url:
        kinds = [kind] if kind else ["ollama", "openai"]
        for candidate in kinds:
            health = detect_providers(timeout=2.0, urls={candidate: url})[0]
            if health.ok:
                return candidate, url, health.models
        raise QuickstartError(f"nothing answered at {url} "
                              f"({health.detail}).\n\n{NO_PROVIDER_HELP}")
    targets = {k: v for k, v in DEFAULT_URLS.items() if kind in (None, k)}
    found = [h for h in detect_providers(timeout=1.0, urls=targets) if h.ok]
    if not found:
        raise QuickstartError(NO_PROVIDER_HELP)
    health = found[0]  # Ollama first when both run
    return health.kind, health.url, health.models


# -- processes ---------------------------------------------------------------------------
def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_gateway(stack: ExitStack, workdir: Path, env: dict[str, str]) -> tuple[str, Path]:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database = workdir / "gateway.db"
    log = open(workdir / "gateway.log", "ab")  # noqa: SIM115 - lives as long as the gateway
    stack.callback(log.close)
    process = subprocess.Popen(
        [str(BIN / "lattice-gateway"), "serve", "--host", "127.0.0.1", "--port", str(port),
         "--database", str(database), "--public-url", url, "--shutdown-timeout", "1"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    stack.callback(_stop, process)

    def healthy() -> bool:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited; see {workdir / 'gateway.log'}")
        return httpx.get(url + "/healthz", timeout=1.0).status_code == 200

    wait_for(healthy, 30, "the gateway to start")
    say(f"Gateway at {url} (SQLite: {database})")
    return url, database


def run(argv: list[str], env: dict[str, str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120)
    if done.returncode != 0:
        raise QuickstartError(f"{what} failed:\n{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))  # tests.servers for --demo
    workdir: Path = args.dir.absolute()
    home = workdir / "home"
    shutil.rmtree(home, ignore_errors=True)  # a fresh machine every run
    (workdir / "gateway.db").unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["LATTICE_HOME"] = str(home)  # never touches a real install
    env.pop("LATTICE_BOOTSTRAP_TOKEN", None)
    env.setdefault("NO_PROXY", "127.0.0.1,localhost")
    if len(str(home / "run" / "daemon.sock")) > 100:  # AF_UNIX path limit
        env["LATTICE_SOCKET"] = str(Path(tempfile.mkdtemp(prefix="lq-")) / "daemon.sock")
    else:
        env.pop("LATTICE_SOCKET", None)

    with ExitStack() as stack:
        try:
            if args.demo:
                kind, provider_url = start_demo_provider(stack)
                models: list[str] = []
            else:
                kind, provider_url, models = find_provider(args.provider, args.provider_url)
                if not models:
                    raise QuickstartError(
                        f"{kind} at {provider_url} has no models. Pull one first, e.g. "
                        "`ollama pull llama3.2` (or load one in LM Studio).")
                say(f"Provider: {kind} at {provider_url}, models: {', '.join(models)}")
            return serve_one_request(stack, args, env, workdir, kind, provider_url, models)
        except QuickstartError as exc:
            print(f"\nquickstart: {exc}", file=sys.stderr)
            return 1


def serve_one_request(stack: ExitStack, args: argparse.Namespace, env: dict[str, str],
                      workdir: Path, kind: str, provider_url: str, models: list[str]) -> int:
    import httpx
    from openai import OpenAI

    gateway_url, database = start_gateway(stack, workdir, env)
    key = json.loads(run([str(BIN / "lattice-gateway"), "keys", "create", "--account",
                          "quickstart", "--scope", SCOPES[0], "--scope", SCOPES[1],
                          "--database", str(database), "--json"], env,
                         "lattice-gateway keys create"))["apiKey"]
    say("API key created (both scopes)")
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.post(f"{gateway_url}/v1/personal-runtimes", headers=headers,
                          json={"displayName": "Quickstart machine",
                                "executionBackend": "local-model"}, timeout=10)
    response.raise_for_status()
    lattice_id = response.json()["runtime"]["latticeId"]
    response = httpx.post(f"{gateway_url}/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                          headers=headers, json={}, timeout=10)
    response.raise_for_status()
    command = response.json()["command"]
    say(f"Runtime {lattice_id} created; running its pairing command")

    # The provider goes into the config first; `relay connect` keeps a configured provider.
    write_provider(env, kind, provider_url, args.model or (models[0] if models else None))
    done = subprocess.run(command, shell=True, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise QuickstartError(f"the pairing command failed:\n{done.stderr.strip()}")
    print(done.stdout.strip(), file=sys.stderr)

    # Registered first: an interrupted start must not leave a daemon behind.
    stack.callback(subprocess.run, ["lattice-ctl", "daemon", "stop"], env=env,
                   capture_output=True, timeout=60)
    run(["lattice-ctl", "daemon", "start"], env, "lattice-ctl daemon start")
    say("Daemon started; waiting for the runtime to be reachable")

    def reachable() -> bool:
        answer = httpx.get(f"{gateway_url}/v1/personal-runtimes/{lattice_id}",
                           headers=headers, timeout=5)
        return answer.json()["runtime"]["status"] == "reachable"

    wait_for(reachable, 30, "the runtime to become reachable")

    client = OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=300)
    say(f"Asking lattice:personal:{lattice_id}: {args.prompt!r}")
    started = time.perf_counter()
    try:
        completion = client.chat.completions.create(
            model=f"lattice:personal:{lattice_id}",
            messages=[{"role": "user", "content": args.prompt}])
    except Exception as exc:  # the openai client's errors carry our envelope's message
        raise QuickstartError(f"the chat request failed: {exc}") from None
    took = time.perf_counter() - started
    print(completion.choices[0].message.content)
    say(f"Answered by {kind} at {provider_url} through the relay in {took * 1000:.0f} ms "
        f"(model {completion.model})")
    return 0


def write_provider(env: dict[str, str], kind: str, url: str, model: str | None) -> None:
    os.environ["LATTICE_HOME"] = env["LATTICE_HOME"]
    from lattice_daemon.config import DaemonConfig, ProviderConfig, save_config
    from lattice_daemon.paths import get_paths

    save_config(get_paths(), DaemonConfig(provider=ProviderConfig(kind=kind, url=url,
                                                                  default_model=model)))


if __name__ == "__main__":
    sys.exit(main())
