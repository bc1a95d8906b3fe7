"""docs/api.md is the gateway's public API as it is.

Its endpoint table (with docs/protocol.md's relay routes) is exactly what the gateway
serves; its error table is exactly ``lattice_protocol.ErrorCode`` (status and type); and
every curl example runs, as written, against a real gateway in document order, answering
the documented status with a body of the documented shape.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lattice_protocol import ErrorCode
from tests.docs.test_docs import REPO, table_endpoints
from tests.support.fake_daemon import ThreadedFakeDaemon
from tests.support.gateway import run_gateway
from tests.support.net import wait_until

API_MD = REPO / "docs" / "api.md"
VARIABLES = ("LATTICE_GATEWAY_URL", "LOVELACE_API_KEY", "LATTICE_ID", "LATTICE_VERSION")
# Values that are the contract, not an example's particulars.
FIXED_FIELDS = {"code", "type", "param", "status", "object", "executionBackend", "role",
                "finish_reason", "displayName", "ok"}


@dataclass
class Example:
    command: str
    status: int
    body_kind: str | None  # "json", "text" (SSE) or None (not shown)
    body: str


def examples(text: str) -> list[Example]:
    """Each ```sh block starting with curl, the `Response: \\`NNN` line after it, and the
    response block that follows that line, if any."""
    found: list[Example] = []
    pattern = re.compile(r"```sh\n(curl .*?)```\n(.*?)(?=```sh\n|\Z)", re.DOTALL)
    for match in pattern.finditer(text):
        after = match.group(2)
        status = re.search(r"^Response: `(\d{3})", after, re.MULTILINE)
        assert status, f"no `Response: NNN` after:\n{match.group(1)}"
        body = re.match(r"\s*(?:Response:[^\n]*\n)\s*```(json|text)\n(.*?)```",
                        after[status.start():], re.DOTALL)
        found.append(Example(match.group(1).strip(), int(status.group(1)),
                             body.group(1) if body else None, body.group(2) if body else ""))
    return found


def shape_problems(documented: Any, actual: Any, path: str = "") -> list[str]:
    """Where the response differs from the documented one in keys, types or fixed values."""
    if isinstance(documented, dict):
        if not isinstance(actual, dict):
            return [f"{path or '.'}: documented an object, got {actual!r}"]
        problems = [f"{path}.{k}: documented, not in the response"
                    for k in documented.keys() - actual.keys()]
        problems += [f"{path}.{k}: in the response, not documented"
                     for k in actual.keys() - documented.keys()]
        for key in documented.keys() & actual.keys():
            problems += shape_problems(documented[key], actual[key], f"{path}.{key}")
            if key in FIXED_FIELDS and not isinstance(documented[key], dict | list) \
                    and documented[key] != actual[key]:
                problems.append(f"{path}.{key}: documented {documented[key]!r}, "
                                f"got {actual[key]!r}")
        return problems
    if isinstance(documented, list):
        if not isinstance(actual, list):
            return [f"{path}: documented an array, got {actual!r}"]
        if documented and actual:
            return shape_problems(documented[0], actual[0], f"{path}[0]")
        return []
    if documented is None or actual is None:
        return []
    kinds = (bool, int | float, str)
    if not any(isinstance(documented, k) and isinstance(actual, k) for k in kinds):
        return [f"{path}: documented {documented!r}, got {actual!r}"]
    return []


def sse_chunks(text: str) -> list[Any]:
    data = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", text[-500:]
    return [json.loads(chunk) for chunk in data[:-1]]


def body_problems(example: Example, body: str) -> list[str]:
    if example.body_kind == "json":
        return shape_problems(json.loads(example.body), json.loads(body))
    if example.body_kind == "text":
        documented, actual = sse_chunks(example.body), sse_chunks(body)
        return (shape_problems(documented[0], actual[0], "first chunk")
                + shape_problems(documented[-1], actual[-1], "last chunk"))
    return []


def run_example(command: str, env: dict[str, str], workdir: Path) -> tuple[int, str]:
    """The example as a user pastes it into sh; curl also records the response headers."""
    headers = workdir / "headers.txt"
    headers.unlink(missing_ok=True)
    script = f"curl() {{ command curl -D '{headers}' \"$@\"; }}\n{command}\n"
    done = subprocess.run(["/bin/sh", "-c", script], env=env, cwd=workdir, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    statuses = re.findall(r"^HTTP/[\d.]+ (\d{3})", headers.read_text(), re.MULTILINE)
    return int(statuses[-1]), done.stdout


def test_the_doc_shows_examples_with_only_its_variables() -> None:
    text = API_MD.read_text()
    found = examples(text)
    assert len(found) >= 15
    used = {name for example in found
            for name in re.findall(r"\$\{?([A-Z_]+)", example.command)}
    assert used == set(VARIABLES)
    assert all(f"export {name}=" in text for name in VARIABLES)


def test_the_endpoint_table_is_exactly_what_the_gateway_serves() -> None:
    from lattice_gateway.app import create_app
    from lattice_gateway.settings import Settings

    served = {(method, re.sub(r"\{[^}]+\}", "{}", route.path))
              for route in create_app(Settings()).routes
              for method in getattr(route, "methods", set()) - {"HEAD"}}
    documented = table_endpoints("api.md")
    assert documented | table_endpoints("protocol.md") == served
    assert not documented & table_endpoints("protocol.md")
    sections = {(method, re.sub(r"\{[^}]+\}", "{}", path)) for method, path in re.findall(
        r"^### `(GET|POST|DELETE|PUT|PATCH) (/[^`]+)`", API_MD.read_text(), re.MULTILINE)}
    assert sections == documented  # each endpoint has its section


def test_the_openapi_document_lists_exactly_the_documented_endpoints_and_codes() -> None:
    """lattice_gateway/openapi.json (served at /openapi.json, which schemathesis tests
    against a real gateway) describes the same routes as docs/api.md and protocol.md,
    and its error codes are the contract's."""
    document = json.loads((REPO / "lattice_gateway" / "openapi.json").read_text())
    described = {(method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
                 for path, item in document["paths"].items()
                 for method in item if method != "parameters"}
    assert described == table_endpoints("api.md") | table_endpoints("protocol.md")
    codes = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"][
        "code"]["enum"]
    assert sorted(codes) == sorted(code.value for code in ErrorCode)


def test_the_error_table_is_exactly_the_contracts_codes() -> None:
    text = API_MD.read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \| `([a-z_]+)` \|", text, re.MULTILINE)
    assert {code for code, _, _ in rows} == {code.value for code in ErrorCode}
    for code, status, error_type in rows:
        assert (int(status), error_type) == (ErrorCode(code).status,
                                             ErrorCode(code).error_type), code
    # Every "NNN `code`" in the prose names a real code with its real status.
    for status, code in re.findall(r"\b(\d{3}) `([a-z_]+)`", text):
        assert ErrorCode(code).status == int(status), (status, code)


@pytest.mark.e2e
def test_every_curl_example_runs_against_a_real_gateway(tmp_path: Path,
                                                        lattice_home: Path) -> None:
    with run_gateway(tmp_path / "gw") as gw:
        version = httpx.get(f"{gw.url}/healthz", timeout=10).json()["version"]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path),
               "LATTICE_GATEWAY_URL": gw.url, "LOVELACE_API_KEY": gw.create_key("acme"),
               "LATTICE_VERSION": version, "NO_PROXY": "127.0.0.1"}
        daemons: list[ThreadedFakeDaemon] = []
        problems: list[str] = []
        try:
            for example in examples(API_MD.read_text()):
                status, body = run_example(example.command, env, tmp_path)
                if status != example.status:
                    problems.append(f"{example.command}\n  documented {example.status}, "
                                    f"got {status}: {body[:300]}")
                    continue
                problems += [f"{example.command}\n  {p}" for p in body_problems(example, body)]
                answer = json.loads(body) if body.startswith("{") else {}
                if "LATTICE_ID" not in env and "runtime" in answer:
                    env["LATTICE_ID"] = answer["runtime"]["latticeId"]
                if "bootstrapToken" in answer and not daemons:
                    # The user runs the command on their machine: a daemon pairs and polls.
                    daemons.append(ThreadedFakeDaemon(gw.url))
                    daemons[0].redeem(answer["bootstrapToken"])
                    daemons[0].start()
                    wait_until(lambda: httpx.get(
                        f"{gw.url}/v1/personal-runtimes/{env['LATTICE_ID']}", timeout=10,
                        headers={"x-api-key": env["LOVELACE_API_KEY"]},
                    ).json()["runtime"]["status"] == "reachable", what="the runtime reachable")
        finally:
            for daemon in daemons:
                daemon.kill()
    assert daemons, "no example minted a bootstrap token"
    assert problems == []
