"""lattice_client against a real gateway subprocess and a paired fake daemon."""

from __future__ import annotations

import re

import pytest

import lattice_client as lc
from lattice_gateway.services import SCOPE_INFERENCE, SCOPE_MANAGE
from tests.support.fake_daemon import Reply, ThreadedFakeDaemon, paired_daemon
from tests.support.gateway import GatewayProcess
from tests.support.net import async_wait_until, wait_until

pytestmark = pytest.mark.e2e

REPLY = "Hello from the fake daemon."
CHAT = {"messages": [{"role": "user", "content": "Say hello"}]}


def test_sync_lifecycle_chat_stream_and_revoke(gateway: GatewayProcess, account: str) -> None:
    key = gateway.create_key(account)
    with lc.create_lattice_cloud_client(base_url=gateway.url, api_key=key) as lattice, \
            lc.ComputeClient(lc.ApiKeyCredential(key), base_url=gateway.url) as compute:
        runtime = lattice.personal_runtimes.create(display_name="Mac Studio",
                                                   execution_backend="local-model")
        assert (runtime.status, runtime.display_name) == ("unpaired", "Mac Studio")
        assert runtime.created_at.endswith("Z") and runtime.account_id
        token = lattice.personal_runtimes.create_bootstrap_token(runtime, ttl_seconds=600)
        assert token.lattice_id == runtime.lattice_id
        assert token.bootstrap_token.startswith("plrt_v1")
        assert token.command == (f"lattice-ctl relay connect --gateway '{gateway.url}' "
                                 f"--bootstrap-token '{token.bootstrap_token}'")
        assert compute.list_reachable_personal_runtimes() == []

        daemon = ThreadedFakeDaemon(gateway.url, reply=Reply(text=REPLY))
        try:
            daemon.redeem(token.bootstrap_token)
            daemon.start()
            reachable = wait_until(compute.list_reachable_personal_runtimes, timeout=10,
                                   what="runtime reachable")
            assert [rt.lattice_id for rt in reachable] == [runtime.lattice_id]

            completion = compute.chat_complete_for_personal_runtime(reachable[0], CHAT)
            assert completion["object"] == "chat.completion"
            assert completion["choices"][0]["message"]["content"] == REPLY

            # A named local model travels in the model string to the daemon.
            compute.chat_complete_for_personal_runtime(runtime.lattice_id, CHAT,
                                                       model="llama3.2:3b")
            assert daemon.daemon.jobs[-1].model == "llama3.2:3b"

            with compute.stream_chat_for_personal_runtime(runtime, CHAT) as stream:
                chunks = list(stream)
            assert all(c["object"] == "chat.completion.chunk" for c in chunks)
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            assert text == REPLY and len(chunks) > 3  # word by word, not one blob

            model_ids = [m["id"] for m in compute.models()]
            assert any(runtime.lattice_id in model_id for model_id in model_ids)

            assert lattice.personal_runtimes.get(runtime.lattice_id).status == "reachable"
            revoked = lattice.personal_runtimes.revoke(runtime.lattice_id)
            assert revoked.status == "revoked"
            assert [rt.status for rt in lattice.personal_runtimes.list()] == ["revoked"]
            with pytest.raises(lc.RuntimeRevokedError) as info:
                compute.chat_complete_for_personal_runtime(runtime, CHAT)
            assert info.value.status == 403
            with pytest.raises(lc.LatticeAPIError) as info:
                lattice.personal_runtimes.create_bootstrap_token(runtime)
            assert info.value.status in (403, 409)
        finally:
            daemon.kill()


def test_errors_from_the_real_gateway(gateway: GatewayProcess, account: str) -> None:
    key = gateway.create_key(account)
    with lc.create_lattice_cloud_client(base_url=gateway.url, api_key=key) as lattice, \
            lc.ComputeClient({"kind": "apiKey", "apiKey": key}, base_url=gateway.url,
                             max_retries=0) as compute:
        runtime = lattice.personal_runtimes.create(display_name="never paired")
        with pytest.raises(lc.RuntimeUnreachableError) as unreachable:
            compute.chat_complete_for_personal_runtime(runtime, CHAT)
        assert unreachable.value.status == 503
        with pytest.raises(lc.RuntimeNotFoundError):
            lattice.personal_runtimes.get("rt_does_not_exist")
        with pytest.raises(lc.InvalidRequestError):
            lattice.personal_runtimes.create(display_name="x", execution_backend="gpu-farm")
        with pytest.raises(lc.InvalidRequestError) as bad_ttl:
            lattice.personal_runtimes.create_bootstrap_token(runtime, ttl_seconds=5)
        assert bad_ttl.value.status == 400
    with lc.ComputeClient(lc.ApiKeyCredential("sk_" + "x" * 43), base_url=gateway.url) as bad, \
            pytest.raises(lc.InvalidApiKeyError) as info:
        bad.list_personal_runtimes()
    assert info.value.status == 401 and "x" * 43 not in str(info.value)


def test_oauth_token_without_manage_scope(gateway: GatewayProcess, account: str) -> None:
    key = gateway.create_key(account)
    daemon = ThreadedFakeDaemon(gateway.url, reply=Reply(text=REPLY))
    try:
        with lc.create_lattice_cloud_client(base_url=gateway.url, api_key=key) as owner:
            runtime = owner.personal_runtimes.create(display_name="laptop")
            daemon.redeem(owner.personal_runtimes.create_bootstrap_token(runtime).bootstrap_token)
            daemon.start()
        access_token = gateway.create_token(account, [SCOPE_INFERENCE])
        credential = lc.OAuthCredential(access_token)
        with lc.ComputeClient(credential, base_url=gateway.url) as compute:
            reachable = wait_until(compute.list_reachable_personal_runtimes, timeout=10,
                                   what="runtime reachable")
            reply = compute.chat_complete_for_personal_runtime(reachable[0], CHAT)
            assert reply["choices"][0]["message"]["content"] == REPLY
        with lc.create_lattice_cloud_client(base_url=gateway.url,
                                            credential=credential) as lattice:
            assert [rt.lattice_id for rt in lattice.personal_runtimes.list()] == [
                runtime.lattice_id]
            for attempt in (
                lambda: lattice.personal_runtimes.create(display_name="nope"),
                lambda: lattice.personal_runtimes.create_bootstrap_token(runtime),
                lambda: lattice.personal_runtimes.revoke(runtime),
            ):
                with pytest.raises(lc.InsufficientScopesError) as info:
                    attempt()
                assert info.value.status == 403 and SCOPE_MANAGE in info.value.message
            assert lattice.personal_runtimes.get(runtime).status == "reachable"  # not revoked
    finally:
        daemon.kill()


async def test_async_clients_chat_stream_and_in_stream_error(
    gateway: GatewayProcess, account: str
) -> None:
    key = gateway.create_key(account)
    daemon = await paired_daemon(gateway.url, key, reply=Reply(text=REPLY))
    try:
        async with lc.AsyncComputeClient(base_url=gateway.url,
                                         credential=lc.ApiKeyCredential(key)) as compute, \
                lc.create_async_lattice_cloud_client(base_url=gateway.url,
                                                     api_key=key) as lattice:
            reachable = await async_wait_until(compute.list_reachable_personal_runtimes,
                                               timeout=10, what="runtime reachable")
            assert reachable[0].lattice_id == daemon.lattice_id
            done = await compute.chat_complete_for_personal_runtime(reachable[0], CHAT)
            assert done["choices"][0]["message"]["content"] == REPLY
            stream = await compute.stream_chat_for_personal_runtime(reachable[0], CHAT)
            parts = [c["choices"][0]["delta"].get("content") or "" async for c in stream]
            assert "".join(parts) == REPLY

            daemon.reply = Reply(text="one two three", error=("provider_error",
                                 "ollama is not running on localhost:11434"),
                                 error_after_chunks=1)
            stream = await compute.stream_chat_for_personal_runtime(reachable[0], CHAT)
            seen: list[str] = []
            with pytest.raises(lc.ProviderError, match="ollama is not running"):
                async for c in stream:
                    seen.append(c["choices"][0]["delta"].get("content") or "")
            assert "".join(seen) == "one "

            runtimes = await lattice.personal_runtimes.list()
            assert [rt.lattice_id for rt in runtimes] == [daemon.lattice_id]
            assert (await lattice.personal_runtimes.revoke(daemon.lattice_id)).status == "revoked"
            with pytest.raises(lc.RuntimeRevokedError):
                await compute.chat_complete_for_personal_runtime(daemon.lattice_id, CHAT)
    finally:
        await daemon.kill()


def test_model_string_shape() -> None:
    assert lc.model_string("rt_1") == "lattice:personal:rt_1"
    assert lc.model_string("rt_1", "llama3.2:3b") == "lattice:personal:rt_1/llama3.2:3b"
    assert re.fullmatch(r"lattice:personal:[\w-]+", lc.model_string("abc-DEF_1"))
    with pytest.raises(lc.LatticeConfigurationError):
        lc.model_string("a/b")


def test_leaving_a_stream_early_cancels_the_job_on_the_daemon(
    gateway: GatewayProcess, account: str
) -> None:
    key = gateway.create_key(account)
    daemon = ThreadedFakeDaemon(gateway.url, reply=Reply(text="a b c d e f g h",
                                                         chunk_delay=0.3))
    try:
        with lc.create_lattice_cloud_client(base_url=gateway.url, api_key=key) as lattice, \
                lc.ComputeClient(lc.ApiKeyCredential(key), base_url=gateway.url) as compute:
            runtime = lattice.personal_runtimes.create(display_name="slow box")
            daemon.redeem(lattice.personal_runtimes.create_bootstrap_token(runtime)
                          .bootstrap_token)
            daemon.start()
            wait_until(compute.list_reachable_personal_runtimes, timeout=10,
                       what="runtime reachable")
            with compute.stream_chat_for_personal_runtime(runtime, CHAT) as stream:
                for chunk in stream:
                    if chunk["choices"][0]["delta"].get("content"):
                        break  # the first word is enough
            assert stream.response.is_closed
            wait_until(lambda: daemon.daemon.cancels, timeout=10, what="cancel at the daemon")
            assert daemon.daemon.cancels[0].job_id == daemon.daemon.jobs[0].job_id
            assert daemon.daemon.jobs[0].job_id not in daemon.daemon.completed
    finally:
        daemon.kill()


def test_runtime_unreachable_is_retried_until_the_daemon_connects(
    gateway: GatewayProcess, account: str
) -> None:
    key = gateway.create_key(account)
    daemon = ThreadedFakeDaemon(gateway.url, reply=Reply(text=REPLY))
    try:
        with lc.create_lattice_cloud_client(base_url=gateway.url, api_key=key) as lattice, \
                lc.ComputeClient(lc.ApiKeyCredential(key), base_url=gateway.url) as compute:
            runtime = lattice.personal_runtimes.create(display_name="waking up")
            token = lattice.personal_runtimes.create_bootstrap_token(runtime).bootstrap_token
            waits: list[float] = []

            def daemon_connects_during_backoff(seconds: float) -> None:
                # The first attempt met an unpaired runtime (503, x-should-retry: true);
                # the daemon connects while the client backs off.
                waits.append(seconds)
                daemon.redeem(token)
                daemon.start()
                wait_until(lambda: lattice.personal_runtimes.get(runtime).is_reachable,
                           timeout=10, what="runtime reachable")

            compute._http.sleep = daemon_connects_during_backoff
            completion = compute.chat_complete_for_personal_runtime(runtime, CHAT)
            assert completion["choices"][0]["message"]["content"] == REPLY
            assert len(waits) == 1 and 0 < waits[0] <= 8
            assert len(daemon.daemon.jobs) == 1  # sent twice, run once
    finally:
        daemon.kill()
