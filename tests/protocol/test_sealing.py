from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice_protocol import KeyPair, Sealer, SealError, decode_public_key, encode_public_key

GATEWAY = KeyPair.generate()
DAEMON = KeyPair.generate()


def pair() -> tuple[Sealer, Sealer]:
    return Sealer(GATEWAY, DAEMON.public), Sealer(DAEMON, GATEWAY.public_text())


@given(st.binary(max_size=4096))
def test_round_trip_any_bytes(payload: bytes) -> None:
    gateway, daemon = pair()
    assert daemon.open(gateway.seal(payload)) == payload
    assert gateway.open(daemon.seal(payload)) == payload


def test_json_round_trip_and_fresh_nonce_per_message() -> None:
    gateway, daemon = pair()
    first, second = gateway.seal_json({"a": 1}), gateway.seal_json({"a": 1})
    assert first != second  # a fresh random nonce each time
    assert daemon.open_json(first) == daemon.open_json(second) == {"a": 1}
    assert first.startswith("v1.")
    body = first[3:]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert b'{"a":1}' not in raw  # the plaintext does not travel


def _flip(envelope: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(envelope[3:] + "=" * (-len(envelope[3:]) % 4)))
    raw[index] ^= 0x01
    return "v1." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("index", [0, 23, 24, 40, -1])  # nonce, MAC, ciphertext, last byte
def test_tampering_anywhere_is_rejected(index: int) -> None:
    gateway, daemon = pair()
    envelope = gateway.seal(b"hello world, a secret prompt")
    with pytest.raises(SealError, match="authentication"):
        daemon.open(_flip(envelope, index))


def test_wrong_key_is_rejected() -> None:
    gateway, _ = pair()
    stranger = Sealer(KeyPair.generate(), GATEWAY.public)
    with pytest.raises(SealError, match="authentication"):
        stranger.open(gateway.seal(b"x"))


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        ("v2.AAAA", "unknown envelope version"),
        ("no-dot-here", "not a sealed envelope"),
        ("v1.AAAA", "truncated"),
        ("v1.!!!!", "base64"),
        (12345, "must be a string"),
    ],
)
def test_malformed_envelopes_raise_one_error_type(envelope: object, message: str) -> None:
    _, daemon = pair()
    with pytest.raises(SealError, match=message):
        daemon.open(envelope)


def test_truncated_envelope_is_rejected() -> None:
    gateway, daemon = pair()
    envelope = gateway.seal(b"some payload")
    with pytest.raises(SealError):
        daemon.open(envelope[:-4])


def test_non_json_payload_is_a_seal_error() -> None:
    gateway, daemon = pair()
    with pytest.raises(SealError, match="not JSON"):
        daemon.open_json(gateway.seal(b"\xff\xfe"))


def test_public_key_text_round_trip_and_validation() -> None:
    assert bytes(decode_public_key(encode_public_key(DAEMON.public))) == bytes(DAEMON.public)
    for bad in ["", "abc", 42, "A" * 100]:
        with pytest.raises(SealError):
            decode_public_key(bad)


def test_private_key_text_round_trip() -> None:
    restored = KeyPair.from_private_text(DAEMON.private_text())
    assert restored.public_text() == DAEMON.public_text()
    with pytest.raises(SealError):
        KeyPair.from_private_text("short")
