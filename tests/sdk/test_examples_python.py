"""examples/python/*.py run verbatim against a real gateway; only env vars are set."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator

import pytest

from lattice_gateway.services import SCOPE_INFERENCE, SCOPE_MANAGE
from tests.sdk.examples_support import (
    COMMAND_RE,
    REPLY,
    REPO,
    PairedAccount,
    example_env,
    paired_account,
    run_example,
)
from tests.support.fake_daemon import ThreadedFakeDaemon
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.e2e
EXAMPLES = REPO / "examples" / "python"


@pytest.fixture(scope="module")
def paired(gateway: GatewayProcess) -> Iterator[PairedAccount]:
    with paired_account(gateway, "examples-" + uuid.uuid4().hex[:8]) as account:
        yield account


def run_python(name: str, **env: str) -> str:
    return run_example([sys.executable, str(EXAMPLES / name)], example_env(**env)).stdout


def test_compute_client_example(paired: PairedAccount) -> None:
    out = run_python("compute_client.py", LATTICE_GATEWAY_URL=paired.gateway.url,
                     LOVELACE_API_KEY=paired.api_key)
    assert out == REPLY + "\n"


def test_stream_and_async_examples(paired: PairedAccount) -> None:
    env = {"LATTICE_GATEWAY_URL": paired.gateway.url, "LOVELACE_API_KEY": paired.api_key}
    assert run_python("stream_chat.py", **env) == REPLY + "\n"
    assert run_python("async_compute.py", **env) == f"{REPLY}\n{REPLY}\n"


def test_cloud_client_example_prints_a_working_command(gateway: GatewayProcess,
                                                       account: str) -> None:
    key = gateway.create_key(account, [SCOPE_MANAGE])
    out = run_python("cloud_client.py", LATTICE_GATEWAY_URL=gateway.url, LOVELACE_API_KEY=key)
    match = re.fullmatch(COMMAND_RE + "\n", out)
    assert match, out
    assert match["gateway"] == gateway.url
    daemon = ThreadedFakeDaemon(gateway.url)
    try:  # the printed token really pairs the runtime the example created
        pairing = daemon.redeem(match["token"])
        assert pairing["displayName"] == "Mac Studio in the office"
    finally:
        daemon.kill()


def test_oauth_example_lists_and_chats_but_cannot_manage(paired: PairedAccount) -> None:
    token = paired.gateway.create_token(paired.account, [SCOPE_INFERENCE])
    out = run_python("oauth_client.py", LATTICE_GATEWAY_URL=paired.gateway.url,
                     LOVELACE_ACCESS_TOKEN=token)
    lines = out.splitlines()
    assert lines[:2] == ["reachable: 1", f"chat: {REPLY}"]
    for what, line in zip(("create", "bootstrap", "revoke"), lines[2:], strict=True):
        assert line.startswith(f"{what}: insufficient_scopes (403): "), line
        assert SCOPE_MANAGE in line
    assert token not in out
