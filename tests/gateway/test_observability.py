"""The gateway seen from operations: ``x-request-id`` on every response (errors and the
last-resort 500 included) and ``GET /metrics`` (off by default, token-guarded, bounded
labels). In-process app; the real-process checks are in tests/e2e/test_observability.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lattice_gateway import metrics
from lattice_protocol import KeyPair
from tests.gateway.conftest import api_headers
from tests.support.gateway import InProcessGateway, inprocess_gateway

METRICS_TOKEN = "metrics-token-0123456789abcdef"
GENERATED = re.compile(r"req_[0-9a-f]{24}")


async def test_every_response_carries_the_request_id(gateway: InProcessGateway,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    key = await gateway.create_key()
    client = gateway.client
    answers = [
        await client.get("/healthz"),
        await client.get("/no/such/endpoint"),
        await client.delete("/healthz"),
        await client.post("/v1/chat/completions", json={}),  # no credentials: 401
        await client.post("/v1/chat/completions", headers=api_headers(key),
                          content=b"{not json"),
        await client.get("/v1/personal-runtimes/lat_nosuchruntime0000", headers=api_headers(key)),
        await client.post("/v1/relay/redeem", json={"bootstrapToken": "lbt_wrong"}),
    ]
    assert [a.status_code for a in answers] == [200, 404, 405, 401, 400, 404, 400]
    ids = [a.headers["x-request-id"] for a in answers]
    assert all(GENERATED.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)

    # A sane id from the caller comes back as is; anything else is replaced.
    echoed = await client.get("/healthz", headers={"x-request-id": "app:trace/42@edge"})
    assert echoed.headers["x-request-id"] == "app:trace/42@edge"
    for bad in ("has spaces", "x" * 129, "semi;colon", ""):
        replaced = await client.get("/healthz", headers={"x-request-id": bad})
        assert GENERATED.fullmatch(replaced.headers["x-request-id"]), bad

    # The last-resort 500 (an unexpected exception in a route) carries it too.
    async def broken(lattice_id: str) -> Any:
        raise RuntimeError("store exploded")

    monkeypatch.setattr(gateway.store, "get_runtime", broken)
    failed = await client.post(
        "/v1/chat/completions", headers={**api_headers(key), "x-request-id": "boom-1"},
        json={"model": "lattice:personal:lat_abcdefghijkl", "messages": [
            {"role": "user", "content": "hi"}]})
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
    assert failed.headers["x-request-id"] == "boom-1"


async def test_metrics_are_off_by_default(gateway: InProcessGateway) -> None:
    answer = await gateway.client.get(
        "/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_need_the_token_and_use_route_templates(tmp_path: Path,
                                                              lattice_home: Path) -> None:
    # The registry is the process's: compare with what it held before.
    before = _samples(generate_latest(metrics.REGISTRY).decode())
    async with inprocess_gateway(tmp_path, metrics_token=METRICS_TOKEN) as gw:
        client = gw.client
        bearer = {"authorization": f"Bearer {METRICS_TOKEN}"}
        for headers in ({}, {"authorization": "Bearer wrong-token"},
                        {"x-api-key": METRICS_TOKEN[:-1]}):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["code"] == "invalid_api_key"

        key = await gw.create_key()
        for lattice_id in ("lat_aaaaaaaaaaaa", "lat_bbbbbbbbbbbb"):  # two raw paths, one route
            await client.get(f"/v1/personal-runtimes/{lattice_id}", headers=api_headers(key))
        await client.get("/v1/personal-runtimes")  # no credentials
        await client.get("/v1/personal-runtimes", headers=api_headers("sk_not_a_real_key"))
        await client.post("/v1/relay/redeem", json={
            "bootstrapToken": "lbt_unknown", "daemonPublicKey": KeyPair.generate().public_text()})
        await client.post("/v1/relay/sessions", json={})  # no daemon token
        await client.get("/no/such/page")

        scraped = await client.get("/metrics", headers=bearer)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain; version=")
        after = _samples(scraped.text)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    requests = "lattice_gateway_http_requests_total"
    assert grew(requests, method="GET", route="/v1/personal-runtimes/{lattice_id}",
                status="404") == 2
    assert grew(requests, method="GET", route="unmatched", status="404") == 1
    assert grew(requests, method="GET", route="/metrics", status="401") == 3
    for reason, count in (("missing", 1), ("unknown", 1), ("daemon_missing", 1),
                          ("metrics", 3)):
        assert grew("lattice_gateway_auth_failures_total", reason=reason) == count, reason
    assert grew("lattice_gateway_bootstrap_redemptions_total",
                outcome="invalid_bootstrap_token") == 1
    # Raw paths never become labels.
    assert "lat_aaaaaaaaaaaa" not in scraped.text and "/no/such/page" not in scraped.text
    for gauge in ("lattice_gateway_relay_sessions", "lattice_gateway_relay_parked_polls",
                  "lattice_gateway_jobs_queued"):
        assert (gauge, frozenset()) in after, gauge
    for histogram in ("lattice_gateway_chat_gateway_seconds",
                      "lattice_gateway_chat_pickup_seconds",
                      "lattice_gateway_chat_runtime_seconds",
                      "lattice_gateway_chat_time_to_first_token_seconds"):
        assert f"# TYPE {histogram} histogram" in scraped.text, histogram
    assert "process_resident_memory_bytes" in scraped.text


def test_the_metrics_token_file_is_read_and_checked(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lattice_gateway.cli import _metrics_token, main

    good = tmp_path / "token"
    good.write_text(METRICS_TOKEN + "\n")
    assert _metrics_token(str(good)) == METRICS_TOKEN
    short = tmp_path / "short"
    short.write_text("abc\n")
    for path, says in ((tmp_path / "missing", "cannot read --metrics-token-file"),
                       (short, "at least 16 characters")):
        result = CliRunner().invoke(main, ["serve", "--database", str(tmp_path / "g.db"),
                                           "--metrics-token-file", str(path)])
        assert result.exit_code == 1, result.output
        assert says in result.output and "Traceback" not in result.output
