"""One httpx client per SDK client: auth headers, error mapping and the retry policy."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import httpx

from ._errors import (
    LatticeAPIError,
    LatticeConnectionError,
    LatticeTimeoutError,
    error_from_body,
    parse_retry_after,
)
from ._retry import RetryPolicy
from ._types import Credential

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


def _user_agent() -> str:
    try:
        version = metadata.version("lattice-runtimes")
    except metadata.PackageNotFoundError:
        version = "0"
    return f"lattice-client-python/{version}"


def _headers(credential: Credential) -> dict[str, str]:
    return {"Accept": "application/json", "User-Agent": _user_agent(), **credential.headers()}


def _decode_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return response.text[:500]


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        return code if isinstance(code, str) else None
    return None


def _api_error(response: httpx.Response, body: Any) -> LatticeAPIError:
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return error_from_body(body, response.status_code, retry_after)


def _success_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        raise LatticeAPIError(
            "the gateway answered with a body that is not JSON",
            status=response.status_code, body=response.text[:500],
        ) from None


def connection_error(exc: httpx.HTTPError, base_url: str, *,
                     mid_stream: bool = False) -> LatticeConnectionError:
    """The SDK's error for a transport failure, before the answer or inside a stream."""
    if isinstance(exc, httpx.TimeoutException):
        what = "stopped sending the stream" if mid_stream else "did not answer"
        return LatticeTimeoutError(f"the gateway at {base_url} {what} in time: {exc!r}")
    if mid_stream:
        return LatticeConnectionError(
            f"the stream from the gateway at {base_url} broke off: {exc!r}")
    return LatticeConnectionError(f"could not reach the gateway at {base_url}: {exc!r}")


class SyncHTTP:
    def __init__(
        self,
        base_url: str,
        credential: Credential,
        *,
        timeout: float | httpx.Timeout | None = None,
        retry: RetryPolicy,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url
        self.retry = retry
        self._owns_client = http_client is None
        self._client = http_client or httpx.Client(
            timeout=timeout if timeout is not None else DEFAULT_TIMEOUT
        )
        self._headers = _headers(credential)
        self.sleep = time.sleep  # replaced in tests

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = self._send(method, path, body, stream=False)
        return _success_json(response)

    def stream(self, method: str, path: str, body: Mapping[str, Any]) -> httpx.Response:
        """An open streaming response whose status is 200; the caller closes it."""
        return self._send(method, path, body, stream=True)

    def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None, *, stream: bool
    ) -> httpx.Response:
        request = self._client.build_request(
            method, self.base_url + path, headers=self._headers,
            content=json.dumps(body).encode() if body is not None else None,
        )
        if body is not None:
            request.headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            try:
                response = self._client.send(request, stream=stream)
            except httpx.HTTPError as exc:
                delay = self.retry.delay_after_exception(exc, method, attempt)
                if delay is None:
                    raise connection_error(exc, self.base_url) from exc
                attempt += 1
                self.sleep(delay)
                continue
            if response.is_success:
                return response
            if stream:
                response.read()
                response.close()
            error_body = _decode_json(response)
            delay = self.retry.delay_after_response(
                response.status_code, response.headers, _error_code(error_body), attempt
            )
            if delay is None:
                raise _api_error(response, error_body)
            attempt += 1
            self.sleep(delay)


class AsyncHTTP:
    def __init__(
        self,
        base_url: str,
        credential: Credential,
        *,
        timeout: float | httpx.Timeout | None = None,
        retry: RetryPolicy,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url
        self.retry = retry
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(
            timeout=timeout if timeout is not None else DEFAULT_TIMEOUT
        )
        self._headers = _headers(credential)
        self.sleep = asyncio.sleep  # replaced in tests

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = await self._send(method, path, body, stream=False)
        return _success_json(response)

    async def stream(self, method: str, path: str, body: Mapping[str, Any]) -> httpx.Response:
        return await self._send(method, path, body, stream=True)

    async def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None, *, stream: bool
    ) -> httpx.Response:
        request = self._client.build_request(
            method, self.base_url + path, headers=self._headers,
            content=json.dumps(body).encode() if body is not None else None,
        )
        if body is not None:
            request.headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            try:
                response = await self._client.send(request, stream=stream)
            except httpx.HTTPError as exc:
                delay = self.retry.delay_after_exception(exc, method, attempt)
                if delay is None:
                    raise connection_error(exc, self.base_url) from exc
                attempt += 1
                await self.sleep(delay)
                continue
            if response.is_success:
                return response
            if stream:
                await response.aread()
                await response.aclose()
            error_body = _decode_json(response)
            delay = self.retry.delay_after_response(
                response.status_code, response.headers, _error_code(error_body), attempt
            )
            if delay is None:
                raise _api_error(response, error_body)
            attempt += 1
            await self.sleep(delay)
