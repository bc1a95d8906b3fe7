"""Scopes and credentials on every core endpoint: both credential kinds, both header forms."""

from __future__ import annotations

import pytest

from lattice_gateway.services import SCOPE_INFERENCE, SCOPE_MANAGE
from tests.gateway.conftest import api_headers
from tests.support.gateway import InProcessGateway

RUNTIME_BODY = {"displayName": "Studio Mac", "executionBackend": "local-model"}


async def _credential(gw: InProcessGateway, kind: str, account: str, scopes: list[str]) -> str:
    if kind == "api_key":
        return await gw.create_key(account, scopes)
    return await gw.create_token(account, scopes)


def _endpoints(lattice_id: str) -> list[tuple[str, str, dict | None, set[str]]]:
    """(method, path, body, scopes that grant it); an empty intersection means 403."""
    either = {SCOPE_INFERENCE, SCOPE_MANAGE}
    return [
        ("POST", "/v1/personal-runtimes", RUNTIME_BODY, {SCOPE_MANAGE}),
        ("GET", "/v1/personal-runtimes", None, either),
        ("GET", f"/v1/personal-runtimes/{lattice_id}", None, either),
        ("POST", f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens", {"ttlSeconds": 600},
         {SCOPE_MANAGE}),
        ("GET", "/v1/models", None, {SCOPE_INFERENCE}),
        # Last: revoking changes the runtime the others use.
        ("DELETE", f"/v1/personal-runtimes/{lattice_id}", None, {SCOPE_MANAGE}),
    ]


@pytest.mark.parametrize("form", ["x-api-key", "bearer"])
@pytest.mark.parametrize("kind", ["api_key", "access_token"])
async def test_scope_matrix(gateway: InProcessGateway, kind: str, form: str) -> None:
    admin = await gateway.create_key("acme", [SCOPE_MANAGE])
    created = await gateway.client.post("/v1/personal-runtimes", json=RUNTIME_BODY,
                                        headers=api_headers(admin))
    lattice_id = created.json()["runtime"]["latticeId"]

    for granted in ([SCOPE_INFERENCE], [SCOPE_MANAGE]):
        secret = await _credential(gateway, kind, "acme", granted)
        for method, path, body, needs in _endpoints(lattice_id):
            response = await gateway.client.request(method, path, json=body,
                                                     headers=api_headers(secret, form))
            allowed = bool(needs & set(granted))
            where = f"{kind}/{form}/{granted[0]}: {method} {path}"
            if allowed:
                assert response.status_code in (200, 201), (where, response.text)
            else:
                assert response.status_code == 403, (where, response.text)
                error = response.json()["error"]
                assert error["code"] == "insufficient_scopes"
                # The message names the missing scope (docs/api.md).
                assert all(scope in error["message"] for scope in needs), error["message"]
                assert response.headers["x-should-retry"] == "false"
        if granted == [SCOPE_MANAGE]:
            # The DELETE above succeeded with manage: the runtime is now revoked.
            got = await gateway.client.get(f"/v1/personal-runtimes/{lattice_id}",
                                           headers=api_headers(secret, form))
            assert got.json()["runtime"]["status"] == "revoked"


async def _assert_401_everywhere(gw: InProcessGateway, headers: dict[str, str],
                                 expected_words: str) -> None:
    for method, path, body, _ in _endpoints("lat_whatever"):
        response = await gw.client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key"
        assert error["type"] == "authentication_error"
        assert expected_words in error["message"]
        assert response.headers["x-should-retry"] == "false"
        for value in headers.values():  # the presented secret is never echoed
            assert value.split()[-1] not in response.text


async def test_missing_credentials_are_401(gateway: InProcessGateway) -> None:
    await _assert_401_everywhere(gateway, {}, "missing credentials")
    await _assert_401_everywhere(gateway, {"authorization": "Basic abc"}, "missing credentials")


@pytest.mark.parametrize("secret", [
    "sk_" + "A" * 43, "loat_v1_" + "B" * 43, "lat_v1_" + "B" * 43, "sk_short", "not-a-key",
    "lrdt_v1_" + "C" * 43,
])
async def test_unknown_credentials_are_401(gateway: InProcessGateway, secret: str) -> None:
    await _assert_401_everywhere(gateway, {"x-api-key": secret}, "invalid")
    await _assert_401_everywhere(gateway, {"authorization": f"Bearer {secret}"}, "invalid")


@pytest.mark.parametrize("kind", ["api_key", "access_token"])
async def test_revoked_credentials_are_401(gateway: InProcessGateway, kind: str) -> None:
    secret = await _credential(gateway, kind, "acme", [SCOPE_INFERENCE, SCOPE_MANAGE])
    ok = await gateway.client.get("/v1/personal-runtimes", headers=api_headers(secret))
    assert ok.status_code == 200  # and now cached
    assert await gateway.store.revoke_credential(secret)
    await _assert_401_everywhere(gateway, api_headers(secret), "revoked")


async def test_expired_access_token_is_401(gateway: InProcessGateway) -> None:
    token = await gateway.create_token("acme", [SCOPE_INFERENCE, SCOPE_MANAGE], ttl=60)
    ok = await gateway.client.get("/v1/personal-runtimes", headers=api_headers(token, "bearer"))
    assert ok.status_code == 200
    gateway.clock.advance(61)
    await _assert_401_everywhere(gateway, api_headers(token, "bearer"), "expired")


async def test_other_accounts_runtime_is_indistinguishable_from_missing(
        gateway: InProcessGateway) -> None:
    owner = await gateway.create_key("owner")
    intruder = await gateway.create_key("intruder")
    created = await gateway.client.post("/v1/personal-runtimes", json=RUNTIME_BODY,
                                        headers=api_headers(owner))
    lattice_id = created.json()["runtime"]["latticeId"]

    missing_id = "lat_00000000000000000000"
    for target in (lattice_id, missing_id):
        for method, path, body in (
            ("GET", f"/v1/personal-runtimes/{target}", None),
            ("DELETE", f"/v1/personal-runtimes/{target}", None),
            ("POST", f"/v1/personal-runtimes/{target}/bootstrap-tokens", {"ttlSeconds": 600}),
        ):
            response = await gateway.client.request(method, path, json=body,
                                                    headers=api_headers(intruder))
            assert response.status_code == 404, (method, path, response.text)
            error = response.json()["error"]
            assert error["code"] == "runtime_not_found"
            # Same wording either way, apart from the id the caller sent.
            assert error["message"] == f"no personal runtime {target!r}"
    listed = await gateway.client.get("/v1/personal-runtimes", headers=api_headers(intruder))
    assert listed.json() == {"runtimes": []}
    still = await gateway.client.get(f"/v1/personal-runtimes/{lattice_id}",
                                     headers=api_headers(owner))
    assert still.json()["runtime"]["status"] == "unpaired"  # the intruder's DELETE did nothing
