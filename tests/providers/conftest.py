"""Fixtures: the real fake-provider servers, in-process, one per test."""

from tests.servers.fixtures import ollama_server, openai_server

__all__ = ["ollama_server", "openai_server"]
