"""``ComputeClient``: list an account's personal runtimes and run chats on them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from ._closing import AsyncClosing, Closing
from ._config import resolve_base_url, resolve_credential
from ._errors import LatticeAPIError, LatticeConfigurationError
from ._http import AsyncHTTP, SyncHTTP
from ._retry import RetryPolicy
from ._streams import AsyncChatStream, ChatStream
from ._types import ChatCompletion, ChatRequest, CredentialLike, PersonalRuntime

MODEL_PREFIX = "lattice:personal:"


def model_string(runtime: PersonalRuntime | str, local_model: str | None = None) -> str:
    """``lattice:personal:<latticeId>[/<local model>]`` for a runtime or its id."""
    lattice_id = runtime.lattice_id if isinstance(runtime, PersonalRuntime) else runtime
    if not isinstance(lattice_id, str) or not lattice_id or "/" in lattice_id:
        raise LatticeConfigurationError(
            "runtime must be a PersonalRuntime or a latticeId string without '/'"
        )
    return f"{MODEL_PREFIX}{lattice_id}/{local_model}" if local_model else MODEL_PREFIX + lattice_id


def chat_body(
    runtime: PersonalRuntime | str, request: ChatRequest, model: str | None, *, stream: bool
) -> dict[str, Any]:
    if not isinstance(request, Mapping):
        raise LatticeConfigurationError("the chat request must be a mapping with 'messages'")
    body = dict(request)
    body["model"] = model_string(runtime, model)
    body["stream"] = stream
    return body


def runtimes_from(payload: Any) -> list[PersonalRuntime]:
    if not isinstance(payload, dict) or not isinstance(payload.get("runtimes"), list):
        raise LatticeAPIError("the gateway's runtime list is missing 'runtimes'", status=200,
                              body=payload)
    return [PersonalRuntime.from_json(item) for item in payload["runtimes"]]


def models_from(payload: Any) -> list[dict[str, Any]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise LatticeAPIError("the gateway's model list is missing 'data'", status=200,
                              body=payload)
    return list(payload["data"])


class ComputeClient(Closing):
    """Synchronous client for app backends. Use as a context manager or call ``close()``."""

    def __init__(
        self,
        credential: CredentialLike | None = None,
        *,
        base_url: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._http = SyncHTTP(
            resolve_base_url(base_url), resolve_credential(credential), timeout=timeout,
            retry=RetryPolicy(max_retries=max_retries), http_client=http_client,
        )

    @property
    def base_url(self) -> str:
        return self._http.base_url

    def list_personal_runtimes(self) -> list[PersonalRuntime]:
        return runtimes_from(self._http.request("GET", "/v1/personal-runtimes"))

    def list_reachable_personal_runtimes(self) -> list[PersonalRuntime]:
        return [rt for rt in self.list_personal_runtimes() if rt.is_reachable]

    def chat_complete_for_personal_runtime(
        self, runtime: PersonalRuntime | str, request: ChatRequest, model: str | None = None
    ) -> ChatCompletion:
        """Run a chat on the runtime; ``model`` names a local model (default: the runtime's)."""
        body = chat_body(runtime, request, model, stream=False)
        completion: ChatCompletion = self._http.request("POST", "/v1/chat/completions", body)
        return completion

    def stream_chat_for_personal_runtime(
        self, runtime: PersonalRuntime | str, request: ChatRequest, model: str | None = None
    ) -> ChatStream:
        """Start a streaming chat; errors before the first byte raise here, later ones while
        iterating."""
        body = chat_body(runtime, request, model, stream=True)
        return ChatStream(self._http.stream("POST", "/v1/chat/completions", body),
                          self._http.base_url)

    def models(self) -> list[dict[str, Any]]:
        """OpenAI model objects for the caller's reachable runtimes."""
        return models_from(self._http.request("GET", "/v1/models"))

    def close(self) -> None:
        self._http.close()


class AsyncComputeClient(AsyncClosing):
    """The asyncio twin of :class:`ComputeClient`."""

    def __init__(
        self,
        credential: CredentialLike | None = None,
        *,
        base_url: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._http = AsyncHTTP(
            resolve_base_url(base_url), resolve_credential(credential), timeout=timeout,
            retry=RetryPolicy(max_retries=max_retries), http_client=http_client,
        )

    @property
    def base_url(self) -> str:
        return self._http.base_url

    async def list_personal_runtimes(self) -> list[PersonalRuntime]:
        return runtimes_from(await self._http.request("GET", "/v1/personal-runtimes"))

    async def list_reachable_personal_runtimes(self) -> list[PersonalRuntime]:
        return [rt for rt in await self.list_personal_runtimes() if rt.is_reachable]

    async def chat_complete_for_personal_runtime(
        self, runtime: PersonalRuntime | str, request: ChatRequest, model: str | None = None
    ) -> ChatCompletion:
        body = chat_body(runtime, request, model, stream=False)
        completion: ChatCompletion = await self._http.request("POST", "/v1/chat/completions",
                                                              body)
        return completion

    async def stream_chat_for_personal_runtime(
        self, runtime: PersonalRuntime | str, request: ChatRequest, model: str | None = None
    ) -> AsyncChatStream:
        body = chat_body(runtime, request, model, stream=True)
        return AsyncChatStream(await self._http.stream("POST", "/v1/chat/completions", body),
                               self._http.base_url)

    async def models(self) -> list[dict[str, Any]]:
        return models_from(await self._http.request("GET", "/v1/models"))

    async def close(self) -> None:
        await self._http.close()
