"""End-to-end sealing between the gateway and a daemon (PyNaCl ``Box``).

An envelope is the text ``v1.<base64url(nonce || ciphertext)>``: a version tag, a fresh
24-byte random nonce and the XSalsa20-Poly1305 ciphertext, authenticated under the
Curve25519 shared key of the two parties. A relay that stores or forwards envelopes can
neither read nor alter them. Anything that does not open cleanly raises ``SealError``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.public
import nacl.utils

ENVELOPE_VERSION = "v1"
_NONCE = nacl.public.Box.NONCE_SIZE
_MAC = 16


class SealError(ValueError):
    """An envelope or key that cannot be used: tampered, truncated, wrong key, bad version."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealError("not valid base64url") from exc


def encode_public_key(key: nacl.public.PublicKey) -> str:
    return _b64encode(bytes(key))


def decode_public_key(text: object) -> nacl.public.PublicKey:
    if not isinstance(text, str):
        raise SealError("public key must be a string")
    raw = _b64decode(text)
    if len(raw) != nacl.public.PublicKey.SIZE:
        raise SealError("public key must be 32 bytes")
    return nacl.public.PublicKey(raw)


@dataclass(frozen=True)
class KeyPair:
    private: nacl.public.PrivateKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(nacl.public.PrivateKey.generate())

    @classmethod
    def from_private_text(cls, text: str) -> KeyPair:
        raw = _b64decode(text.strip())
        if len(raw) != nacl.public.PrivateKey.SIZE:
            raise SealError("private key must be 32 bytes")
        return cls(nacl.public.PrivateKey(raw))

    @property
    def public(self) -> nacl.public.PublicKey:
        return self.private.public_key

    def private_text(self) -> str:
        return _b64encode(bytes(self.private))

    def public_text(self) -> str:
        return encode_public_key(self.public)


class Sealer:
    """Seals and opens envelopes between one local keypair and one peer public key.

    The Box (and so the Curve25519 key agreement) is computed once; keep a Sealer per
    peer on hot paths.
    """

    __slots__ = ("_box",)

    def __init__(self, local: KeyPair, peer_public: nacl.public.PublicKey | str) -> None:
        if isinstance(peer_public, str):
            peer_public = decode_public_key(peer_public)
        self._box = nacl.public.Box(local.private, peer_public)

    def seal(self, plaintext: bytes) -> str:
        nonce = nacl.utils.random(_NONCE)
        return f"{ENVELOPE_VERSION}.{_b64encode(bytes(self._box.encrypt(plaintext, nonce)))}"

    def open(self, envelope: object) -> bytes:
        if not isinstance(envelope, str):
            raise SealError("envelope must be a string")
        version, dot, body = envelope.partition(".")
        if not dot:
            raise SealError("not a sealed envelope")
        if version != ENVELOPE_VERSION:
            raise SealError(f"unknown envelope version {version[:16]!r}")
        raw = _b64decode(body)
        if len(raw) < _NONCE + _MAC:
            raise SealError("envelope is truncated")
        try:
            return self._box.decrypt(raw)
        except nacl.exceptions.CryptoError as exc:
            raise SealError("envelope failed authentication (tampered or wrong key)") from exc

    def seal_json(self, value: Any) -> str:
        return self.seal(json.dumps(value, separators=(",", ":")).encode("utf-8"))

    def open_json(self, envelope: object) -> Any:
        plaintext = self.open(envelope)
        try:
            return json.loads(plaintext)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SealError("sealed payload is not JSON") from exc
