"""Real HTTP servers speaking each provider's wire format, for tests and benchmarks.

In-process (a background thread with its own event loop, free 127.0.0.1 port)::

    from tests.servers import run_ollama_server, run_openai_server
    with run_ollama_server(reply="Hi there", chunk_delay=0.05) as server:
        server.url                        # "http://127.0.0.1:PORT"
        server.configure(error="busy")    # behaviour keys: tests/servers/behaviour.py
        server.stats()                    # request_count, completed, aborts, requests
        server.reset()

As a process (e2e tests, benchmarks)::

    python -m tests.servers.ollama_server --port 0   # prints "READY http://127.0.0.1:PORT"
    ControlClient(url).configure(...) / .stats() / .reset()   # over GET/POST /__control
    with server_process("ollama") as server: ...   # the same, started for you

Fixtures for any conftest: ``from tests.servers.fixtures import ollama_server``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ControlClient", "ServerHandle", "run_ollama_server", "run_openai_server",
           "server_process"]

# Lazy, so `python -m tests.servers.ollama_server` does not import itself twice.
_HOMES = {"ControlClient": "_core", "ServerHandle": "_core",
          "run_ollama_server": "ollama_server", "run_openai_server": "openai_server",
          "server_process": "process"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"tests.servers.{_HOMES[name]}"), name)
