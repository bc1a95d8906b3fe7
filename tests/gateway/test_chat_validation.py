"""Chat completions refuse bad input and unusable runtimes at once, with the exact envelope."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lattice_gateway.services import SCOPE_INFERENCE, SCOPE_MANAGE
from lattice_protocol import KeyPair
from tests.support.gateway import InProcessGateway, inprocess_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with inprocess_gateway(tmp_path) as gw:
        yield gw


async def create_runtime(gw: InProcessGateway, key: str) -> str:
    response = await gw.client.post("/v1/personal-runtimes", headers={"x-api-key": key},
                                    json={"displayName": "laptop",
                                          "executionBackend": "local-model"})
    assert response.status_code == 201, response.text
    return str(response.json()["runtime"]["latticeId"])


async def pair_without_daemon(gw: InProcessGateway, key: str, lattice_id: str) -> None:
    minted = await gw.client.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                                  headers={"x-api-key": key}, json={"ttlSeconds": 600})
    redeemed = await gw.client.post("/v1/relay/redeem", json={
        "bootstrapToken": minted.json()["bootstrapToken"],
        "daemonPublicKey": KeyPair.generate().public_text(), "daemonVersion": "test"})
    assert redeemed.status_code == 201, redeemed.text


def body(lattice_id: str, **fields: Any) -> dict[str, Any]:
    return {"model": f"lattice:personal:{lattice_id}", "messages": MESSAGES, **fields}


async def post(gw: InProcessGateway, key: str | None, payload: Any = None, *,
               raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        headers["content-type"] = "application/json"
        response = await gw.client.post("/v1/chat/completions", headers=headers, content=raw)
    else:
        response = await gw.client.post("/v1/chat/completions", headers=headers, json=payload)
    return response.status_code, response.json()


BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("messages empty", {"messages": []}, "messages"),
    ("messages not a list", {"messages": "hi"}, "messages"),
    ("message not an object", {"messages": ["hi"]}, "messages[0]"),
    ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ("content wrong type", {"messages": [{"role": "user", "content": 5}]},
     "messages[0].content"),
    ("user content missing", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("bad content part", {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
     "messages[0].content"),
    ("stream not bool", {"stream": "yes"}, "stream"),
    ("stream_options not object", {"stream": True, "stream_options": 1}, "stream_options"),
    ("temperature wrong type", {"temperature": "hot"}, "temperature"),
    ("temperature out of range", {"temperature": 5}, "temperature"),
    ("temperature bool", {"temperature": True}, "temperature"),
    ("top_p out of range", {"top_p": 1.5}, "top_p"),
    ("max_tokens zero", {"max_tokens": 0}, "max_tokens"),
    ("max_tokens float", {"max_tokens": 1.5}, "max_tokens"),
    ("n above one", {"n": 2}, "n"),
    ("stop too many", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("tools not a list", {"tools": {}}, "tools"),
]


@pytest.mark.parametrize(("case", "fields", "param"), BAD_FIELDS, ids=[c[0] for c in BAD_FIELDS])
async def test_bad_fields_are_400_invalid_request(
        gateway: InProcessGateway, case: str, fields: dict[str, Any], param: str) -> None:
    key = await gateway.create_key("acme")
    lattice_id = await create_runtime(gateway, key)
    status, answer = await post(gateway, key, body(lattice_id, **fields))
    assert status == 400, (case, answer)
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["param"] == param
    assert answer["error"]["type"] == "invalid_request_error"


async def test_body_and_model_errors(gateway: InProcessGateway) -> None:
    key = await gateway.create_key("acme")
    cases: list[tuple[Any, bytes | None, int, str, str | None]] = [
        (None, b"{not json", 400, "invalid_request", None),
        (None, b"[1, 2]", 400, "invalid_request", None),
        ({"messages": MESSAGES}, None, 400, "invalid_request", "model"),
        ({"model": "gpt-4o", "messages": MESSAGES}, None, 400, "invalid_request", "model"),
        ({"model": "lattice:personal:bad id!", "messages": MESSAGES}, None, 400,
         "invalid_request", "model"),
        ({"model": 7, "messages": MESSAGES}, None, 400, "invalid_request", "model"),
    ]
    for payload, raw, status, code, param in cases:
        got_status, answer = await post(gateway, key, payload, raw=raw)
        assert (got_status, answer["error"]["code"]) == (status, code), (payload, raw, answer)
        if param:
            assert answer["error"]["param"] == param
    # The gateway keeps serving after all of that.
    lattice_id = await create_runtime(gateway, key)
    assert (await post(gateway, key, body(lattice_id)))[0] == 503


async def test_ten_megabyte_body_is_413(gateway: InProcessGateway) -> None:
    key = await gateway.create_key("acme")
    huge = b'{"model": "lattice:personal:x", "messages": [{"role": "user", "content": "' \
        + b"a" * (10 * 1024 * 1024) + b'"}]}'
    status, answer = await post(gateway, key, raw=huge)
    assert status == 413
    assert answer["error"]["code"] == "request_too_large"


async def test_credentials_are_checked_before_fields(gateway: InProcessGateway) -> None:
    status, answer = await post(gateway, None, {"model": "gpt-4o"})
    assert (status, answer["error"]["code"]) == (401, "invalid_api_key")
    # Before the body is even parsed: callers without credentials learn nothing and cost
    # no parsing, as on every other route.
    status, answer = await post(gateway, None, raw=b"{not json")
    assert (status, answer["error"]["code"]) == (401, "invalid_api_key")
    status, answer = await post(gateway, "sk_" + "x" * 43, raw=b"[1, 2]")
    assert (status, answer["error"]["code"]) == (401, "invalid_api_key")
    manage_only = await gateway.create_key("acme", [SCOPE_MANAGE])
    status, answer = await post(gateway, manage_only, {"model": "gpt-4o"})
    assert (status, answer["error"]["code"]) == (403, "insufficient_scopes")
    assert SCOPE_INFERENCE in answer["error"]["message"]


async def test_runtime_states_answer_at_once(gateway: InProcessGateway) -> None:
    key = await gateway.create_key("acme")
    other_key = await gateway.create_key("globex")
    unpaired = await create_runtime(gateway, key)
    offline = await create_runtime(gateway, key)
    await pair_without_daemon(gateway, key, offline)
    revoked = await create_runtime(gateway, key)
    await pair_without_daemon(gateway, key, revoked)
    assert (await gateway.client.delete(f"/v1/personal-runtimes/{revoked}",
                                        headers={"x-api-key": key})).status_code == 200
    expectations = [
        (key, unpaired, 503, "runtime_unreachable"),
        (key, offline, 503, "runtime_unreachable"),
        (key, revoked, 403, "runtime_revoked"),
        (other_key, offline, 404, "runtime_not_found"),  # another account's runtime
        (key, "lat_doesnotexist", 404, "runtime_not_found"),
    ]
    for caller, lattice_id, status, code in expectations:
        for stream in (False, True):
            started = time.monotonic()
            got_status, answer = await post(gateway, caller, body(lattice_id, stream=stream))
            assert time.monotonic() - started < 1.0  # never a hang
            assert (got_status, answer["error"]["code"]) == (status, code), (lattice_id, answer)
