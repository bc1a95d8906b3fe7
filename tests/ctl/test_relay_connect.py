"""`lattice-ctl relay connect | status | disconnect` against a real gateway process."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ctl.fake_control import fake_daemon_socket, ping_body
from tests.e2e.harness import (
    create_runtime,
    ctl,
    ctl_env,
    home_paths,
    mint_bootstrap,
    revoke_runtime,
    run_command_string,
)
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import closed_port, wait_until

PROVIDER = ("--provider", "ollama", "--provider-url", "http://127.0.0.1:9")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # ttl min 1 s: an expired token in one second instead of one minute
    with run_gateway(tmp_path_factory.mktemp("gw"), bootstrap_ttl_min=1) as gw:
        yield gw


@pytest.fixture(scope="module")
def key(gateway: GatewayProcess) -> str:
    return gateway.create_key("ctl-tests")


def _token(gateway: GatewayProcess, key: str, ttl: int | None = None) -> tuple[str, dict]:
    runtime = create_runtime(gateway.url, key)
    return runtime["latticeId"], mint_bootstrap(gateway.url, key, runtime["latticeId"], ttl)


def _connect(home: Path, gateway: GatewayProcess, token: str, *extra: str):
    return ctl(home, "relay", "connect", "--gateway", gateway.url, "--bootstrap-token", token,
               *PROVIDER, *extra)


def _assert_secret_absent(done, secret: str) -> None:
    assert secret not in done.stdout and secret not in done.stderr


def test_connect_pairs_writes_private_config_and_says_start_daemon(
        lattice_home: Path, gateway: GatewayProcess, key: str) -> None:
    lattice_id, minted = _token(gateway, key)
    done = ctl(lattice_home, "--json", "relay", "connect", "--gateway", gateway.url,
               "--bootstrap-token", minted["bootstrapToken"], *PROVIDER)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["latticeId"] == lattice_id
    assert data["daemonRunning"] is False and data["reachable"] is False
    _assert_secret_absent(done, minted["bootstrapToken"])
    paths = home_paths(lattice_home)
    assert stat.S_IMODE(paths.config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.config_dir.stat().st_mode) == 0o700
    text = paths.config_file.read_text()
    assert lattice_id in text and "lrdt_v1" in text  # the daemon token is kept (0600)
    assert minted["bootstrapToken"] not in text
    human = ctl(lattice_home, "relay", "status")
    assert f"Paired: runtime {lattice_id}" in human.stdout
    assert "not running" in human.stdout
    assert "gateway" not in human.stderr.lower() or human.returncode == 0
    assert ctl(lattice_home, "--json", "relay", "status").returncode == 0


def test_command_string_verbatim_prints_how_to_start(lattice_home: Path,
                                                     gateway: GatewayProcess, key: str) -> None:
    from tests.e2e.harness import write_provider_config

    write_provider_config(lattice_home, "ollama", "http://127.0.0.1:9")
    lattice_id, minted = _token(gateway, key)
    done = run_command_string(lattice_home, minted["command"])
    assert done.returncode == 0, done.stderr
    assert f"Paired: runtime {lattice_id}" in done.stdout
    assert "lattice-ctl daemon start" in done.stdout


def test_unknown_token_is_reported_precisely(lattice_home: Path,
                                             gateway: GatewayProcess) -> None:
    token = "plrt_v1_" + "A" * 43
    done = _connect(lattice_home, gateway, token)
    assert done.returncode == 1
    assert "does not know this bootstrap token" in done.stderr
    _assert_secret_absent(done, token)
    assert not home_paths(lattice_home).config_file.exists()
    assert not home_paths(lattice_home).key_file.exists()


def test_used_token_is_reported_precisely(lattice_home: Path, tmp_path: Path,
                                          gateway: GatewayProcess, key: str) -> None:
    _, minted = _token(gateway, key)
    first = _connect(lattice_home, gateway, minted["bootstrapToken"])
    assert first.returncode == 0, first.stderr
    other_home = tmp_path / "other"
    again = _connect(other_home, gateway, minted["bootstrapToken"])
    assert again.returncode == 1
    assert "already used" in again.stderr
    _assert_secret_absent(again, minted["bootstrapToken"])
    data = json.loads(ctl(other_home, "--json", "relay", "connect", "--gateway", gateway.url,
                          "--bootstrap-token", minted["bootstrapToken"], *PROVIDER).stdout)
    assert data["code"] == "bootstrap_token_used"


def test_expired_token_is_reported_precisely(lattice_home: Path, gateway: GatewayProcess,
                                             key: str) -> None:
    _, minted = _token(gateway, key, ttl=1)
    expires = time.time() + 1.0
    wait_until(lambda: time.time() > expires + 0.2, timeout=3, what="token expiry")
    done = _connect(lattice_home, gateway, minted["bootstrapToken"])
    assert done.returncode == 1
    assert "has expired" in done.stderr
    _assert_secret_absent(done, minted["bootstrapToken"])


def test_revoked_runtime_is_reported(lattice_home: Path, gateway: GatewayProcess,
                                     key: str) -> None:
    lattice_id, minted = _token(gateway, key)
    revoke_runtime(gateway.url, key, lattice_id)
    done = _connect(lattice_home, gateway, minted["bootstrapToken"])
    assert done.returncode == 1
    assert "was revoked on the gateway" in done.stderr


def test_existing_pairing_is_not_replaced_without_flag(lattice_home: Path,
                                                       gateway: GatewayProcess,
                                                       key: str) -> None:
    key_file = home_paths(lattice_home).key_file
    first_id, first = _token(gateway, key)
    assert _connect(lattice_home, gateway, first["bootstrapToken"]).returncode == 0
    first_key = key_file.read_text()
    second_id, second = _token(gateway, key)
    refused = _connect(lattice_home, gateway, second["bootstrapToken"])
    assert refused.returncode == 1
    assert "already paired" in refused.stderr and "--replace" in refused.stderr
    assert first_id in home_paths(lattice_home).config_file.read_text()
    # a failed redeem leaves the current pairing and its key alone
    unknown = _connect(lattice_home, gateway, "plrt_v1_" + "A" * 43, "--replace")
    assert unknown.returncode == 1
    assert first_id in home_paths(lattice_home).config_file.read_text()
    assert key_file.read_text() == first_key
    # the refusal did not burn the one-time token: --replace can still use it
    replaced = _connect(lattice_home, gateway, second["bootstrapToken"], "--replace")
    assert replaced.returncode == 0, replaced.stderr
    text = home_paths(lattice_home).config_file.read_text()
    assert second_id in text and first_id not in text
    # the new pairing has a new key: the old one cannot open its jobs
    assert key_file.read_text() != first_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_token_from_stdin_and_from_environment(lattice_home: Path, tmp_path: Path,
                                               gateway: GatewayProcess, key: str) -> None:
    lattice_id, minted = _token(gateway, key)
    done = ctl(lattice_home, "relay", "connect", "--gateway", gateway.url,
               "--bootstrap-token", "-", *PROVIDER, input=minted["bootstrapToken"] + "\n")
    assert done.returncode == 0, done.stderr
    assert lattice_id in home_paths(lattice_home).config_file.read_text()

    other = tmp_path / "env-home"
    lattice_id2, minted2 = _token(gateway, key)
    env = ctl_env(other, LATTICE_BOOTSTRAP_TOKEN=minted2["bootstrapToken"])
    done = ctl(other, "relay", "connect", "--gateway", gateway.url, *PROVIDER, env=env)
    assert done.returncode == 0, done.stderr
    assert lattice_id2 in home_paths(other).config_file.read_text()


def test_missing_token_and_malformed_token_fail_before_network(lattice_home: Path) -> None:
    done = ctl(lattice_home, "relay", "connect", "--gateway", "http://127.0.0.1:9", *PROVIDER)
    assert done.returncode == 2
    assert "no bootstrap token" in done.stderr
    done = ctl(lattice_home, "relay", "connect", "--gateway", "http://127.0.0.1:9",
               "--bootstrap-token", "sk_not_a_bootstrap_token", *PROVIDER)
    assert done.returncode == 2
    assert "not a bootstrap token" in done.stderr
    assert "sk_not_a_bootstrap_token" not in done.stderr



@pytest.mark.parametrize("url", ["http://[::1", "http://", "gateway.example:443"])
def test_unusable_gateway_url_fails_before_network(lattice_home: Path, url: str) -> None:
    done = ctl(lattice_home, "relay", "connect", "--gateway", url,
               "--bootstrap-token", "plrt_v1_" + "D" * 43, *PROVIDER)
    assert done.returncode == 2, done.stderr
    assert "--gateway must be an http:// or https:// URL" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("url", ["http://[::1", "http://", "localhost:11434"])
def test_unusable_provider_url_fails_before_network(lattice_home: Path, url: str) -> None:
    done = ctl(lattice_home, "relay", "connect", "--gateway", "http://127.0.0.1:9",
               "--bootstrap-token", "plrt_v1_" + "C" * 43, "--provider-url", url)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: --provider-url: provider URL {url!r}"[:30])
    assert "Traceback" not in done.stderr
    assert not home_paths(lattice_home).config_file.exists()


def test_unreachable_gateway_is_reported_with_proxy_hint(lattice_home: Path) -> None:
    token = "plrt_v1_" + "B" * 43
    url = f"http://127.0.0.1:{closed_port()}"
    done = ctl(lattice_home, "relay", "connect", "--gateway", url, "--bootstrap-token",
               token, *PROVIDER)
    assert done.returncode == 1
    assert f"cannot reach the gateway at {url}" in done.stderr
    assert "HTTPS_PROXY" in done.stderr
    _assert_secret_absent(done, token)


def test_not_a_gateway_is_reported(lattice_home: Path, gateway: GatewayProcess) -> None:
    token = "plrt_v1_" + "C" * 43
    done = ctl(lattice_home, "relay", "connect", "--gateway", gateway.url + "/nothing-here",
               "--bootstrap-token", token, *PROVIDER)
    assert done.returncode == 1
    assert "is --gateway the right URL?" in done.stderr


def test_no_provider_detected_without_terminal_pairs_anyway(
        lattice_home: Path, gateway: GatewayProcess, key: str) -> None:
    lattice_id, minted = _token(gateway, key)
    done = ctl(lattice_home, "relay", "connect", "--gateway", gateway.url,
               "--bootstrap-token", minted["bootstrapToken"])
    if "found" in done.stderr and "choose one" in done.stderr:  # a real Ollama/LM Studio
        assert done.returncode == 2
        return
    # the token is redeemed by now: the pairing is kept rather than wasted
    assert done.returncode == 0, done.stderr
    assert f"Paired: runtime {lattice_id}" in done.stdout
    assert "no local model server found" in done.stderr
    assert "ollama serve" in done.stderr and "as soon as it answers" in done.stderr
    config = home_paths(lattice_home).config_file.read_text()
    assert lattice_id in config and 'kind = "ollama"' in config


def test_a_local_model_runtime_is_not_served_by_an_earlier_embedded_engine(
        lattice_home: Path, gateway: GatewayProcess, key: str) -> None:
    from lattice_daemon.config import DaemonConfig, ProviderConfig, save_config

    # What an earlier assistant-runtime pairing (since disconnected) left in the config.
    save_config(home_paths(lattice_home), DaemonConfig(provider=ProviderConfig(
        kind="embedded", first_token_timeout=42.0)))
    lattice_id, minted = _token(gateway, key)  # a local-model runtime
    done = ctl(lattice_home, "relay", "connect", "--gateway", gateway.url,
               "--bootstrap-token", minted["bootstrapToken"])
    if "found" in done.stderr and "choose one" in done.stderr:  # a real Ollama/LM Studio
        assert done.returncode == 2
        return
    assert done.returncode == 0, done.stderr
    config = home_paths(lattice_home).config_file.read_text()
    assert lattice_id in config and 'kind = "embedded"' not in config


def test_a_revoked_pairing_is_replaced_without_asking(lattice_home: Path,
                                                      gateway: GatewayProcess,
                                                      key: str) -> None:
    first_id, first = _token(gateway, key)
    assert _connect(lattice_home, gateway, first["bootstrapToken"]).returncode == 0
    revoke_runtime(gateway.url, key, first_id)
    second_id, second = _token(gateway, key)
    done = run_command_string(lattice_home, second["command"] + " " + " ".join(PROVIDER))
    assert done.returncode == 0, done.stderr
    assert f"Replacing the pairing with runtime {first_id}: the runtime was revoked" \
        in done.stdout + done.stderr
    text = home_paths(lattice_home).config_file.read_text()
    assert second_id in text and first_id not in text


def test_connect_reloads_a_running_daemon_and_waits_for_connected(
        lattice_home: Path, gateway: GatewayProcess, key: str) -> None:
    lattice_id, minted = _token(gateway, key)
    with fake_daemon_socket(home_paths(lattice_home).socket) as daemon:
        daemon.answer("POST /v1/reload", 200, {"ok": True, "relay": {"state": "connecting"}})
        daemon.answer("GET /v1/ping", 200, ping_body())
        done = _connect(lattice_home, gateway, minted["bootstrapToken"])
        assert done.returncode == 0, done.stderr
        assert (f"Connected: runtime {lattice_id} (Test laptop) is reachable at "
                f"{gateway.url}") in done.stdout
        routes = [route for route, _ in daemon.requests]
        assert routes[0] == "POST /v1/reload" and "GET /v1/ping" in routes
        assert all(minted["bootstrapToken"].encode() not in raw for _, raw in daemon.requests)


def test_connect_reports_repair_required_from_daemon(lattice_home: Path,
                                                     gateway: GatewayProcess,
                                                     key: str) -> None:
    _, minted = _token(gateway, key)
    with fake_daemon_socket(home_paths(lattice_home).socket) as daemon:
        daemon.answer("POST /v1/reload", 200, {"ok": True})
        daemon.answer("GET /v1/ping", 200, ping_body(relay={
            "state": "repair_required", "lastError": "runtime revoked: re-pair required"}))
        done = _connect(lattice_home, gateway, minted["bootstrapToken"])
        assert done.returncode == 1
        assert "re-pair required" in done.stderr


def test_disconnect_forgets_pairing_with_daemon_down_and_tells_running_daemon(
        lattice_home: Path, gateway: GatewayProcess, key: str) -> None:
    lattice_id, minted = _token(gateway, key)
    assert _connect(lattice_home, gateway, minted["bootstrapToken"]).returncode == 0
    with fake_daemon_socket(home_paths(lattice_home).socket) as daemon:
        daemon.answer("POST /v1/relay/disconnect", 200, {"ok": True})
        done = ctl(lattice_home, "--json", "relay", "disconnect")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"ok": True, "wasPaired": True,
                                           "latticeId": lattice_id, "daemonNotified": True}
        assert [r for r, _ in daemon.requests] == ["POST /v1/relay/disconnect"]
    assert "[relay]" not in home_paths(lattice_home).config_file.read_text()
    again = ctl(lattice_home, "relay", "disconnect")  # daemon down, nothing paired
    assert again.returncode == 0 and "Not paired" in again.stdout
    assert httpx.get(gateway.url + "/healthz").status_code == 200


def test_status_of_a_paired_machine_without_daemon(lattice_home: Path,
                                                   gateway: GatewayProcess, key: str) -> None:
    lattice_id, minted = _token(gateway, key)
    assert _connect(lattice_home, gateway, minted["bootstrapToken"]).returncode == 0
    done = ctl(lattice_home, "status")
    assert done.returncode == 3
    lines = done.stdout.splitlines()
    assert lines[0] == "Daemon not running"
    assert f"Runtime: {lattice_id} (Test laptop)" in lines
    assert f"Gateway: {gateway.url}" in lines
    assert "lattice-ctl daemon start" in done.stdout
    data = json.loads(ctl(lattice_home, "--json", "status").stdout)
    assert data["runtime"]["latticeId"] == lattice_id and data["running"] is False


def test_unreachable_proxy_is_named_in_the_error(lattice_home: Path) -> None:
    token = "plrt_v1_" + "E" * 43
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = ctl_env(lattice_home, HTTP_PROXY=proxy, HTTPS_PROXY=proxy)
    done = ctl(lattice_home, "relay", "connect", "--gateway", "http://gateway.example",
               "--bootstrap-token", token, *PROVIDER, env=env)
    assert done.returncode == 1
    assert "proxy" in done.stderr.lower() and "NO_PROXY" in done.stderr
    _assert_secret_absent(done, token)


def test_provider_url_alone_detects_the_wire_format(lattice_home: Path,
                                                    gateway: GatewayProcess, key: str) -> None:
    from lattice_daemon.config import load_config
    from tests.servers import run_openai_server

    _, minted = _token(gateway, key)
    with run_openai_server() as server:
        done = ctl(lattice_home, "relay", "connect", "--gateway", gateway.url,
                   "--bootstrap-token", minted["bootstrapToken"], "--provider-url", server.url)
    assert done.returncode == 0, done.stderr
    provider = load_config(home_paths(lattice_home)).provider
    assert (provider.kind, provider.url) == ("openai", server.url)


def test_provider_down_is_warned_but_pairing_proceeds(lattice_home: Path,
                                                      gateway: GatewayProcess,
                                                      key: str) -> None:
    _, minted = _token(gateway, key)
    done = _connect(lattice_home, gateway, minted["bootstrapToken"])  # provider on port 9
    assert done.returncode == 0, done.stderr
    assert "warning:" in done.stderr and "Pairing anyway" in done.stderr


def test_model_is_checked_the_way_ollama_names_it(lattice_home: Path, gateway: GatewayProcess,
                                                  key: str) -> None:
    """'llama3.2' is Ollama's 'llama3.2:latest': no warning; a missing model is named."""
    from tests.servers import run_ollama_server

    with run_ollama_server(models=["llama3.2:latest"]) as server:
        for model, warned in (("llama3.2", False), ("qwen2.5:7b", True)):
            _, minted = _token(gateway, key)
            done = ctl(lattice_home, "relay", "connect", "--gateway", gateway.url,
                       "--bootstrap-token", minted["bootstrapToken"], "--provider", "ollama",
                       "--provider-url", server.url, "--model", model, "--replace")
            assert done.returncode == 0, done.stderr
            assert ("has no model" in done.stderr) is warned, done.stderr
