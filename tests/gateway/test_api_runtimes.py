"""Personal-runtime records: shape, validation, status overlay, the walkthrough, no secrets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.requests import Request

from lattice_gateway.auth import authenticate_daemon
from lattice_protocol import ErrorCode, KeyPair, LatticeError
from tests.gateway.conftest import api_headers
from tests.support.gateway import InProcessGateway

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RECORD_FIELDS = {"latticeId", "accountId", "displayName", "executionBackend", "status",
                 "createdAt", "updatedAt"}


async def _create(gw: InProcessGateway, key: str, name: str = "Studio Mac",
                  backend: str = "local-model") -> dict:
    response = await gw.client.post("/v1/personal-runtimes", headers=api_headers(key),
                                    json={"displayName": name, "executionBackend": backend})
    assert response.status_code == 201, response.text
    return response.json()["runtime"]


def _daemon_request(gw: InProcessGateway, daemon_token: str) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v1/relay/sessions", "app": gw.app,
             "headers": [(b"authorization", f"Bearer {daemon_token}".encode())]}
    return Request(scope)


async def test_create_returns_the_contract_record(gateway: InProcessGateway) -> None:
    key = await gateway.create_key("acme")
    runtime = await _create(gateway, key, "  Kitchen PC ", "assistant-runtime")
    assert runtime.keys() >= RECORD_FIELDS
    assert runtime["displayName"] == "Kitchen PC"
    assert runtime["executionBackend"] == "assistant-runtime"
    assert runtime["status"] == "unpaired"
    assert runtime["accountId"].startswith("acct_")
    assert runtime["latticeId"].startswith("lat_")
    assert ISO_MS_Z.match(runtime["createdAt"]) and ISO_MS_Z.match(runtime["updatedAt"])
    fetched = await gateway.client.get(f"/v1/personal-runtimes/{runtime['latticeId']}",
                                       headers=api_headers(key))
    assert fetched.status_code == 200
    assert fetched.json() == {"runtime": runtime}


async def test_list_is_per_account_in_creation_order(gateway: InProcessGateway) -> None:
    acme = await gateway.create_key("acme")
    other = await gateway.create_key("other")
    first = await _create(gateway, acme, "one")
    second = await _create(gateway, acme, "two")
    await _create(gateway, other, "theirs")
    listed = await gateway.client.get("/v1/personal-runtimes", headers=api_headers(acme))
    assert [r["latticeId"] for r in listed.json()["runtimes"]] == [first["latticeId"],
                                                                   second["latticeId"]]


@pytest.mark.parametrize(("body", "param"), [
    ({"executionBackend": "local-model"}, "displayName"),
    ({"displayName": "", "executionBackend": "local-model"}, "displayName"),
    ({"displayName": "   ", "executionBackend": "local-model"}, "displayName"),
    ({"displayName": 42, "executionBackend": "local-model"}, "displayName"),
    ({"displayName": "x" * 201, "executionBackend": "local-model"}, "displayName"),
    ({"displayName": "Mac\x1b[2J", "executionBackend": "local-model"}, "displayName"),
    ({"displayName": "two\nlines", "executionBackend": "local-model"}, "displayName"),
    ({"displayName": "Mac"}, "executionBackend"),
    ({"displayName": "Mac", "executionBackend": "gpu-farm"}, "executionBackend"),
    ({"displayName": "Mac", "executionBackend": ["local-model"]}, "executionBackend"),
])
async def test_create_validation(gateway: InProcessGateway, body: dict, param: str) -> None:
    key = await gateway.create_key("acme")
    response = await gateway.client.post("/v1/personal-runtimes", json=body,
                                         headers=api_headers(key))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["param"] == param
    assert response.headers["x-should-retry"] == "false"
    listed = await gateway.client.get("/v1/personal-runtimes", headers=api_headers(key))
    assert listed.json()["runtimes"] == []  # nothing half-created


async def test_display_name_of_200_chars_is_accepted(gateway: InProcessGateway) -> None:
    key = await gateway.create_key("acme")
    assert (await _create(gateway, key, "y" * 200))["displayName"] == "y" * 200


async def test_walkthrough_without_relay(gateway: InProcessGateway, tmp_path: Path) -> None:
    """create -> unpaired -> mint -> redeem (still unpaired) -> revoke -> revoked; nothing
    leaks."""
    key = await gateway.create_key("acme")
    runtime = await _create(gateway, key)
    lattice_id = runtime["latticeId"]
    headers = api_headers(key)

    listed = await gateway.client.get("/v1/personal-runtimes", headers=headers)
    assert [r["status"] for r in listed.json()["runtimes"]] == ["unpaired"]

    minted = await gateway.client.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                                       headers=headers, json={"ttlSeconds": 600})
    assert minted.status_code == 201
    bootstrap_token = minted.json()["bootstrapToken"]

    daemon_keys = KeyPair.generate()
    redeemed = await gateway.client.post("/v1/relay/redeem", json={
        "bootstrapToken": bootstrap_token, "daemonPublicKey": daemon_keys.public_text(),
        "daemonVersion": "0.1.0"})
    assert redeemed.status_code == 201, redeemed.text
    pairing = redeemed.json()
    daemon_token = pairing["daemonToken"]
    assert pairing["latticeId"] == lattice_id
    assert pairing["gatewayPublicKey"] == gateway.services.gateway_keys.public_text()

    # Redeemed, but no daemon has registered a session: still unpaired.
    record = (await gateway.client.get(f"/v1/personal-runtimes/{lattice_id}",
                                       headers=headers)).json()["runtime"]
    assert record["status"] == "unpaired" and record["lastSeenAt"] is None
    assert record["daemonVersion"] == "0.1.0"
    models = await gateway.client.get("/v1/models", headers=headers)
    assert models.json() == {"object": "list", "data": []}  # not reachable -> not listed

    authed = await authenticate_daemon(_daemon_request(gateway, daemon_token))
    assert authed.lattice_id == lattice_id

    revoked = await gateway.client.delete(f"/v1/personal-runtimes/{lattice_id}",
                                          headers=headers)
    assert revoked.status_code == 200
    assert revoked.json()["runtime"]["status"] == "revoked"
    again = await gateway.client.delete(f"/v1/personal-runtimes/{lattice_id}", headers=headers)
    assert again.status_code == 200 and again.json()["runtime"]["status"] == "revoked"
    listed = await gateway.client.get("/v1/personal-runtimes", headers=headers)
    assert [r["status"] for r in listed.json()["runtimes"]] == ["revoked"]  # stays listed

    refused = await gateway.client.post(
        f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens", headers=headers, json={})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "runtime_revoked"

    # The daemon credential stops working at once (it was cached a moment ago).
    with pytest.raises(LatticeError) as denied:
        await authenticate_daemon(_daemon_request(gateway, daemon_token))
    assert denied.value.code is ErrorCode.RUNTIME_REVOKED

    # The database holds none of the plaintext secrets.
    await gateway.store.close()  # flush WAL into the main file
    database = Path(gateway.database)
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    for secret in (key, bootstrap_token, daemon_token):
        assert secret.encode() not in stored
    assert daemon_keys.private_text().encode() not in stored


async def test_paired_runtime_with_live_session_is_reachable_and_listed_as_model(
        gateway: InProcessGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    key = await gateway.create_key("acme")
    runtime = await _create(gateway, key)
    lattice_id = runtime["latticeId"]
    minted = await gateway.client.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                                       headers=api_headers(key), json={})
    await gateway.client.post("/v1/relay/redeem", json={
        "bootstrapToken": minted.json()["bootstrapToken"],
        "daemonPublicKey": KeyPair.generate().public_text(), "daemonVersion": "0.1.0"})

    broker = gateway.services.broker

    async def reachable(ids: list[str]) -> dict[str, bool]:
        return dict.fromkeys(ids, True)

    async def last_seen(ids: list[str]) -> dict[str, float | None]:
        return dict.fromkeys(ids, 1_700_000_000.25)

    monkeypatch.setattr(broker, "reachable", reachable)
    monkeypatch.setattr(broker, "last_seen", last_seen)
    record = (await gateway.client.get(f"/v1/personal-runtimes/{lattice_id}",
                                       headers=api_headers(key))).json()["runtime"]
    assert record["status"] == "reachable"
    assert record["lastSeenAt"] == "2023-11-14T22:13:20.250Z"
    models = (await gateway.client.get("/v1/models", headers=api_headers(key))).json()
    assert models["object"] == "list"
    [model] = models["data"]
    assert model["id"] == f"lattice:personal:{lattice_id}"
    assert model["object"] == "model"
    assert model["owned_by"] == runtime["accountId"]
    assert isinstance(model["created"], int) and model["created"] > 1_700_000_000
