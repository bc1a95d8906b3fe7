"""Where the client connects and with what: explicit arguments first, then the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ._errors import LatticeConfigurationError
from ._types import ApiKeyCredential, Credential, CredentialLike, OAuthCredential

GATEWAY_URL_ENV = "LATTICE_GATEWAY_URL"
API_KEY_ENV = "LOVELACE_API_KEY"


def resolve_base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(GATEWAY_URL_ENV, "")
    url = url.strip()
    if not url:
        raise LatticeConfigurationError(
            f"no gateway URL: pass base_url=... or set {GATEWAY_URL_ENV}"
        )
    if not url.startswith(("http://", "https://")):
        raise LatticeConfigurationError(
            f"the gateway URL must start with http:// or https:// (got {url[:80]!r})"
        )
    return url.rstrip("/")


def resolve_credential(
    credential: CredentialLike | None = None, api_key: str | None = None
) -> Credential:
    """Accept a credential object, the documented ``{"kind": ...}`` mapping or a bare key."""
    if credential is not None and api_key is not None:
        raise LatticeConfigurationError("pass either credential=... or api_key=..., not both")
    if isinstance(credential, (ApiKeyCredential, OAuthCredential)):
        resolved: Credential = credential
    elif isinstance(credential, Mapping):
        resolved = _credential_from_mapping(credential)
    elif credential is not None:
        raise LatticeConfigurationError(
            "credential must be ApiKeyCredential, OAuthCredential or "
            '{"kind": "apiKey", "apiKey": ...} / {"kind": "oauth", "accessToken": ...}'
        )
    else:
        key = api_key or os.environ.get(API_KEY_ENV, "")
        if not key.strip():
            raise LatticeConfigurationError(
                f"no credential: pass credential=... or api_key=..., or set {API_KEY_ENV}"
            )
        resolved = ApiKeyCredential(key.strip())
    secret = resolved.api_key if isinstance(resolved, ApiKeyCredential) else resolved.access_token
    if not secret or any(c.isspace() or ord(c) < 32 for c in secret):
        raise LatticeConfigurationError("the credential is empty or contains whitespace")
    return resolved


def _credential_from_mapping(data: Mapping[str, str]) -> Credential:
    kind = data.get("kind")
    if kind == "apiKey":
        key = data.get("apiKey") or data.get("api_key")
        if not key:
            raise LatticeConfigurationError('credential {"kind": "apiKey"} needs "apiKey"')
        return ApiKeyCredential(key)
    if kind == "oauth":
        token = data.get("accessToken") or data.get("access_token")
        if not token:
            raise LatticeConfigurationError('credential {"kind": "oauth"} needs "accessToken"')
        return OAuthCredential(token)
    raise LatticeConfigurationError(
        f'credential kind must be "apiKey" or "oauth" (got {str(kind)[:40]!r})'
    )
