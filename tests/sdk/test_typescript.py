"""The TypeScript SDKs: scripts/test-ts (npm ci, tsc -b, node --test) against a real gateway,
then the compiled examples/typescript snippets run verbatim with only env vars set.

One test on purpose: the build and the examples share sdk/typescript/node_modules, so
splitting them would let two xdist workers run ``npm ci`` in the same directory.
"""

from __future__ import annotations

import re
import shutil
import uuid

import pytest

from lattice_gateway.services import SCOPE_INFERENCE, SCOPE_MANAGE
from tests.sdk.examples_support import (
    COMMAND_RE,
    REPLY,
    REPO,
    example_env,
    paired_account,
    run_example,
)
from tests.support.fake_daemon import ThreadedFakeDaemon
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.e2e
EXAMPLES = REPO / "examples" / "typescript" / "dist"
NODE_TESTS = 44  # unit (39) + integration (5): all must run, none skipped


def _summary(output: str, name: str) -> int:
    match = re.search(rf"^\S+ {name} (\d+)$", output, re.MULTILINE)
    assert match, f"no '{name}' in node's summary:\n{output[-3000:]}"
    return int(match[1])


def test_typescript_sdks_and_examples(gateway: GatewayProcess) -> None:
    assert shutil.which("node") and shutil.which("npm"), "node and npm are required"
    with paired_account(gateway, "ts-" + uuid.uuid4().hex[:8]) as paired:
        access_token = gateway.create_token(paired.account, [SCOPE_INFERENCE])
        build = run_example([str(REPO / "scripts" / "test-ts")], example_env(
            LATTICE_TEST_GATEWAY_URL=gateway.url, LATTICE_TEST_API_KEY=paired.api_key,
            LATTICE_TEST_ACCESS_TOKEN=access_token, LATTICE_TEST_REPLY=REPLY), timeout=300)
        out = build.stdout
        assert (_summary(out, "pass"), _summary(out, "fail"), _summary(out, "skipped"),
                _summary(out, "cancelled")) == (NODE_TESTS, 0, 0, 0), out[-3000:]

        def node(name: str, **env: str) -> str:
            return run_example(["node", str(EXAMPLES / name)], example_env(**env)).stdout

        as_app = {"LATTICE_GATEWAY_URL": gateway.url, "LOVELACE_API_KEY": paired.api_key}
        assert node("compute_client.js", **as_app) == REPLY + "\n"
        assert node("stream_chat.js", **as_app) == REPLY + "\n"

        lines = node("oauth_client.js", LATTICE_GATEWAY_URL=gateway.url,
                     LOVELACE_ACCESS_TOKEN=access_token).splitlines()
        assert lines[:2] == ["reachable: 1", f"chat: {REPLY}"]
        for what, line in zip(("create", "bootstrap", "revoke"), lines[2:], strict=True):
            assert line.startswith(f"{what}: insufficient_scopes (403): "), line
            assert SCOPE_MANAGE in line

        manage_key = gateway.create_key("ts-admin-" + uuid.uuid4().hex[:8], [SCOPE_MANAGE])
        out = node("cloud_client.js", LATTICE_GATEWAY_URL=gateway.url,
                   LOVELACE_API_KEY=manage_key)
        match = re.fullmatch(COMMAND_RE + "\n", out)
        assert match and match["gateway"] == gateway.url, out
        daemon = ThreadedFakeDaemon(gateway.url)
        try:  # the printed command's token pairs the runtime the example created
            assert daemon.redeem(match["token"])["displayName"] == "Mac Studio in the office"
        finally:
            daemon.kill()
