"""JWT access tokens from the operator's identity provider (``--oauth-issuer``), verified
against a real issuer served over HTTP (tests/servers/oauth_issuer.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lattice_gateway.cli import main
from lattice_gateway.oauth import JwtVerifier, OAuthConfig
from lattice_gateway.settings import Settings
from lattice_protocol import LatticeError
from tests.servers.oauth_issuer import AUDIENCE, Issuer, run_oauth_issuer
from tests.support.fake_daemon import Reply, paired_daemon
from tests.support.gateway import InProcessGateway, inprocess_gateway, run_gateway

RUNTIMES = "/v1/personal-runtimes"
INFERENCE = "lattice:compute:inference"
MANAGE = "lattice:compute:personal_runtime:manage"


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with run_oauth_issuer() as running:
        yield running


@pytest.fixture
async def gw(tmp_path: Path, lattice_home: Path, issuer: Issuer
             ) -> AsyncIterator[InProcessGateway]:
    # No rate limit on refreshes here: key rotation is tested at once (the limit has its
    # own test on the verifier, with a clock).
    async with inprocess_gateway(tmp_path, oauth_issuers=(issuer.url,),
                                 oauth_audience=AUDIENCE,
                                 oauth_jwks_min_refresh_seconds=0) as gateway:
        yield gateway


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def refused(gw: InProcessGateway, token: str, status: int = 401,
                  code: str = "invalid_api_key") -> str:
    response = await gw.client.get(RUNTIMES, headers=bearer(token))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    return str(error["message"])


async def test_rsa_ec_and_eddsa_tokens_act_for_the_account_named_by_sub(
        gw: InProcessGateway, issuer: Issuer) -> None:
    rsa_kid, ec_kid, ed_kid = issuer.add_key("RSA"), issuer.add_key("EC"), issuer.add_key(
        "Ed25519")
    created = await gw.client.post(RUNTIMES, headers=bearer(issuer.token(rsa_kid)),
                                   json={"displayName": "laptop",
                                         "executionBackend": "local-model"})
    assert created.status_code == 201, created.text
    lattice_id = created.json()["runtime"]["latticeId"]
    # Other keys, a plain-JWT type, `scp` as a list: the same account (sub "alice").
    for token in (issuer.token(ec_kid, typ="JWT"), issuer.token(ed_kid, typ=None),
                  issuer.token(ec_kid, scope=None, scp=[MANAGE])):
        listed = await gw.client.get(RUNTIMES, headers=bearer(token))
        assert listed.status_code == 200, listed.text
        assert [r["latticeId"] for r in listed.json()["runtimes"]] == [lattice_id]
    # Another subject is another account: it does not see alice's runtime.
    bob = await gw.client.get(RUNTIMES, headers=bearer(issuer.token(rsa_kid, sub="bob")))
    assert bob.status_code == 200 and bob.json()["runtimes"] == []
    assert issuer.jwks_fetches() == 1  # cached


async def test_a_rotated_key_is_fetched_when_a_token_names_it(gw: InProcessGateway,
                                                             issuer: Issuer) -> None:
    old = issuer.add_key("RSA")
    assert (await gw.client.get(RUNTIMES, headers=bearer(issuer.token(old)))).status_code == 200
    new = issuer.add_key("EC")
    issuer.retire(old)
    assert (await gw.client.get(RUNTIMES, headers=bearer(issuer.token(new)))).status_code == 200
    assert issuer.jwks_fetches() == 2  # the unknown kid made the gateway fetch again
    message = await refused(gw, issuer.token(old))
    assert "signing key" in message and "not among" in message


async def test_refusals_say_why(gw: InProcessGateway, issuer: Issuer) -> None:
    kid = issuer.add_key("RSA")
    assert "expired" in await refused(gw, issuer.token(kid, exp=_now() - 120))
    # Within the 30 s leeway an expired token still works.
    ok = await gw.client.get(RUNTIMES, headers=bearer(issuer.token(kid, exp=_now() - 10)))
    assert ok.status_code == 200
    assert "not valid yet" in await refused(gw, issuer.token(kid, nbf=_now() + 600))
    assert "another audience" in await refused(gw, issuer.token(kid, aud="https://other"))
    assert "not trusted" in await refused(gw, issuer.token(kid, iss="https://evil.example"))
    assert "lacks the 'exp' claim" in await refused(gw, issuer.token(kid, exp=None))
    assert "names no client" in await refused(gw, issuer.token(kid, client_id=None))
    assert "not an access token" in await refused(gw, issuer.token(kid, typ="id_token+jwt"))
    # Signed by a key the issuer never published, under a published kid.
    forged = issuer.token(kid, key=rsa.generate_private_key(public_exponent=65537,
                                                            key_size=2048))
    assert "signature does not verify" in await refused(gw, forged)
    assert "malformed" in await refused(gw, "eyJhbGciOi.eyJpc3Mi.bad")
    # Missing scope: 403 insufficient_scopes, as for API keys.
    narrow = issuer.token(kid, scope="openid profile")
    assert MANAGE in await refused(gw, narrow, 403, "insufficient_scopes")
    inference_only = await gw.client.post(RUNTIMES, headers=bearer(issuer.token(
        kid, scope=INFERENCE)), json={"displayName": "x", "executionBackend": "local-model"})
    assert inference_only.status_code == 403
    assert inference_only.json()["error"]["code"] == "insufficient_scopes"
    # The gateway keeps serving.
    assert (await gw.client.get(RUNTIMES, headers=bearer(issuer.token(kid)))).status_code == 200


async def test_alg_none_and_hmac_with_the_public_key_are_refused(gw: InProcessGateway,
                                                                 issuer: Issuer) -> None:
    kid = issuer.add_key("RSA")
    claims = issuer.claims()
    unsigned = _compact({"alg": "none", "typ": "at+jwt", "kid": kid}, claims, b"")
    assert "'none' is not accepted" in await refused(gw, unsigned)
    # The classic key-confusion attack: HS256 with the issuer's public key as the secret,
    # in each form a verifier might hold it (PEM, and the JWK's JSON).
    public_pem = issuer.private[kid].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_jwk = json.dumps(issuer.public_jwk(kid)).encode()
    for secret in (public_pem, public_jwk):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
        signing_input = _b64(json.dumps(header).encode()) + "." + _b64(
            json.dumps(claims).encode())
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert "'HS256' is not accepted" in await refused(gw, signing_input + "." + _b64(mac))
    # An RSA key cannot be used for an ECDSA signature either.
    assert "key is of type" in await refused(
        gw, _compact({"alg": "ES256", "typ": "at+jwt", "kid": kid}, claims, b"x" * 64))


async def test_discovery_by_rfc8414_and_a_missing_issuer(tmp_path: Path,
                                                         lattice_home: Path) -> None:
    with run_oauth_issuer(discovery="oauth") as issuer:
        kid = issuer.add_key("EC384")
        async with inprocess_gateway(tmp_path, oauth_issuers=(issuer.url,),
                                     oauth_audience=AUDIENCE) as gw:
            response = await gw.client.get(RUNTIMES, headers=bearer(issuer.token(kid)))
            assert response.status_code == 200, response.text
    # The issuer is gone: tokens cannot be verified, and the answer says so.
    async with inprocess_gateway(tmp_path / "2", oauth_issuers=(issuer.url,),
                                 oauth_audience=AUDIENCE) as gw:
        assert "could not be fetched" in await refused(gw, issuer.token(kid))


async def test_without_an_issuer_jwts_are_refused_clearly(gateway: InProcessGateway,
                                                          issuer: Issuer) -> None:
    token = issuer.token(issuer.add_key("RSA"))
    assert "trusts no identity provider" in await refused(gateway, token)


async def test_unknown_kid_refreshes_are_rate_limited(issuer: Issuer) -> None:
    now = [1000.0]
    verifier = JwtVerifier(OAuthConfig((issuer.url,), AUDIENCE), clock=lambda: now[0],
                           min_refresh_seconds=30)
    try:
        first = issuer.add_key("RSA")
        assert (await verifier.verify(issuer.token(first))).client_id == "notes-web"
        rotated = issuer.add_key("RSA")
        for _ in range(5):  # a flood of tokens naming a kid it does not hold
            with pytest.raises(LatticeError, match="not among"):
                await verifier.verify(issuer.token(rotated))
        assert issuer.jwks_fetches() == 1
        now[0] += 31  # the rate limit passed: the new key is fetched and works
        verified = await verifier.verify(issuer.token(rotated, sub="carol", azp="x",
                                                      client_id=None))
        assert (verified.account_name, verified.client_id) == ("carol", "x")
        assert issuer.jwks_fetches() == 2
    finally:
        await verifier.close()


@pytest.mark.e2e
async def test_a_real_chat_with_a_jwt_names_the_client_in_the_sealed_job(
        tmp_path: Path, lattice_home: Path, issuer: Issuer) -> None:
    kid = issuer.add_key("RSA")
    token = issuer.token(kid, client_id="notes-web", sub="acme-user")
    env = {"LATTICE_GATEWAY_OAUTH_ISSUERS": issuer.url,
           "LATTICE_GATEWAY_OAUTH_AUDIENCE": AUDIENCE}
    with run_gateway(tmp_path, env=env, poll_window_seconds=2,
                     presence_window_seconds=1) as gateway:
        daemon = await paired_daemon(gateway.url, token, reply=Reply(text="hi from home"))
        try:
            async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=token,
                                          max_retries=0, timeout=10) as client:
                completion = await client.chat.completions.create(
                    model=f"lattice:personal:{daemon.lattice_id}",
                    messages=[{"role": "user", "content": "hello"}])
                assert completion.choices[0].message.content == "hi from home"
                expired = issuer.token(kid, exp=_now() - 120)
                with pytest.raises(openai.AuthenticationError, match="expired"):
                    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1",
                                                  api_key=expired, max_retries=0) as late:
                        await late.models.list()
            requester = daemon.jobs[-1].requester
            assert requester is not None
            assert (requester.credential_kind, requester.credential_id,
                    requester.credential_name) == ("oauth", "notes-web", "notes-web")
            assert token not in gateway.log_text()
        finally:
            await daemon.stop()


def _now() -> int:
    return int(time.time())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    return ".".join((_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()),
                     _b64(signature)))


@pytest.mark.parametrize(("args", "reason"), [
    (["--oauth-issuer", "https://login.example.com/"], "needs --oauth-audience"),
    (["--oauth-issuer", "ftp://login.example.com", "--oauth-audience", "a"],
     "must be an http(s) URL"),
])
def test_serve_refuses_an_incomplete_issuer_configuration(
        args: list[str], reason: str, tmp_path: Path, lattice_home: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--database", str(tmp_path / "gw.db"),
                                       "--port", "1", *args])
    assert result.exit_code != 0 and reason in result.output


def test_issuers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATTICE_GATEWAY_OAUTH_ISSUERS", "https://a.example/ https://b.example")
    monkeypatch.setenv("LATTICE_GATEWAY_OAUTH_AUDIENCE", "api")
    settings = Settings.from_env()
    assert settings.oauth_issuers == ("https://a.example/", "https://b.example")
    assert settings.oauth_audience == "api" and settings.oauth_account_claim == "sub"
