"""Run a fake provider as a separate process (e2e tests, benchmarks)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.servers._core import ControlClient

REPO = Path(__file__).resolve().parents[2]
MODULES = {"ollama": "tests.servers.ollama_server", "lmstudio": "tests.servers.openai_server",
           "openai": "tests.servers.openai_server"}


@contextlib.contextmanager
def server_process(kind: str, port: int = 0, ready_timeout: float = 10.0
                   ) -> Iterator[ControlClient]:
    """Start ``python -m tests.servers.<module> --port N``; yield a ControlClient.

    ``client.url`` is the base URL; ``configure/stats/reset`` go over ``/__control``.
    The process is terminated (then killed) on exit.
    """
    process = subprocess.Popen([sys.executable, "-m", MODULES[kind], "--port", str(port)],
                               cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = _readline(process, ready_timeout)
        if not line.startswith("READY "):
            raise RuntimeError(f"{MODULES[kind]} did not start: {line!r}")
        client = ControlClient(line.split()[1])
        try:
            yield client
        finally:
            client.close()
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    import threading

    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0].strip() if lines else ""
