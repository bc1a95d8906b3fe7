"""Property-based API testing of a real gateway process from its own /openapi.json.

schemathesis generates requests for every operation the document lists (the app API and
the daemon's relay routes), seeded and bounded, and checks each answer: no server error
(a 5xx is allowed only where the document lists it and only as the contract's envelope),
and status code, content type, headers and body as the document says.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lattice_protocol import ErrorCode
from tests.e2e.harness import create_runtime, mint_bootstrap
from tests.support.fake_daemon import ThreadedFakeDaemon
from tests.support.gateway import GatewayProcess, run_gateway

pytestmark = pytest.mark.e2e

# Per operation and mode (positive, negative); 15 operations, a few ms per case.
MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(tmp_path_factory.mktemp("st"), poll_window_seconds=1,
                     pickup_timeout_seconds=1, presence_window_seconds=1) as gw:
        yield gw


@pytest.fixture(scope="module")
def credentials(gateway: GatewayProcess) -> dict[str, str]:
    """An API key with both scopes, and a real runtime's daemon token."""
    key = gateway.create_key("schemathesis")
    runtime = create_runtime(gateway.url, key)
    token = mint_bootstrap(gateway.url, key, runtime["latticeId"])["bootstrapToken"]
    daemon = ThreadedFakeDaemon(gateway.url)
    try:
        daemon.redeem(token)
        daemon_token = daemon.daemon.daemon_token
    finally:
        daemon.stop()
    assert daemon_token
    return {"key": key, "daemon": daemon_token}


@pytest.fixture(scope="module")
def api_schema(gateway: GatewayProcess) -> Any:
    return schemathesis.openapi.from_url(gateway.url + "/openapi.json")


@schemathesis.check
def no_server_error(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """5xx only where the operation documents that status, and only in the envelope with
    a contract code (a runtime/provider failure such as 503 runtime_unreachable)."""
    if response.status_code < 500:
        return None
    documented = case.operation.definition.raw.get("responses", {})
    assert str(response.status_code) in documented, (
        f"undocumented server error {response.status_code}: {response.text[:300]}")
    code = response.json()["error"]["code"]
    assert code != ErrorCode.INTERNAL_ERROR.value, f"internal error: {response.text[:300]}"
    return None


CHECKS = [no_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]


def test_the_gateway_answers_every_generated_request_as_documented(
        api_schema: Any, gateway: GatewayProcess, credentials: dict[str, str]) -> None:
    # One hypothesis run per operation, in this test (schemathesis' pytest plugin does
    # not run on this pytest); derandomized: the same cases every run.
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]

    for operation, mode in [(op, mode) for op in operations for mode in GenerationMode]:
        # Positive cases fit the document; negative ones break it (bad input must get a
        # 4xx in the envelope, never a server error).
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None,
                  database=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            if case.path.startswith("/v1/relay/sessions"):
                headers = {"authorization": f"Bearer {credentials['daemon']}"}
            elif case.path == "/v1/relay/redeem":
                headers = {}
            else:
                headers = {"x-api-key": credentials["key"]}
            case.call_and_validate(base_url=gateway.url, headers=headers, checks=CHECKS,
                                   timeout=15)

        try:
            run()
        except Unsatisfiable:
            # Negative mode on an operation with no input to break (GET /healthz).
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
