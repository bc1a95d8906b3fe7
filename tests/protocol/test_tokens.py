from __future__ import annotations

import pytest

from lattice_protocol import (
    TokenKind,
    hash_secret,
    new_access_token,
    new_account_id,
    new_api_key,
    new_bootstrap_token,
    new_daemon_token,
    new_lattice_id,
    token_kind,
)

MAKERS = {
    TokenKind.API_KEY: new_api_key,
    TokenKind.BOOTSTRAP: new_bootstrap_token,
    TokenKind.DAEMON: new_daemon_token,
    TokenKind.ACCESS: new_access_token,
}


@pytest.mark.parametrize("kind", list(TokenKind))
def test_each_kind_has_its_prefix_and_256_bits(kind: TokenKind) -> None:
    token = MAKERS[kind]()
    assert token.startswith(kind.value)
    body = token[len(kind.value):]
    # 43 base64url characters carry 258 bits; at least 256 of them random.
    assert len(body) == 43
    assert set(body) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert token_kind(token) is kind


def test_bootstrap_tokens_use_the_documented_prefix() -> None:
    assert new_bootstrap_token().startswith("plrt_v1")


def test_tokens_are_unique() -> None:
    assert len({new_api_key() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("text", ["", "sk_", "sk_short", "plrt_v1_" + "a" * 42,
                                  "sk_" + "a" * 42 + "!", "nope_" + "a" * 43, "sk_" + "a" * 44])
def test_malformed_tokens_have_no_kind(text: str) -> None:
    assert token_kind(text) is None


def test_hash_is_stable_and_not_the_secret() -> None:
    token = new_api_key()
    stored = hash_secret(token)
    assert stored == hash_secret(token)
    assert token not in stored and len(stored) == 64
    assert hash_secret(new_api_key()) != stored and hash_secret(token[:-1]) != stored


def test_lattice_ids_are_model_string_safe() -> None:
    from lattice_protocol import parse_model_string

    lattice_id = new_lattice_id()
    assert parse_model_string(f"lattice:personal:{lattice_id}").lattice_id == lattice_id


def test_ids_look_like_the_documentation_and_no_secret_looks_like_an_id() -> None:
    assert new_lattice_id().startswith("lat_")
    assert new_account_id().startswith("acct_")
    assert new_access_token().startswith("loat_v1_")
    assert not any(kind.value.startswith(("lat_", "acct_")) for kind in TokenKind)
    # A runtime id is never taken for a credential.
    assert token_kind(new_lattice_id()) is None


def test_access_tokens_of_earlier_gateways_are_still_access_tokens() -> None:
    legacy = "lat_v1_" + new_access_token()[len("loat_v1_"):]
    assert token_kind(legacy) is TokenKind.ACCESS
    assert token_kind("lat_v1_" + "a" * 42) is None
