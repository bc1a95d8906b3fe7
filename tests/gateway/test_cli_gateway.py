"""``lattice-gateway``: --version, keys create, tokens create, serve (as a real process)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from lattice_gateway.cli import main
from lattice_gateway.services import SCOPE_INFERENCE, SCOPE_MANAGE
from lattice_gateway.store import SqlStore
from lattice_protocol import KeyPair, TokenKind, __version__, token_kind
from tests.e2e.harness import create_runtime, mint_bootstrap, runtime_status
from tests.support.gateway import STARTUP_TIMEOUT, run_coroutine_blocking, run_gateway
from tests.support.net import free_port, wait_until


async def _lookup(database: str, secret: str):  # -> CredentialRecord | None
    store = await SqlStore.open(database)
    try:
        return await store.credential(secret)
    finally:
        await store.close()


def test_version_is_fast_and_exact() -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "lattice_gateway", "--version"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.strip() == f"lattice-gateway {__version__}"
    assert time.monotonic() - started < 5  # no database, no server imports


def test_keys_create_json(tmp_path: Path, lattice_home: Path) -> None:
    database = str(tmp_path / "gw.db")
    result = CliRunner().invoke(main, ["keys", "create", "--account", "acme", "--scope",
                                       SCOPE_INFERENCE, "--scope", SCOPE_MANAGE,
                                       "--database", database, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"apiKey", "credentialId", "name", "accountId", "scopes",
                            "database", "warnings"}
    assert payload["credentialId"].startswith("key_")
    assert payload["name"] == payload["credentialId"]  # unnamed: named by its id
    assert payload["database"] == f"sqlite:///{database}"
    assert token_kind(payload["apiKey"]) is TokenKind.API_KEY
    assert payload["scopes"] == [SCOPE_INFERENCE, SCOPE_MANAGE]
    record = run_coroutine_blocking(_lookup(database, payload["apiKey"]))
    assert record is not None and record.account_id == payload["accountId"]
    again = CliRunner().invoke(main, ["keys", "create", "--account", "acme", "--scope",
                                      SCOPE_INFERENCE, "--database", database, "--json"])
    second = json.loads(again.stdout)
    assert second["accountId"] == payload["accountId"]  # the account is reused
    assert second["apiKey"] != payload["apiKey"]


def test_credentials_are_named_for_their_app(tmp_path: Path, lattice_home: Path) -> None:
    database = str(tmp_path / "gw.db")
    made = CliRunner().invoke(main, ["tokens", "create", "--account", "acme", "--scope",
                                     SCOPE_INFERENCE, "--name", "Notes app", "--database",
                                     database, "--json"])
    assert made.exit_code == 0, made.output
    payload = json.loads(made.stdout)
    assert payload["name"] == "Notes app" and payload["credentialId"].startswith("tok_")
    record = run_coroutine_blocking(_lookup(database, payload["accessToken"]))
    assert record is not None
    assert (record.credential_id, record.name) == (payload["credentialId"], "Notes app")
    for bad in ("", " padded", "line\nbreak", "x" * 201):
        refused = CliRunner().invoke(main, ["keys", "create", "--account", "acme", "--scope",
                                            SCOPE_INFERENCE, "--name", bad, "--database",
                                            database])
        assert refused.exit_code == 2 and "--name" in refused.output, bad


def test_keys_create_human_prints_only_the_key_on_stdout(lattice_home: Path) -> None:
    # No --database: the default under LATTICE_HOME; env var also honoured below.
    result = CliRunner().invoke(main, ["keys", "create", "--account", "acme",
                                       "--scope", SCOPE_INFERENCE])
    assert result.exit_code == 0, result.output
    assert token_kind(result.stdout.strip()) is TokenKind.API_KEY
    assert "shown only once" in result.stderr
    assert (lattice_home / "gateway" / "gateway.db").exists()


def test_database_from_environment(tmp_path: Path, lattice_home: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmp_path / "from-env.db"
    monkeypatch.setenv("LATTICE_GATEWAY_DATABASE", str(database))
    result = CliRunner().invoke(main, ["keys", "create", "--account", "acme", "--scope",
                                       SCOPE_MANAGE, "--json"])
    assert result.exit_code == 0, result.output
    assert run_coroutine_blocking(_lookup(str(database), json.loads(result.stdout)["apiKey"]))


def test_serve_names_a_malformed_setting_variable(tmp_path: Path, lattice_home: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATTICE_GATEWAY_POLL_WINDOW_SECONDS", "abc")
    result = CliRunner().invoke(main, ["serve", "--database", str(tmp_path / "gw.db")])
    assert result.exit_code != 0
    assert "LATTICE_GATEWAY_POLL_WINDOW_SECONDS must be a number, got 'abc'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("variable", "value", "reason"), [
    ("LATTICE_GATEWAY_HEADER_TIMEOUT_SECONDS", "0", "header timeout"),
    ("LATTICE_GATEWAY_BODY_TIMEOUT_SECONDS", "-1", "body timeout"),
    ("LATTICE_GATEWAY_MAX_HEADER_BYTES", "10", "header limit"),
    ("LATTICE_GATEWAY_MAX_CONNECTIONS", "-5", "connection limits"),
])
def test_serve_refuses_front_door_limits_that_cannot_work(
        variable: str, value: str, reason: str, tmp_path: Path, lattice_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, ["serve", "--database", str(tmp_path / "gw.db")])
    assert result.exit_code != 0
    assert reason in result.output
    assert "Traceback" not in result.output


def test_tokens_create_json(tmp_path: Path, lattice_home: Path) -> None:
    database = str(tmp_path / "gw.db")
    before = time.time()
    result = CliRunner().invoke(main, ["tokens", "create", "--account", "user-1", "--scope",
                                       SCOPE_INFERENCE, "--ttl", "120", "--database", database,
                                       "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"accessToken", "credentialId", "name", "accountId", "scopes",
                            "expiresAt", "database", "warnings"}
    assert token_kind(payload["accessToken"]) is TokenKind.ACCESS
    assert payload["scopes"] == [SCOPE_INFERENCE]
    record = run_coroutine_blocking(_lookup(database, payload["accessToken"]))
    assert record is not None and record.kind == "access_token"
    assert before + 119 <= record.expires_ms / 1000 <= time.time() + 121
    assert payload["expiresAt"].endswith("Z")


@pytest.mark.parametrize("args", [
    ["keys", "create", "--account", "acme", "--scope", "lattice:compute:everything"],
    ["keys", "create", "--account", "acme"],
    ["tokens", "create", "--account", "acme", "--scope", SCOPE_INFERENCE, "--ttl", "0"],
    ["keys", "create", "--account", "acme", "--scope", SCOPE_MANAGE, "--database",
     "mysql://db/x"],
])
def test_bad_arguments_fail_with_a_reason(args: list[str], lattice_home: Path) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "Error" in result.output
    assert "Traceback" not in result.output


@pytest.mark.e2e
def test_serve_restart_keeps_records_and_keys_and_logs_no_secrets(tmp_path: Path,
                                                                  lattice_home: Path) -> None:
    with run_gateway(tmp_path, poll_window_seconds=2) as gw:
        key = gw.create_key("acme")
        token = gw.create_token("acme", [SCOPE_INFERENCE])
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            runtime = create_runtime(gw.url, key, "Mac")
            minted = mint_bootstrap(gw.url, key, runtime["latticeId"])
            assert minted["command"] == (f"lattice-ctl relay connect --gateway '{gw.url}' "
                                         f"--bootstrap-token '{minted['bootstrapToken']}'")
            redeemed = client.post("/v1/relay/redeem", json={
                "bootstrapToken": minted["bootstrapToken"],
                "daemonPublicKey": KeyPair.generate().public_text(),
                "daemonVersion": "0.1.0"}).json()
            assert redeemed["pollWindowSeconds"] == 2
            gateway_key = redeemed["gatewayPublicKey"]
        gw.restart()
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            listed = client.get("/v1/personal-runtimes",
                                headers={"authorization": f"Bearer {token}"}).json()
            assert [r["latticeId"] for r in listed["runtimes"]] == [runtime["latticeId"]]
            assert listed["runtimes"][0]["status"] == "unpaired"  # no daemon registered
            # The gateway keypair survives restarts: paired daemons keep working.
            minted = mint_bootstrap(gw.url, key, runtime["latticeId"])
            again = client.post("/v1/relay/redeem", json={
                "bootstrapToken": minted["bootstrapToken"],
                "daemonPublicKey": KeyPair.generate().public_text()}).json()
            assert again["gatewayPublicKey"] == gateway_key
        assert gw.stop() == 0  # graceful SIGTERM
        log = gw.log_text()
        assert "gateway ready" in log
        for secret in (key, token, minted["bootstrapToken"], redeemed["daemonToken"],
                       again["daemonToken"]):
            assert secret not in log


def test_keys_revoke_reads_the_secret_from_stdin(tmp_path: Path, lattice_home: Path) -> None:
    database = str(tmp_path / "gw.db")
    created = CliRunner().invoke(main, ["keys", "create", "--account", "acme", "--scope",
                                        SCOPE_MANAGE, "--database", database, "--json"])
    secret = json.loads(created.stdout)["apiKey"]
    revoked = CliRunner().invoke(main, ["keys", "revoke", "--database", database],
                                 input=secret + "\n")
    assert revoked.exit_code == 0, revoked.output
    assert secret not in revoked.output
    record = run_coroutine_blocking(_lookup(database, secret))
    assert record is not None and record.revoked
    twice = CliRunner().invoke(main, ["keys", "revoke", "--database", database],
                               input=secret + "\n")
    assert twice.exit_code != 0 and "no such active key" in twice.output


@pytest.mark.parametrize("url", ["ftp://x", "http://x/'; rm -rf ~'", "http://a b"])
def test_serve_refuses_unsafe_public_url(url: str, lattice_home: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--public-url", url, "--port", "1"])
    assert result.exit_code != 0
    assert "--public-url" in result.output


def test_serve_with_unreachable_database_fails_with_one_line(lattice_home: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--port", "1", "--database",
                                       "postgresql://user:hunter2@127.0.0.1:1/x"])
    assert result.exit_code == 1
    assert "cannot open the database postgresql://user@127.0.0.1:1/x" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


def test_sigterm_answers_held_polls_instead_of_waiting_them_out(tmp_path: Path,
                                                                lattice_home: Path) -> None:
    """A daemon's held poll must not hold the shutdown for the whole timeout."""
    from tests.support.fake_daemon import ThreadedFakeDaemon

    with run_gateway(tmp_path, poll_window_seconds=45, shutdown_timeout=40) as gw:
        key = gw.create_key("acme")
        runtime = create_runtime(gw.url, key, "Mac")
        minted = mint_bootstrap(gw.url, key, runtime["latticeId"])
        daemon = ThreadedFakeDaemon(gw.url)
        try:
            daemon.redeem(minted["bootstrapToken"])
            daemon.start()
            wait_until(lambda: runtime_status(gw.url, key, runtime["latticeId"])
                       == "reachable", what="daemon holding a poll")
            started = time.monotonic()
            assert gw.stop(timeout=60) == 0
            # Without releasing held polls this takes the 40 s shutdown timeout.
            assert time.monotonic() - started < 15
        finally:
            daemon.kill()


def test_commands_with_a_database_that_refuses_fail_with_one_line(
        lattice_home: Path) -> None:
    # The server answers but refuses (no such database): an error from the driver, not
    # an OSError.
    missing = "postgresql://postgres:hunter2@127.0.0.1:5432/lattice_no_such_database"
    for args in (["keys", "create", "--account", "acme", "--scope", SCOPE_INFERENCE],
                 ["tokens", "create", "--account", "acme", "--scope", SCOPE_INFERENCE],
                 ["serve", "--port", "1"]):
        result = CliRunner().invoke(main, [*args, "--database", missing])
        assert result.exit_code == 1
        assert isinstance(result.exception, SystemExit), result.exception  # not a crash
        assert "cannot open the database postgresql://postgres@127.0.0.1:5432/" \
            "lattice_no_such_database" in result.output
        assert "does not exist" in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert "hunter2" not in result.output


@pytest.mark.e2e
def test_run_gateway_removes_the_directory_it_made(lattice_home: Path) -> None:
    # (tests/support) Its SQLite file holds the gateway's private key: no leftovers in /tmp.
    with run_gateway(None) as gw:
        made = gw.log_path.parent
        assert (made / "gateway.db").is_file()
    assert not made.exists()


def _gateway_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lattice_gateway", *args], capture_output=True,
                          text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.e2e
def test_keys_and_tokens_create_say_which_database_and_warn_when_no_gateway_serves_it(
        tmp_path: Path, lattice_home: Path) -> None:
    """The common mistake: `serve --database X`, then `keys create` without it."""
    with run_gateway(tmp_path / "served") as gw:
        served = gw.database
        # Without --database: a fresh default database nobody serves. The key works
        # nowhere, and the command says so instead of leaving a silent 401 for later.
        stray = _gateway_cli("keys", "create", "--account", "acme", "--scope", SCOPE_MANAGE)
        assert stray.returncode == 0, stray.stderr
        default = lattice_home / "gateway" / "gateway.db"
        assert f"stored in the database sqlite:///{default}" in stray.stderr
        assert "did not exist until now: no gateway has served it yet" in stray.stderr
        assert "401 invalid_api_key" in stray.stderr
        rejected = httpx.get(f"{gw.url}/v1/personal-runtimes", timeout=10,
                             headers={"x-api-key": stray.stdout.strip()})
        assert rejected.status_code == 401

        # The same database again: it exists now, but still no gateway has served it.
        token = _gateway_cli("tokens", "create", "--account", "alice", "--scope",
                             SCOPE_INFERENCE, "--json")
        assert token.returncode == 0, token.stderr
        payload = json.loads(token.stdout)  # stdout stays pure JSON
        assert payload["database"] == f"sqlite:///{default}"
        assert payload["warnings"] and "has never been served" in payload["warnings"][0]
        assert "warning: the database" in token.stderr

        # The gateway's own database: named, no warning, and the key works.
        good = _gateway_cli("keys", "create", "--account", "acme", "--scope", SCOPE_MANAGE,
                            "--database", served, "--json")
        assert good.returncode == 0, good.stderr
        created = json.loads(good.stdout)
        assert created["database"] == f"sqlite:///{served}" and created["warnings"] == []
        assert "warning" not in good.stderr
        accepted = httpx.get(f"{gw.url}/v1/personal-runtimes", timeout=10,
                             headers={"x-api-key": created["apiKey"]})
        assert accepted.status_code == 200


@pytest.mark.e2e
def test_a_database_at_the_old_default_location_keeps_serving_with_advice(
        tmp_path: Path, lattice_home: Path) -> None:
    # An earlier gateway kept its default database in the daemon's data dir.
    old = lattice_home / "data" / "gateway.db"
    with run_gateway(lattice_home / "data") as gw:
        key = gw.create_key("acme")
        lattice_id = create_runtime(gw.url, key)["latticeId"]
    assert old.exists()
    port = str(free_port())
    server = subprocess.Popen([sys.executable, "-m", "lattice_gateway", "serve", "--port", port],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: runtime_status(url, key, lattice_id) == "unpaired",
                   timeout=STARTUP_TIMEOUT, what="the gateway on its old default database")
        assert not (lattice_home / "gateway" / "gateway.db").exists()
        made = _gateway_cli("keys", "create", "--account", "acme", "--scope", SCOPE_MANAGE)
        assert f"stored in the database sqlite:///{old}" in made.stderr
        assert "old default location" in made.stderr and "--purge" in made.stderr
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    assert "old default location" in log
