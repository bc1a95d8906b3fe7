"""An OpenAI-compatible server that requires an API key (LM Studio's "Require
Authentication"): the key comes from LATTICE_PROVIDER_API_KEY at `relay connect`, lives
in the 0600 config only, and is sent to the provider, never shown or logged."""

from __future__ import annotations

import stat
from pathlib import Path

import openai
import pytest

from tests.e2e.harness import (
    create_runtime,
    ctl,
    ctl_env,
    home_paths,
    mint_bootstrap,
    provider_process,
    start_daemon,
    stop_daemon,
    wait_relay_state,
)
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.e2e

PROVIDER_KEY = "lm-studio-secret-" + "9" * 16


def test_provider_api_key_from_the_environment_reaches_the_provider_only(
        lattice_home: Path, gateway: GatewayProcess, api_key: str) -> None:
    with provider_process("openai", api_key=PROVIDER_KEY, reply="Authenticated hello") as lm:
        runtime = create_runtime(gateway.url, api_key)
        minted = mint_bootstrap(gateway.url, api_key, runtime["latticeId"])
        done = ctl(lattice_home, "relay", "connect", "--gateway", gateway.url,
                   "--bootstrap-token", minted["bootstrapToken"], "--provider", "openai",
                   "--provider-url", lm.url, "--model", "qwen2.5-7b-instruct",
                   env=ctl_env(lattice_home, LATTICE_PROVIDER_API_KEY=PROVIDER_KEY))
        assert done.returncode == 0, done.stderr
        assert "warning" not in done.stderr  # the probe used the key: the server answered
        config_file = home_paths(lattice_home).config_file
        assert PROVIDER_KEY in config_file.read_text()
        assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
        try:
            start_daemon(lattice_home)
            wait_relay_state(lattice_home, "connected")
            with openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key,
                               max_retries=0, timeout=20) as client:
                reply = client.chat.completions.create(
                    model=f"lattice:personal:{runtime['latticeId']}",
                    messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "Authenticated hello"
            status = ctl(lattice_home, "--json", "status")
            assert status.returncode == 0 and PROVIDER_KEY not in status.stdout
        finally:
            stop_daemon(lattice_home)
        logs = "".join(p.read_text() for p in home_paths(lattice_home).log_dir.glob("*log*"))
        assert PROVIDER_KEY not in logs


def test_without_the_key_the_app_gets_provider_error_naming_the_server(
        lattice_home: Path, gateway: GatewayProcess, api_key: str) -> None:
    with provider_process("openai", api_key=PROVIDER_KEY) as lm:
        runtime = create_runtime(gateway.url, api_key)
        minted = mint_bootstrap(gateway.url, api_key, runtime["latticeId"])
        done = ctl(lattice_home, "relay", "connect", "--gateway", gateway.url,
                   "--bootstrap-token", minted["bootstrapToken"], "--provider", "openai",
                   "--provider-url", lm.url, "--model", "qwen2.5-7b-instruct")
        assert done.returncode == 0, done.stderr
        try:
            start_daemon(lattice_home)
            wait_relay_state(lattice_home, "connected")
            with openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key,
                               max_retries=0, timeout=20) as client, \
                    pytest.raises(openai.APIStatusError) as failed:
                client.chat.completions.create(
                    model=f"lattice:personal:{runtime['latticeId']}",
                    messages=[{"role": "user", "content": "hi"}])
        finally:
            stop_daemon(lattice_home)
    assert failed.value.status_code == 502
    assert failed.value.code == "provider_error"
    assert lm.url in str(failed.value.message) and "API token" in str(failed.value.message)
