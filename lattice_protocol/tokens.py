"""Secret and id formats: generation and storage hashes (looked up, never compared).

Every secret is ``<prefix><43 url-safe base64 chars>`` (256 bits from the OS CSPRNG).
Ids are not secrets: runtimes are ``lat_<20 hex>``, accounts ``acct_<16 hex>``. No
secret starts with ``lat_``, so nobody mistakes a credential for a runtime id (or
pastes one where an id goes).
Because the secrets are uniformly random and long, an unsalted SHA-256 is the right
storage hash: it cannot be brute-forced, and it lets the gateway find a credential by
its hash with one indexed lookup.
"""

from __future__ import annotations

import enum
import hashlib
import secrets


class TokenKind(str, enum.Enum):
    API_KEY = "sk_"
    BOOTSTRAP = "plrt_v1_"
    DAEMON = "lrdt_v1_"
    # OAuth access token, Lattice-issued ("lo-at"); not "lat_", which is the runtime ids'.
    ACCESS = "loat_v1_"


# Access tokens issued by earlier gateways began with "lat_v1_". Their hashes are in existing
# databases and they stay valid until they expire or are revoked; none is issued any more.
_LEGACY_PREFIXES = {"lat_v1_": TokenKind.ACCESS}
# Longest prefix first: "sk_" must not swallow another kind.
_PREFIXES = sorted([*((k.value, k) for k in TokenKind), *_LEGACY_PREFIXES.items()],
                   key=lambda item: -len(item[0]))

_SECRET_BYTES = 32
_SECRET_CHARS = 43  # len(base64url(32 bytes)) without padding


def _new(kind: TokenKind) -> str:
    return kind.value + secrets.token_urlsafe(_SECRET_BYTES)


def new_api_key() -> str:
    return _new(TokenKind.API_KEY)


def new_bootstrap_token() -> str:
    return _new(TokenKind.BOOTSTRAP)


def new_daemon_token() -> str:
    return _new(TokenKind.DAEMON)


def new_access_token() -> str:
    return _new(TokenKind.ACCESS)


def new_lattice_id() -> str:
    """A runtime id: short, URL- and model-string-safe, not a secret.

    Runtimes created by earlier gateways have ``prt_...`` ids and keep them (ids are stored
    by apps and in daemons' configs, so they are never rewritten).
    """
    return "lat_" + secrets.token_hex(10)


def new_account_id() -> str:
    """An account id (``acct_...``): not a secret."""
    return "acct_" + secrets.token_hex(8)


def token_kind(token: str) -> TokenKind | None:
    """The kind of a well-formed secret, or None for anything else."""
    for prefix, kind in _PREFIXES:
        if token.startswith(prefix):
            body = token[len(prefix) :]
            if len(body) == _SECRET_CHARS and all(c.isalnum() or c in "-_" for c in body):
                return kind
            return None
    return None


def hash_secret(token: str) -> str:
    """The storage form of a secret (hex SHA-256), and the key it is looked up by.

    The gateway finds a presented secret's record by this hash (an indexed lookup), so
    there is no compare of a secret against a stored value to make constant-time: the
    secrets carry ~256 bits of randomness, so whatever a lookup's timing reveals about
    the stored hashes does not help anyone forge a secret that hashes to one.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
