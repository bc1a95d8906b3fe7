from __future__ import annotations

import pytest

from lattice_protocol import (
    ErrorCode,
    LatticeError,
    ModelRef,
    format_model_string,
    parse_model_string,
)

SPEC_TABLE = {
    "invalid_api_key": 401, "insufficient_scopes": 403, "runtime_not_found": 404,
    "runtime_revoked": 403, "runtime_unreachable": 503, "invalid_request": 400,
    "request_too_large": 413, "provider_error": 502, "runtime_timeout": 504,
    "bootstrap_token_expired": 401, "bootstrap_token_used": 409,
    "invalid_bootstrap_token": 401, "rate_limited": 429,
}


@pytest.mark.parametrize(("code", "status"), SPEC_TABLE.items())
def test_spec_codes_have_their_status(code: str, status: int) -> None:
    assert ErrorCode(code).status == status


def test_envelope_shape() -> None:
    body = LatticeError(ErrorCode.INSUFFICIENT_SCOPES, "needs scope x", param="scope").body()
    assert body == {"error": {"message": "needs scope x", "type": "permission_error",
                              "param": "scope", "code": "insufficient_scopes"}}


def test_retry_hints() -> None:
    assert ErrorCode.RATE_LIMITED.retryable
    for code in (ErrorCode.INVALID_REQUEST, ErrorCode.PROVIDER_ERROR, ErrorCode.RUNTIME_REVOKED,
                 ErrorCode.BOOTSTRAP_TOKEN_USED, ErrorCode.RUNTIME_TIMEOUT):
        assert not code.retryable
    assert ErrorCode.PROVIDER_ERROR.error_type == "api_error"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lattice:personal:lat_abc", ModelRef("lat_abc")),
        ("lattice:personal:lat_abc/llama3.2:3b", ModelRef("lat_abc", "llama3.2:3b")),
        ("lattice:personal:lat_abc/hf.co/org/model:Q4", ModelRef("lat_abc", "hf.co/org/model:Q4")),
    ],
)
def test_model_strings_parse(text: str, expected: ModelRef) -> None:
    assert parse_model_string(text) == expected
    assert format_model_string(expected.lattice_id, expected.local_model) == text


@pytest.mark.parametrize(
    "text",
    ["gpt-4o", "lattice:personal:", "lattice:personal:a b", "lattice:personal:x/",
     "lattice:personal:x/has space", "lattice:other:x", 42, None,
     "lattice:personal:" + "a" * 65, "lattice:personal:x/" + "m" * 300],
)
def test_bad_model_strings_are_rejected(text: object) -> None:
    with pytest.raises(ValueError):
        parse_model_string(text)
