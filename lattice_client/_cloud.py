"""``create_lattice_cloud_client``: manage personal runtimes and mint bootstrap tokens."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from ._closing import AsyncClosing, Closing
from ._config import resolve_base_url, resolve_credential
from ._errors import LatticeAPIError
from ._http import AsyncHTTP, SyncHTTP
from ._retry import RetryPolicy
from ._types import BootstrapToken, CredentialLike, PersonalRuntime


def _runtime_path(lattice_id: PersonalRuntime | str) -> str:
    value = lattice_id.lattice_id if isinstance(lattice_id, PersonalRuntime) else lattice_id
    return "/v1/personal-runtimes/" + quote(str(value), safe="")


def _runtime_from(payload: Any) -> PersonalRuntime:
    if not isinstance(payload, dict) or not isinstance(payload.get("runtime"), dict):
        raise LatticeAPIError("the gateway's answer is missing 'runtime'", status=200,
                              body=payload)
    return PersonalRuntime.from_json(payload["runtime"])


def _runtimes_from(payload: Any) -> list[PersonalRuntime]:
    if not isinstance(payload, dict) or not isinstance(payload.get("runtimes"), list):
        raise LatticeAPIError("the gateway's answer is missing 'runtimes'", status=200,
                              body=payload)
    return [PersonalRuntime.from_json(item) for item in payload["runtimes"]]


def _bootstrap_from(payload: Any) -> BootstrapToken:
    if not isinstance(payload, dict) or "bootstrapToken" not in payload:
        raise LatticeAPIError("the gateway's answer is missing 'bootstrapToken'", status=200,
                              body=None)  # never keep a body that might hold a token
    return BootstrapToken.from_json(payload)


def _create_body(display_name: str, execution_backend: str) -> dict[str, Any]:
    return {"displayName": display_name, "executionBackend": execution_backend}


def _token_body(ttl_seconds: int | None) -> dict[str, Any]:
    return {} if ttl_seconds is None else {"ttlSeconds": ttl_seconds}


class PersonalRuntimes:
    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def create(
        self, *, display_name: str, execution_backend: str = "local-model"
    ) -> PersonalRuntime:
        body = _create_body(display_name, execution_backend)
        return _runtime_from(self._http.request("POST", "/v1/personal-runtimes", body))

    def list(self) -> list[PersonalRuntime]:
        return _runtimes_from(self._http.request("GET", "/v1/personal-runtimes"))

    def get(self, lattice_id: PersonalRuntime | str) -> PersonalRuntime:
        return _runtime_from(self._http.request("GET", _runtime_path(lattice_id)))

    def revoke(self, lattice_id: PersonalRuntime | str) -> PersonalRuntime:
        return _runtime_from(self._http.request("DELETE", _runtime_path(lattice_id)))

    def create_bootstrap_token(
        self, lattice_id: PersonalRuntime | str, *, ttl_seconds: int | None = None
    ) -> BootstrapToken:
        path = _runtime_path(lattice_id) + "/bootstrap-tokens"
        return _bootstrap_from(self._http.request("POST", path, _token_body(ttl_seconds)))


class AsyncPersonalRuntimes:
    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def create(
        self, *, display_name: str, execution_backend: str = "local-model"
    ) -> PersonalRuntime:
        body = _create_body(display_name, execution_backend)
        return _runtime_from(await self._http.request("POST", "/v1/personal-runtimes", body))

    async def list(self) -> list[PersonalRuntime]:
        return _runtimes_from(await self._http.request("GET", "/v1/personal-runtimes"))

    async def get(self, lattice_id: PersonalRuntime | str) -> PersonalRuntime:
        return _runtime_from(await self._http.request("GET", _runtime_path(lattice_id)))

    async def revoke(self, lattice_id: PersonalRuntime | str) -> PersonalRuntime:
        return _runtime_from(await self._http.request("DELETE", _runtime_path(lattice_id)))

    async def create_bootstrap_token(
        self, lattice_id: PersonalRuntime | str, *, ttl_seconds: int | None = None
    ) -> BootstrapToken:
        path = _runtime_path(lattice_id) + "/bootstrap-tokens"
        return _bootstrap_from(await self._http.request("POST", path, _token_body(ttl_seconds)))


class LatticeCloudClient(Closing):
    """Management client: ``client.personal_runtimes.create / list / get / revoke /
    create_bootstrap_token``."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        credential: CredentialLike | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._http = SyncHTTP(
            resolve_base_url(base_url), resolve_credential(credential, api_key),
            timeout=timeout, retry=RetryPolicy(max_retries=max_retries), http_client=http_client,
        )
        self.personal_runtimes = PersonalRuntimes(self._http)

    @property
    def base_url(self) -> str:
        return self._http.base_url

    def close(self) -> None:
        self._http.close()


class AsyncLatticeCloudClient(AsyncClosing):
    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        credential: CredentialLike | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._http = AsyncHTTP(
            resolve_base_url(base_url), resolve_credential(credential, api_key),
            timeout=timeout, retry=RetryPolicy(max_retries=max_retries), http_client=http_client,
        )
        self.personal_runtimes = AsyncPersonalRuntimes(self._http)

    @property
    def base_url(self) -> str:
        return self._http.base_url

    async def close(self) -> None:
        await self._http.close()


def create_lattice_cloud_client(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    credential: CredentialLike | None = None,
    timeout: float | httpx.Timeout | None = None,
    max_retries: int = 2,
) -> LatticeCloudClient:
    """The documented factory; ``base_url`` / ``api_key`` default to ``LATTICE_GATEWAY_URL`` /
    ``LOVELACE_API_KEY``."""
    return LatticeCloudClient(base_url=base_url, api_key=api_key, credential=credential,
                              timeout=timeout, max_retries=max_retries)


def create_async_lattice_cloud_client(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    credential: CredentialLike | None = None,
    timeout: float | httpx.Timeout | None = None,
    max_retries: int = 2,
) -> AsyncLatticeCloudClient:
    return AsyncLatticeCloudClient(base_url=base_url, api_key=api_key, credential=credential,
                                   timeout=timeout, max_retries=max_retries)
