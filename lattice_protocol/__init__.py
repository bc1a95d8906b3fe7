"""The wire contract shared by the gateway, the daemon and the SDKs.

Pure and synchronous; imports nothing else of Lattice's. The public surface is
re-exported here; the modules behind it are implementation detail.
"""

from ._version import __version__
from .errors import ErrorCode, LatticeError, error_body
from .messages import (
    MAX_EVENTS_POST_BYTES,
    MAX_SEALED_EVENT_BYTES,
    PROTOCOL_VERSION,
    CancelNotice,
    JobEnvelope,
    JobSpec,
    ProtocolError,
    ReplayGuard,
    ResultEvent,
    SealedEvent,
    parse_event,
)
from .models import ModelRef, format_model_string, parse_model_string
from .sealing import KeyPair, Sealer, SealError, decode_public_key, encode_public_key
from .timestamps import iso_from_ms
from .tokens import (
    TokenKind,
    hash_secret,
    new_access_token,
    new_api_key,
    new_bootstrap_token,
    new_daemon_token,
    new_lattice_id,
    token_kind,
    verify_secret,
)

__all__ = [
    "MAX_EVENTS_POST_BYTES",
    "MAX_SEALED_EVENT_BYTES",
    "PROTOCOL_VERSION",
    "CancelNotice",
    "ErrorCode",
    "JobEnvelope",
    "JobSpec",
    "KeyPair",
    "LatticeError",
    "ModelRef",
    "ProtocolError",
    "ReplayGuard",
    "ResultEvent",
    "SealError",
    "SealedEvent",
    "Sealer",
    "TokenKind",
    "__version__",
    "decode_public_key",
    "encode_public_key",
    "error_body",
    "format_model_string",
    "hash_secret",
    "iso_from_ms",
    "new_access_token",
    "new_api_key",
    "new_bootstrap_token",
    "new_daemon_token",
    "new_lattice_id",
    "parse_event",
    "parse_model_string",
    "token_kind",
    "verify_secret",
]
