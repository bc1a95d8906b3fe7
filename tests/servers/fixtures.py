"""Pytest fixtures for the fake providers; import them into any conftest::

    from tests.servers.fixtures import ollama_server, openai_server  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers._core import ServerHandle
from tests.servers.ollama_server import run_ollama_server
from tests.servers.openai_server import run_openai_server


@pytest.fixture
def ollama_server() -> Iterator[ServerHandle]:
    """A fake Ollama in this process (background thread), fresh for each test."""
    with run_ollama_server() as server:
        yield server


@pytest.fixture
def openai_server() -> Iterator[ServerHandle]:
    """A fake LM Studio / OpenAI-compatible server in this process, fresh for each test."""
    with run_openai_server() as server:
        yield server
