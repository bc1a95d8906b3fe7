"""Lattice SDK for app backends: run chats on your users' own machines.

The public surface is what this module exports; the ``_``-prefixed modules are private.
"""

from ._cloud import (
    AsyncLatticeCloudClient,
    LatticeCloudClient,
    create_async_lattice_cloud_client,
    create_lattice_cloud_client,
)
from ._compute import AsyncComputeClient, ComputeClient, model_string
from ._errors import (
    BootstrapTokenExpiredError,
    BootstrapTokenUsedError,
    InsufficientScopesError,
    InvalidApiKeyError,
    InvalidBootstrapTokenError,
    InvalidRequestError,
    LatticeAPIError,
    LatticeClientError,
    LatticeConfigurationError,
    LatticeConnectionError,
    LatticeTimeoutError,
    ProviderError,
    RateLimitedError,
    RequestTooLargeError,
    RuntimeNotFoundError,
    RuntimeRevokedError,
    RuntimeTimeoutError,
    RuntimeUnreachableError,
)
from ._sse import StreamProtocolError
from ._streams import AsyncChatStream, ChatStream
from ._types import (
    ApiKeyCredential,
    BootstrapToken,
    ChatCompletion,
    ChatCompletionChunk,
    OAuthCredential,
    PersonalRuntime,
)

__all__ = [
    "ApiKeyCredential",
    "AsyncChatStream",
    "AsyncComputeClient",
    "AsyncLatticeCloudClient",
    "BootstrapToken",
    "BootstrapTokenExpiredError",
    "BootstrapTokenUsedError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatStream",
    "ComputeClient",
    "InsufficientScopesError",
    "InvalidApiKeyError",
    "InvalidBootstrapTokenError",
    "InvalidRequestError",
    "LatticeAPIError",
    "LatticeClientError",
    "LatticeCloudClient",
    "LatticeConfigurationError",
    "LatticeConnectionError",
    "LatticeTimeoutError",
    "OAuthCredential",
    "PersonalRuntime",
    "ProviderError",
    "RateLimitedError",
    "RequestTooLargeError",
    "RuntimeNotFoundError",
    "RuntimeRevokedError",
    "RuntimeTimeoutError",
    "RuntimeUnreachableError",
    "StreamProtocolError",
    "create_async_lattice_cloud_client",
    "create_lattice_cloud_client",
    "model_string",
]
