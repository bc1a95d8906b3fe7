"""Credentials and the typed records the gateway returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ExecutionBackend = Literal["local-model", "assistant-runtime"]
RuntimeStatus = Literal["unpaired", "reachable", "offline", "revoked"]

# OpenAI-shaped payloads stay plain dicts: the SDK passes them through untouched.
ChatCompletion = dict[str, Any]
ChatCompletionChunk = dict[str, Any]
ChatRequest = Mapping[str, Any]


@dataclass(frozen=True)
class ApiKeyCredential:
    api_key: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key}


@dataclass(frozen=True)
class OAuthCredential:
    access_token: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


Credential = ApiKeyCredential | OAuthCredential
CredentialLike = Credential | Mapping[str, str]


@dataclass(frozen=True)
class PersonalRuntime:
    lattice_id: str
    account_id: str
    display_name: str
    execution_backend: str
    status: str
    created_at: str
    updated_at: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PersonalRuntime:
        return cls(
            lattice_id=str(data["latticeId"]),
            account_id=str(data.get("accountId", "")),
            display_name=str(data.get("displayName", "")),
            execution_backend=str(data.get("executionBackend", "")),
            status=str(data.get("status", "")),
            created_at=str(data.get("createdAt", "")),
            updated_at=str(data.get("updatedAt", "")),
            raw=dict(data),
        )

    @property
    def is_reachable(self) -> bool:
        return self.status == "reachable"


@dataclass(frozen=True)
class BootstrapToken:
    lattice_id: str
    bootstrap_token: str = field(repr=False)
    expires_at: str
    command: str = field(repr=False)  # contains the token

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BootstrapToken:
        return cls(
            lattice_id=str(data["latticeId"]),
            bootstrap_token=str(data["bootstrapToken"]),
            expires_at=str(data.get("expiresAt", "")),
            command=str(data.get("command", "")),
        )
