"""Bad input gets the contract's envelope with the exact status, code and retry hint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import api_headers
from tests.support.gateway import InProcessGateway, run_gateway

ENVELOPE_KEYS = {"message", "type", "param", "code"}


def _assert_envelope(response: httpx.Response, status: int, code: str, retry: str = "false",
                     param: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ENVELOPE_KEYS
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert response.headers["x-should-retry"] == retry
    assert "Traceback" not in response.text


BAD_BODIES = [
    ("malformed JSON", b'{"displayName": "Mac",', None),
    ("not UTF-8", b'\xff\xfe{"a": 1}', None),
    ("JSON array", b'["displayName"]', None),
    ("JSON string", b'"Mac"', None),
    ("JSON null", b"null", None),
    ("empty body", b"", None),
    ("wrong type", b'{"displayName": ["Mac"], "executionBackend": "local-model"}', "displayName"),
    ("unknown backend", b'{"displayName": "Mac", "executionBackend": "cloud"}',
     "executionBackend"),
    # The stdlib parser raises RecursionError / a plain ValueError for these, not
    # JSONDecodeError: they are still bad input, never an internal error.
    ("deeply nested", b'{"displayName": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
    ("huge integer", b'{"displayName": "Mac", "executionBackend": "local-model", "n": '
     + b"9" * 5000 + b"}", None),
    # Valid JSON text that has no UTF-8 form: it could be neither stored nor relayed.
    ("lone surrogate", b'{"displayName": "M\\ud800ac", "executionBackend": "local-model"}',
     None),
]


@pytest.mark.parametrize(("what", "raw", "param"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_runtime_bodies(gateway: InProcessGateway, what: str, raw: bytes,
                                  param: str | None) -> None:
    key = await gateway.create_key("acme")
    response = await gateway.client.post(
        "/v1/personal-runtimes", content=raw,
        headers={**api_headers(key), "content-type": "application/json"})
    _assert_envelope(response, 400, "invalid_request", param=param)


@pytest.mark.parametrize("raw", [b"[]", b"{bad", b'{"ttlSeconds": "ten"}', b'{"ttlSeconds": 9}'])
async def test_bad_bootstrap_bodies(gateway: InProcessGateway, raw: bytes) -> None:
    key = await gateway.create_key("acme")
    created = await gateway.client.post("/v1/personal-runtimes", headers=api_headers(key),
                                        json={"displayName": "M",
                                              "executionBackend": "local-model"})
    lattice_id = created.json()["runtime"]["latticeId"]
    response = await gateway.client.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                                         content=raw, headers=api_headers(key))
    expected_param = "ttlSeconds" if b"ttlSeconds" in raw else None
    _assert_envelope(response, 400, "invalid_request", param=expected_param)


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b"{}"])
async def test_bad_redeem_bodies(gateway: InProcessGateway, raw: bytes) -> None:
    response = await gateway.client.post("/v1/relay/redeem", content=raw)
    if raw == b"{}":  # valid JSON object, no token: unknown/malformed token
        _assert_envelope(response, 401, "invalid_bootstrap_token", param="bootstrapToken")
    else:
        _assert_envelope(response, 400, "invalid_request")


async def test_unknown_path_and_wrong_method(gateway: InProcessGateway) -> None:
    _assert_envelope(await gateway.client.get("/v1/nothing-here"), 404, "not_found")
    _assert_envelope(await gateway.client.get("/"), 404, "not_found")
    wrong = await gateway.client.put("/v1/personal-runtimes")
    _assert_envelope(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "GET, HEAD, POST"  # both routes of the path
    _assert_envelope(await gateway.client.patch("/v1/models"), 405, "method_not_allowed")
    _assert_envelope(await gateway.client.get("/v1/relay/redeem"), 405, "method_not_allowed")


async def test_unexpected_failure_is_a_500_envelope_and_logged_without_secrets(
        gateway: InProcessGateway, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    key = await gateway.create_key("acme")

    async def broken(account_id: str) -> list:
        raise RuntimeError("database fell over")

    monkeypatch.setattr(gateway.store, "list_runtimes", broken)
    with caplog.at_level(logging.ERROR, logger="lattice_gateway"):
        response = await gateway.client.get("/v1/personal-runtimes", headers=api_headers(key))
    _assert_envelope(response, 500, "internal_error", retry="true")
    assert "database fell over" not in response.text
    assert "RuntimeError" in caplog.text
    assert key not in caplog.text
    # And the app keeps serving.
    assert (await gateway.client.get("/healthz")).status_code == 200


async def test_health_and_openapi(gateway: InProcessGateway) -> None:
    health = await gateway.client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["ok"] is True and health.json()["version"]
    document = (await gateway.client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    for path in ("/v1/personal-runtimes", "/v1/personal-runtimes/{latticeId}",
                 "/v1/personal-runtimes/{latticeId}/bootstrap-tokens", "/v1/chat/completions",
                 "/v1/models"):
        assert path in document["paths"]


@pytest.mark.e2e
def test_huge_body_is_413_and_the_server_keeps_serving(tmp_path: Path,
                                                       lattice_home: Path) -> None:
    with run_gateway(tmp_path) as gw:
        key = gw.create_key("acme")
        ten_mb = b"{" + b" " * (10 * 1024 * 1024) + b"}"
        with httpx.Client(base_url=gw.url, timeout=10.0) as client:
            response = client.post("/v1/personal-runtimes", content=ten_mb,
                                   headers=api_headers(key))
            _assert_envelope(response, 413, "request_too_large")
            # Chunked (no Content-Length): refused while reading, not after buffering.
            chunked = client.post("/v1/personal-runtimes", headers=api_headers(key),
                                  content=iter([b" " * (1024 * 1024)] * 10))
            _assert_envelope(chunked, 413, "request_too_large")
        with httpx.Client(base_url=gw.url, timeout=10.0) as fresh:
            assert fresh.get("/healthz").status_code == 200
            ok = fresh.post("/v1/personal-runtimes", headers=api_headers(key),
                            json={"displayName": "Mac", "executionBackend": "local-model"})
            assert ok.status_code == 201


async def test_client_gone_mid_body_is_not_logged_as_an_internal_error(
        gateway: InProcessGateway, caplog: pytest.LogCaptureFixture) -> None:
    key = await gateway.create_key("acme")
    incoming = [{"type": "http.request", "body": b'{"displayName": ', "more_body": True},
                {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/personal-runtimes",
             "raw_path": b"/v1/personal-runtimes", "root_path": "", "query_string": b"",
             "headers": [(b"x-api-key", key.encode()), (b"content-length", b"100")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080),
             "app": gateway.app, "state": {}}
    with caplog.at_level(logging.INFO, logger="lattice_gateway"):
        await gateway.app(scope, receive, send)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # Nobody is left to read an answer; none pretends the gateway failed.
    assert all(m.get("status") != 500 for m in sent)
