"""The wire contract shared by the gateway, the daemon and the SDKs.

Pure and synchronous; imports nothing else of Lattice's. The public surface is
re-exported here; the modules behind it are implementation detail.

Importing the package loads only its version: each name below loads its module on first
use (PEP 562). So `lattice-ctl --version` pays for no schema, enum or regex compilation,
and sealing needs PyNaCl (the daemon and gateway extras) only when it is used.
"""

from ._version import __version__

# Type checkers read these imports; at run time ``__getattr__`` does them on demand.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .errors import ErrorCode as ErrorCode
    from .errors import LatticeError as LatticeError
    from .errors import error_body as error_body
    from .messages import MAX_EVENTS_POST_BYTES as MAX_EVENTS_POST_BYTES
    from .messages import MAX_SEALED_EVENT_BYTES as MAX_SEALED_EVENT_BYTES
    from .messages import PROTOCOL_VERSION as PROTOCOL_VERSION
    from .messages import CancelNotice as CancelNotice
    from .messages import JobEnvelope as JobEnvelope
    from .messages import JobSpec as JobSpec
    from .messages import JobTiming as JobTiming
    from .messages import ProtocolError as ProtocolError
    from .messages import ReplayGuard as ReplayGuard
    from .messages import Requester as Requester
    from .messages import ResultEvent as ResultEvent
    from .messages import SealedEvent as SealedEvent
    from .messages import parse_event as parse_event
    from .models import ModelRef as ModelRef
    from .models import format_model_string as format_model_string
    from .models import parse_model_string as parse_model_string
    from .sealing import KeyPair as KeyPair
    from .sealing import Sealer as Sealer
    from .sealing import SealError as SealError
    from .sealing import decode_public_key as decode_public_key
    from .sealing import encode_public_key as encode_public_key
    from .timestamps import iso_from_ms as iso_from_ms
    from .timestamps import iso_from_seconds as iso_from_seconds
    from .tokens import TokenKind as TokenKind
    from .tokens import hash_secret as hash_secret
    from .tokens import new_access_token as new_access_token
    from .tokens import new_account_id as new_account_id
    from .tokens import new_api_key as new_api_key
    from .tokens import new_bootstrap_token as new_bootstrap_token
    from .tokens import new_daemon_token as new_daemon_token
    from .tokens import new_lattice_id as new_lattice_id
    from .tokens import token_kind as token_kind

_MODULE_OF = {
    "ErrorCode": "errors", "LatticeError": "errors", "error_body": "errors",
    "MAX_EVENTS_POST_BYTES": "messages", "MAX_SEALED_EVENT_BYTES": "messages",
    "PROTOCOL_VERSION": "messages", "CancelNotice": "messages", "JobEnvelope": "messages",
    "JobSpec": "messages", "JobTiming": "messages", "ProtocolError": "messages",
    "ReplayGuard": "messages", "Requester": "messages",
    "ResultEvent": "messages", "SealedEvent": "messages", "parse_event": "messages",
    "ModelRef": "models", "format_model_string": "models", "parse_model_string": "models",
    "KeyPair": "sealing", "Sealer": "sealing", "SealError": "sealing",
    "decode_public_key": "sealing", "encode_public_key": "sealing",
    "iso_from_ms": "timestamps", "iso_from_seconds": "timestamps",
    "TokenKind": "tokens", "hash_secret": "tokens", "new_access_token": "tokens",
    "new_account_id": "tokens",
    "new_api_key": "tokens", "new_bootstrap_token": "tokens", "new_daemon_token": "tokens",
    "new_lattice_id": "tokens", "token_kind": "tokens",
}

__all__ = ["__version__", *_MODULE_OF]


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
