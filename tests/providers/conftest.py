"""Fixtures: the real fake-provider servers, in-process, one per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import ServerHandle, run_ollama_server, run_openai_server


@pytest.fixture
def ollama_server() -> Iterator[ServerHandle]:
    with run_ollama_server() as server:
        yield server


@pytest.fixture
def openai_server() -> Iterator[ServerHandle]:
    with run_openai_server() as server:
        yield server
