"""Bootstrap tokens and ``POST /v1/relay/redeem``: bounds, command, one-time, expiry, races."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from starlette.requests import Request

from lattice_gateway.auth import authenticate_daemon
from lattice_gateway.store import schema
from lattice_protocol import ErrorCode, KeyPair, LatticeError, token_kind
from lattice_protocol.tokens import TokenKind
from tests.gateway.conftest import api_headers
from tests.support.gateway import InProcessGateway, inprocess_gateway


async def _runtime(gw: InProcessGateway) -> tuple[str, str]:
    key = await gw.create_key("acme")
    created = await gw.client.post("/v1/personal-runtimes", headers=api_headers(key),
                                   json={"displayName": "Mac", "executionBackend": "local-model"})
    return key, created.json()["runtime"]["latticeId"]


async def _mint(gw: InProcessGateway, key: str, lattice_id: str, **body: object) -> dict:
    response = await gw.client.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                                    headers=api_headers(key), json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def _redeem(gw: InProcessGateway, token: object, public_key: object = None):
    if public_key is None:
        public_key = KeyPair.generate().public_text()
    return await gw.client.post("/v1/relay/redeem", json={
        "bootstrapToken": token, "daemonPublicKey": public_key, "daemonVersion": "0.1.0"})


def _assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.headers["x-should-retry"] == "false"


async def test_mint_shape_and_exact_command(gateway: InProcessGateway) -> None:
    key, lattice_id = await _runtime(gateway)
    minted = await _mint(gateway, key, lattice_id, ttlSeconds=600)
    token = minted["bootstrapToken"]
    assert token_kind(token) is TokenKind.BOOTSTRAP and token.startswith("plrt_v1_")
    assert minted["latticeId"] == lattice_id
    assert minted["command"] == (
        f"lattice-ctl relay connect --gateway 'http://gateway.test' --bootstrap-token '{token}'")
    assert minted["expiresAt"].endswith("Z")


async def test_ttl_default_and_bounds(gateway: InProcessGateway) -> None:
    key, lattice_id = await _runtime(gateway)
    path = f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens"
    # No body at all: the default TTL (600 s).
    empty = await gateway.client.post(path, headers=api_headers(key))
    assert empty.status_code == 201
    for ttl in (60, 3600):
        assert (await gateway.client.post(path, headers=api_headers(key),
                                          json={"ttlSeconds": ttl})).status_code == 201
    async with gateway.store._engine.connect() as conn:  # created/expires spans in ms
        bt = schema.bootstrap_tokens.c
        rows = (await conn.execute(sa.select(bt.expires_ms - bt.created_ms).order_by(
            bt.created_ms))).scalars().all()
    assert sorted(rows) == [60_000, 600_000, 3_600_000]
    for bad in (59, 3601, 0, -5, "600", 600.5, True, None, [600]):
        response = await gateway.client.post(path, headers=api_headers(key),
                                             json={"ttlSeconds": bad})
        _assert_error(response, 400, "invalid_request")
        assert response.json()["error"]["param"] == "ttlSeconds"


async def test_redeem_once_then_used(gateway: InProcessGateway) -> None:
    key, lattice_id = await _runtime(gateway)
    token = (await _mint(gateway, key, lattice_id))["bootstrapToken"]
    first = await _redeem(gateway, token)
    assert first.status_code == 201
    body = first.json()
    assert set(body) == {"latticeId", "accountId", "displayName", "executionBackend",
                         "relayUrl", "daemonToken", "gatewayPublicKey", "pollWindowSeconds"}
    assert body["relayUrl"] == "http://gateway.test"
    assert token_kind(body["daemonToken"]) is TokenKind.DAEMON
    assert 1 <= body["pollWindowSeconds"] <= 50
    _assert_error(await _redeem(gateway, token), 409, "bootstrap_token_used")


async def test_expired_token(gateway: InProcessGateway) -> None:
    key, lattice_id = await _runtime(gateway)
    token = (await _mint(gateway, key, lattice_id, ttlSeconds=60))["bootstrapToken"]
    gateway.clock.advance(61)
    response = await _redeem(gateway, token)
    _assert_error(response, 401, "bootstrap_token_expired")
    assert "expired" in response.json()["error"]["message"]


@pytest.mark.parametrize("token", ["plrt_v1_" + "Z" * 43, "plrt_v1_short", "sk_" + "a" * 43,
                                   "", 12345, None])
async def test_unknown_or_malformed_token(gateway: InProcessGateway, token: object) -> None:
    _assert_error(await _redeem(gateway, token), 401, "invalid_bootstrap_token")


@pytest.mark.parametrize("public_key", ["not base64 !", "AAAA", 7, "A" * 60])
async def test_bad_daemon_public_key_does_not_spend_the_token(
        gateway: InProcessGateway, public_key: object) -> None:
    key, lattice_id = await _runtime(gateway)
    token = (await _mint(gateway, key, lattice_id))["bootstrapToken"]
    response = await _redeem(gateway, token, public_key)
    _assert_error(response, 400, "invalid_request")
    assert response.json()["error"]["param"] == "daemonPublicKey"
    assert (await _redeem(gateway, token)).status_code == 201


async def test_revoked_runtime_cannot_redeem(gateway: InProcessGateway) -> None:
    key, lattice_id = await _runtime(gateway)
    unused = (await _mint(gateway, key, lattice_id))["bootstrapToken"]
    used = (await _mint(gateway, key, lattice_id))["bootstrapToken"]
    assert (await _redeem(gateway, used)).status_code == 201
    await gateway.client.delete(f"/v1/personal-runtimes/{lattice_id}", headers=api_headers(key))
    _assert_error(await _redeem(gateway, unused), 403, "runtime_revoked")
    _assert_error(await _redeem(gateway, used), 403, "runtime_revoked")
    record = (await gateway.client.get(f"/v1/personal-runtimes/{lattice_id}",
                                       headers=api_headers(key))).json()["runtime"]
    assert record["status"] == "revoked"


async def test_twenty_concurrent_redeems_exactly_one_wins(gateway: InProcessGateway) -> None:
    key, lattice_id = await _runtime(gateway)
    token = (await _mint(gateway, key, lattice_id))["bootstrapToken"]
    responses = await asyncio.gather(*(_redeem(gateway, token) for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {
        "bootstrap_token_used"}


def _daemon_request(gw: InProcessGateway, token: str) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "app": gw.app,
                    "headers": [(b"authorization", f"Bearer {token}".encode())]})


async def test_repairing_replaces_the_daemon_token(gateway: InProcessGateway) -> None:
    key, lattice_id = await _runtime(gateway)
    first = (await _redeem(gateway, (await _mint(gateway, key, lattice_id))["bootstrapToken"]))
    old_token = first.json()["daemonToken"]
    assert (await authenticate_daemon(_daemon_request(gateway, old_token))).lattice_id == lattice_id
    second = await _redeem(gateway, (await _mint(gateway, key, lattice_id))["bootstrapToken"])
    new_token = second.json()["daemonToken"]
    assert new_token != old_token
    with pytest.raises(LatticeError) as refused:
        await authenticate_daemon(_daemon_request(gateway, old_token))
    assert refused.value.code is ErrorCode.INVALID_API_KEY
    assert (await authenticate_daemon(_daemon_request(gateway, new_token))).lattice_id == lattice_id


@pytest.mark.parametrize("header", [None, "Bearer", "Basic abc", "Bearer lrdt_v1_nope",
                                    "Bearer sk_" + "a" * 43])
async def test_authenticate_daemon_refuses_missing_or_unknown(gateway: InProcessGateway,
                                                              header: str | None) -> None:
    headers = [(b"authorization", header.encode())] if header else []
    request = Request({"type": "http", "method": "POST", "path": "/", "app": gateway.app,
                       "headers": headers})
    with pytest.raises(LatticeError) as refused:
        await authenticate_daemon(request)
    assert refused.value.code is ErrorCode.INVALID_API_KEY


@pytest.mark.postgres
async def test_twenty_concurrent_redeems_on_postgres(postgres_url: str,
                                                     lattice_home: object) -> None:
    async with inprocess_gateway(postgres_url) as gw:
        key, lattice_id = await _runtime(gw)
        token = (await _mint(gw, key, lattice_id))["bootstrapToken"]
        responses = await asyncio.gather(*(_redeem(gw, token) for _ in range(20)))
        assert sorted(r.status_code for r in responses) == [201] + [409] * 19
        record = (await gw.client.get(f"/v1/personal-runtimes/{lattice_id}",
                                      headers=api_headers(key))).json()["runtime"]
        assert record["status"] == "unpaired"  # redeemed, no daemon registered yet
