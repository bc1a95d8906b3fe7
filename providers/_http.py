"""HTTP plumbing shared by the adapters: one client, deadlines by silence, error mapping.

Deadlines are asyncio timeouts around each wait (for the response headers, for the next
bytes of the body), never an httpx read timeout: a model that is loading holds the
headers back (Ollama sends them only after loading), so the first wait gets the generous
``first_token_timeout``; after the first bytes, each wait gets ``idle_timeout``. A
generation that keeps producing is therefore never cut off, however long it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx

from providers import _json
from providers.base import ProviderError, ProviderErrorReason
from providers.chunks import aggregate, wants_usage
from providers.timeouts import within

_MAX_ERROR_TEXT = 500

def reason_for_status(status: int) -> ProviderErrorReason:
    if status == 404:
        return "model_not_found"
    if status in (429, 503):
        return "busy"
    if 400 <= status < 500:
        return "bad_request"
    return "internal"


def error_text_from_body(body: bytes) -> str:
    """The provider's own message from any error body shape we know.

    Ollama ``{"error": "msg"}``; OpenAI envelope ``{"error": {"message": ...}}``; LM Studio
    mixes both; anything else is returned as (trimmed) text.
    """
    try:
        data = _json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:_MAX_ERROR_TEXT] or "(empty response body)"
    return error_text_from_value(data) or body.decode("utf-8", "replace")[:_MAX_ERROR_TEXT]


def error_text_from_value(data: Any) -> str:
    if isinstance(data, dict):
        err = data.get("error", data.get("message"))
        if isinstance(err, dict):
            message = err.get("message") or err.get("code") or err.get("type")
            return str(message) if message else "an error occurred"
        if err:
            return str(err)
    return ""


class HttpProvider:
    """Base of the HTTP adapters: owns the httpx client and the deadline logic."""

    kind: str = ""
    product_name: str = ""  # "Ollama", used in display_name
    start_hint: str = ""  # how to start the provider, for "unreachable" messages

    def __init__(
        self,
        base_url: str,
        *,
        first_token_timeout: float = 300.0,
        idle_timeout: float = 120.0,
        probe_timeout: float = 3.0,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.display_name = f"{self.product_name} at {self.base_url}"
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.probe_timeout = probe_timeout
        # trust_env=False: the provider is local; a proxy from the environment must never
        # see prompts. No read timeout: deadlines are enforced by silence (module doc).
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            trust_env=False,
            transport=transport,
            headers=headers,
            timeout=httpx.Timeout(None, connect=10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        # Streamed underneath so deadlines are about silence and cancel closes the socket.
        async with aclosing(self._chunks(request, include_usage=True)) as chunks:
            return await aggregate(chunks)

    def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._chunks(request, include_usage=wants_usage(request))

    def _chunks(self, request: dict[str, Any], *, include_usage: bool
                ) -> AsyncGenerator[dict[str, Any], None]:
        """OpenAI chunks in contract order; each adapter speaks its own wire format."""
        raise NotImplementedError

    async def aclose(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display_name}>"

    # -- errors ---------------------------------------------------------------------------

    def error(self, reason: ProviderErrorReason, text: str, status: int | None = None
              ) -> ProviderError:
        return ProviderError(reason, f"{self.display_name}: {text}", status)

    def _transport_error(self, exc: httpx.TransportError, started: bool) -> ProviderError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return self.error(
                "unreachable",
                f"not running (could not connect: {_describe(exc)}). {self.start_hint}")
        if started:
            return self.error("stream_error",
                              f"connection lost mid-response ({_describe(exc)})")
        return self.error("internal", f"connection failed ({_describe(exc)})")

    def _timeout_error(self, first: bool) -> ProviderError:
        if first:
            return self.error(
                "timeout",
                f"no response within {self.first_token_timeout:g} s while waiting for the "
                "model to load and produce its first token (first-token timeout); the model "
                "may still be loading - retry, or raise the first-token timeout",
            )
        return self.error(
            "timeout",
            f"the model stopped producing output for {self.idle_timeout:g} s "
            "mid-generation (idle timeout)",
        )

    # -- requests -------------------------------------------------------------------------

    async def get_json(self, path: str, timeout: float) -> dict[str, Any]:
        """A short control-plane GET (models, version) with one overall deadline."""
        return await self._exchange_json("GET", path, None, timeout,
                                         f"GET {path} got no answer within {timeout:g} s")

    async def post_json(self, path: str, body: bytes) -> dict[str, Any]:
        """POST ``body`` and return the JSON answer, which the server sends whole.

        Such an answer is silent until the generation ends, so there is no silence
        between outputs to time: the first-token timeout bounds the whole wait (loading
        plus the generation). Cancelling closes the connection.
        """
        timeout = self.first_token_timeout
        return await self._exchange_json(
            "POST", path, body, timeout,
            f"no answer within {timeout:g} s (first-token timeout; a non-streaming answer "
            "arrives whole, after loading and the entire generation) - stream the request, "
            "or raise the first-token timeout")

    async def _exchange_json(self, method: str, path: str, body: bytes | None,
                             timeout: float, timeout_text: str) -> dict[str, Any]:
        headers = {"content-type": "application/json"} if body is not None else None
        try:
            response = await within(
                self._client.request(method, path, content=body, headers=headers), timeout)
        except asyncio.TimeoutError:
            raise self.error("timeout", timeout_text) from None
        except httpx.TransportError as exc:
            raise self._transport_error(exc, started=False) from None
        if response.status_code >= 400:
            raise self.error(reason_for_status(response.status_code),
                             error_text_from_body(response.content), response.status_code)
        try:
            data = _json.loads(response.content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise self.error("internal", f"{method} {path} did not return a JSON object")
        return data

    async def stream_lines(self, path: str, body: bytes) -> AsyncGenerator[bytes, None]:
        """POST ``body`` and yield the non-empty lines of the response as they arrive.

        Raises ProviderError for error statuses (with the provider's message), timeouts by
        silence, and connection failures. Closing or cancelling the iterator closes the
        response, so the provider sees the client go away and stops generating.
        """
        started_at = time.monotonic()
        request = self._client.build_request(
            "POST", path, content=body, headers={"content-type": "application/json"})
        try:
            response = await within(self._client.send(request, stream=True),
                                    self.first_token_timeout)
        except asyncio.TimeoutError:
            raise self._timeout_error(first=True) from None
        except httpx.TransportError as exc:
            raise self._transport_error(exc, started=False) from None
        try:
            if response.status_code >= 400:
                raise await self._status_error(response, started_at)
            async for line in self._lines(response, started_at):
                yield line
        finally:
            await response.aclose()

    async def _status_error(self, response: httpx.Response, started_at: float
                            ) -> ProviderError:
        remaining = max(0.1, self.first_token_timeout - (time.monotonic() - started_at))
        try:
            body = await within(response.aread(), remaining)
        except (asyncio.TimeoutError, httpx.TransportError):
            body = b""
        status = response.status_code
        return self.error(reason_for_status(status), error_text_from_body(body), status)

    async def _lines(self, response: httpx.Response, started_at: float
                     ) -> AsyncIterator[bytes]:
        chunks = response.aiter_bytes().__aiter__()
        timeout = max(0.001, self.first_token_timeout - (time.monotonic() - started_at))
        first = True
        pending = b""
        while True:
            try:
                data = await within(chunks.__anext__(), timeout)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise self._timeout_error(first) from None
            except httpx.TransportError as exc:
                raise self._transport_error(exc, started=True) from None
            if first:
                first = False
                timeout = self.idle_timeout
            if pending:
                data = pending + data
            lines = data.split(b"\n")
            pending = lines.pop()
            for line in lines:
                if line.strip():
                    yield line
        if pending.strip():
            yield pending


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."
