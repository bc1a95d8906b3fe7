"""The provider interface: one small async surface over every local model server.

Requests and responses are OpenAI-shaped dicts: ``chat`` takes an OpenAI chat
request whose ``model`` is the *local* model name and returns a ``chat.completion``;
``stream`` yields ``chat.completion.chunk`` dicts in OpenAI order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

ProviderErrorReason = Literal[
    "model_not_found",  # the provider does not have the requested model (404)
    "bad_request",  # the provider (or our mapping) rejected the request (400)
    "busy",  # the provider's queue is full (503, 429)
    "internal",  # the provider failed (500, OOM, runner crash, unexpected status)
    "unreachable",  # nothing listens at the URL (connection refused)
    "timeout",  # no first output within first_token_timeout, or silence past idle_timeout
    "stream_error",  # an error line/event, or the connection dropped, after streaming started
    "unsupported",  # a request feature this provider cannot honour (e.g. n > 1)
]

# Reasons after which an identical retry may succeed (drives ``x-should-retry``).
_RETRYABLE_REASONS = frozenset({"busy", "unreachable", "timeout", "stream_error", "internal"})


class ProviderError(Exception):
    """A local provider failed. ``message`` names the provider and carries its own words.

    Requests that cannot be expressed for the provider (``n > 1``, http(s) image URLs,
    malformed tool-call arguments) are raised *before* anything is sent, with reason
    ``unsupported`` or ``bad_request`` and ``status`` None. The daemon answers those with
    the contract code ``invalid_request``, a ``timeout`` with ``runtime_timeout``, and
    every other ProviderError with ``provider_error``.
    """

    def __init__(self, reason: ProviderErrorReason, message: str, status: int | None = None):
        super().__init__(message)
        self.reason: ProviderErrorReason = reason
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.reason in _RETRYABLE_REASONS

    def __repr__(self) -> str:
        return f"ProviderError(reason={self.reason!r}, status={self.status!r}, {self.message!r})"


@dataclass
class ProviderHealth:
    """The outcome of probing a provider; never raised, always returned."""

    ok: bool
    detail: str
    version: str | None = None
    models: list[str] = field(default_factory=list)
    kind: str = ""
    url: str = ""
    engine: dict[str, Any] | None = None  # the embedded engine's state (model, memory)

    def to_dict(self) -> dict[str, Any]:
        engine = {"engine": self.engine} if self.engine is not None else {}
        return {
            "kind": self.kind,
            "url": self.url,
            "ok": self.ok,
            "detail": self.detail,
            "version": self.version,
            "models": list(self.models),
            **engine,
        }


@runtime_checkable
class Provider(Protocol):
    kind: str  # "ollama" | "lmstudio" | "openai" | "embedded"
    base_url: str
    display_name: str  # "Ollama at http://localhost:11434", used in every error message

    async def models(self) -> list[str]: ...

    async def health(self) -> ProviderHealth: ...

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...
