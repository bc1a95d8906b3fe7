"""Chat completions through a real gateway process to the fake daemon, with the official
``openai`` client (Bearer auth): JSON, SSE streaming, errors, keep-alives, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.fake_daemon import FakeDaemon, Reply, paired_daemon
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import async_wait_until

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(Path(tmp_path_factory.mktemp("gw")), poll_window_seconds=2,
                     presence_window_seconds=1, pickup_timeout_seconds=1,
                     first_token_timeout_seconds=1.5, idle_timeout_seconds=1,
                     sse_keepalive_seconds=0.2) as gw:
        yield gw


@pytest.fixture(scope="module")
def api_key(gateway: GatewayProcess) -> str:
    return gateway.create_key("acme")


@pytest.fixture
async def client(gateway: GatewayProcess, api_key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=api_key,
                                  max_retries=0, timeout=10) as c:
        yield c


async def start_daemon(gateway: GatewayProcess, api_key: str, reply: Reply) -> FakeDaemon:
    return await paired_daemon(gateway.url, api_key, reply=reply)


def model_of(daemon: FakeDaemon, local: str | None = None) -> str:
    base = f"lattice:personal:{daemon.lattice_id}"
    return f"{base}/{local}" if local else base


async def test_non_streaming_answer_and_sealed_job_shape(
        gateway: GatewayProcess, api_key: str, client: openai.AsyncOpenAI) -> None:
    daemon = await start_daemon(gateway, api_key, Reply(text="Hello from home"))
    try:
        completion = await client.chat.completions.create(
            model=model_of(daemon), messages=MESSAGES, temperature=0.2)
        assert completion.choices[0].message.content == "Hello from home"
        assert completion.model == model_of(daemon)  # the app's model string, echoed
        assert completion.usage is not None and completion.usage.total_tokens > 0
        job = daemon.jobs[-1]
        assert job.model == "llama3.2:3b"  # the runtime's default model
        assert "model" not in job.request
        assert job.request["messages"] == MESSAGES and job.request["temperature"] == 0.2
        assert job.stream is False
        await client.chat.completions.create(model=model_of(daemon, "qwen2.5:7b"),
                                             messages=MESSAGES)
        assert daemon.jobs[-1].model == "qwen2.5:7b"
    finally:
        await daemon.stop()


async def test_the_sealed_job_names_the_app_that_asked(
        gateway: GatewayProcess, api_key: str) -> None:
    # Two apps of one account: a named key and a named access token.
    notes_key = gateway.create_key("acme", name="Notes app")
    chat_token = gateway.create_token("acme", name="Chat web")
    daemon = await start_daemon(gateway, api_key, Reply(text="hi"))
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            answered = await http.post(
                "/v1/chat/completions", headers={"authorization": f"Bearer {notes_key}",
                                                 "x-request-id": "app-req-42"},
                json={"model": model_of(daemon), "messages": MESSAGES, "user": "u-7"})
            assert answered.status_code == 200, answered.text
            first = daemon.jobs[-1].requester
            answered = await http.post(
                "/v1/chat/completions", headers={"authorization": f"Bearer {chat_token}",
                                                 "x-request-id": "bad id with spaces"},
                json={"model": model_of(daemon), "messages": MESSAGES})
            assert answered.status_code == 200, answered.text
            second = daemon.jobs[-1].requester
        assert first is not None and second is not None
        assert (first.credential_kind, first.credential_name, first.user,
                first.request_id) == ("apiKey", "Notes app", "u-7", "app-req-42")
        assert first.credential_id.startswith("key_")
        assert first.account_id == second.account_id
        assert (second.credential_kind, second.credential_name, second.user) == (
            "oauth", "Chat web", None)
        assert second.credential_id.startswith("tok_")
        # Not a sane id: the gateway made its own rather than pass the header on.
        assert second.request_id is not None and second.request_id.startswith("req_")
        for secret in (notes_key, chat_token):
            assert secret not in repr(first) + repr(second)
    finally:
        await daemon.stop()


async def test_streaming_without_and_with_usage(
        gateway: GatewayProcess, api_key: str, client: openai.AsyncOpenAI) -> None:
    daemon = await start_daemon(gateway, api_key, Reply(text="one two three"))
    try:
        stream = await client.chat.completions.create(model=model_of(daemon),
                                                      messages=MESSAGES, stream=True)
        chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "one two three"
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert all(c.usage is None for c in chunks)
        assert {c.model for c in chunks} == {model_of(daemon)}
        assert len({c.id for c in chunks}) == 1  # the daemon's id is kept

        stream = await client.chat.completions.create(
            model=model_of(daemon), messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
        assert daemon.jobs[-1].stream is True
    finally:
        await daemon.stop()


async def test_provider_error_raises_with_code_and_provider_name(
        gateway: GatewayProcess, api_key: str, client: openai.AsyncOpenAI) -> None:
    daemon = await start_daemon(gateway, api_key, Reply(
        error=("provider_error", "Ollama at http://localhost:11434 is not running")))
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model=model_of(daemon), messages=MESSAGES)
        assert caught.value.status_code == 502
        assert caught.value.code == "provider_error"
        assert "Ollama" in caught.value.message
        assert caught.value.response.headers["x-should-retry"] == "false"
        # Before the first byte, a streaming request gets the same status envelope.
        with pytest.raises(openai.InternalServerError) as caught_stream:
            await client.chat.completions.create(model=model_of(daemon), messages=MESSAGES,
                                                 stream=True)
        assert caught_stream.value.status_code == 502
        assert caught_stream.value.code == "provider_error"
    finally:
        await daemon.stop()


async def test_mid_stream_error_raises_api_error_after_chunks(
        gateway: GatewayProcess, api_key: str, client: openai.AsyncOpenAI) -> None:
    daemon = await start_daemon(gateway, api_key, Reply(
        text="a b c d", error=("provider_error", "LM Studio dropped the model"),
        error_after_chunks=2))
    try:
        stream = await client.chat.completions.create(model=model_of(daemon),
                                                      messages=MESSAGES, stream=True)
        received: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        assert "".join(received) == "a b "  # never a silent truncation
        assert "LM Studio" in caught.value.message
    finally:
        await daemon.stop()


async def test_keepalives_while_the_model_loads_and_chunks_arrive_live(
        gateway: GatewayProcess, api_key: str) -> None:
    daemon = await start_daemon(gateway, api_key, Reply(
        text="w1 w2 w3 w4", first_delay=0.7, chunk_delay=0.15))
    try:
        keepalives_before_data = 0
        data_times: list[float] = []
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http, http.stream(
                "POST", gateway.url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {api_key}"},
                json={"model": model_of(daemon), "messages": MESSAGES, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-cache"
            assert r.headers["x-accel-buffering"] == "no"
            lines = []
            async for line in r.aiter_lines():
                if line == ": keep-alive" and not data_times:
                    keepalives_before_data += 1
                elif line.startswith("data: "):
                    data_times.append(time.monotonic())
                    lines.append(line)
        assert keepalives_before_data >= 2
        assert lines[-1] == "data: [DONE]"
        content_times = data_times[1:5]  # the four content chunks after the role chunk
        assert content_times[-1] - content_times[0] >= 0.3  # live, not buffered to the end
    finally:
        await daemon.stop()


async def _wait_for_job(daemon: FakeDaemon, count: int = 1) -> None:
    async def has_job() -> bool:
        return len(daemon.jobs) >= count

    await async_wait_until(has_job, timeout=5, what="the daemon to receive the job")


async def _wait_for_cancel(daemon: FakeDaemon, job_id: str) -> None:
    async def cancelled() -> bool:
        return any(c.job_id == job_id for c in daemon.cancels)

    await async_wait_until(cancelled, timeout=5, what=f"a CancelNotice for {job_id}")


@pytest.mark.parametrize("stream", [False, True])
async def test_app_disconnect_cancels_the_job_on_the_daemon(
        gateway: GatewayProcess, api_key: str, stream: bool) -> None:
    daemon = await start_daemon(gateway, api_key, Reply(never=True))
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            request = asyncio.create_task(http.post(
                gateway.url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {api_key}"},
                json={"model": model_of(daemon), "messages": MESSAGES, "stream": stream}))
            await _wait_for_job(daemon)
            request.cancel()  # the app goes away: its connection closes
            with pytest.raises(asyncio.CancelledError):
                await request
        await _wait_for_cancel(daemon, daemon.jobs[-1].job_id)
    finally:
        await daemon.kill()


async def test_silent_daemon_times_out_and_is_cancelled(
        gateway: GatewayProcess, api_key: str, client: openai.AsyncOpenAI) -> None:
    daemon = await start_daemon(gateway, api_key, Reply(never=True))
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model=model_of(daemon), messages=MESSAGES)
        assert caught.value.status_code == 504
        assert caught.value.code == "runtime_timeout"
        await _wait_for_cancel(daemon, daemon.jobs[-1].job_id)
    finally:
        await daemon.kill()


async def test_killed_daemon_fails_the_held_stream_with_an_error_event(
        gateway: GatewayProcess, api_key: str, client: openai.AsyncOpenAI) -> None:
    daemon = await start_daemon(gateway, api_key, Reply(never=True))
    stream = await client.chat.completions.create(model=model_of(daemon), messages=MESSAGES,
                                                  stream=True)
    # Headers are out (keep-alives flowing); the daemon now crashes.
    await _wait_for_job(daemon)
    await daemon.kill()
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code in ("runtime_unreachable", "runtime_timeout")


async def test_errors_raise_the_matching_openai_exception_classes(
        gateway: GatewayProcess, api_key: str, client: openai.AsyncOpenAI) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, headers={"x-api-key": api_key},
                                 trust_env=False, timeout=10) as api:
        created = await api.post("/v1/personal-runtimes", json={
            "displayName": "never paired", "executionBackend": "local-model"})
    unpaired = f"lattice:personal:{created.json()['runtime']['latticeId']}"
    cases: list[tuple[openai.AsyncOpenAI, str, type[openai.APIStatusError], str]] = [
        (client, "gpt-4o", openai.BadRequestError, "invalid_request"),
        (client, "lattice:personal:lat_0000000000000000", openai.NotFoundError,
         "runtime_not_found"),
        (client, unpaired, openai.InternalServerError, "runtime_unreachable"),
    ]
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="sk_" + "x" * 43,
                                  max_retries=0) as bad_key_client:
        cases.append((bad_key_client, unpaired, openai.AuthenticationError, "invalid_api_key"))
        for caller, model, exception, code in cases:
            with pytest.raises(exception) as caught:
                await caller.chat.completions.create(model=model, messages=MESSAGES)
            assert caught.value.code == code, (model, caught.value)


@pytest.mark.parametrize(("daemon_code", "status", "code"), [
    ("runtime_timeout", 504, "runtime_timeout"),
    ("invalid_request", 400, "invalid_request"),  # e.g. a model the user did not allow
    ("invalid_api_key", 502, "provider_error"),  # a daemon cannot fake a credential error
    ("made_up", 502, "provider_error"),
])
async def test_daemon_error_codes_map_to_app_errors(
        gateway: GatewayProcess, api_key: str, client: openai.AsyncOpenAI,
        daemon_code: str, status: int, code: str) -> None:
    daemon = await start_daemon(gateway, api_key, Reply(error=(daemon_code, "from the daemon")))
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model=model_of(daemon), messages=MESSAGES)
        assert (caught.value.status_code, caught.value.code) == (status, code)
        assert "from the daemon" in caught.value.message
    finally:
        await daemon.stop()


def test_sync_openai_client_with_the_threaded_fake_daemon(
        gateway: GatewayProcess, api_key: str) -> None:
    from tests.support.fake_daemon import ThreadedFakeDaemon

    with httpx.Client(base_url=gateway.url, headers={"x-api-key": api_key}, trust_env=False,
                      timeout=10) as api:
        created = api.post("/v1/personal-runtimes", json={
            "displayName": "sync", "executionBackend": "local-model"})
        lattice_id = created.json()["runtime"]["latticeId"]
        token = api.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                         json={"ttlSeconds": 600}).json()["bootstrapToken"]
    daemon = ThreadedFakeDaemon(gateway.url, reply=Reply(echo=True))
    daemon.redeem(token)
    daemon.start()
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)
        completion = client.chat.completions.create(
            model=f"lattice:personal:{lattice_id}",
            messages=[{"role": "user", "content": "sync works"}])
        assert completion.choices[0].message.content == "sync works"
        chunks = list(client.chat.completions.create(
            model=f"lattice:personal:{lattice_id}", stream=True,
            messages=[{"role": "user", "content": "and streams"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "and streams"
        client.close()
    finally:
        daemon.stop()



async def test_a_runtime_with_a_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    """Jobs beyond max_queued_jobs for one runtime are refused, not held in memory."""
    with run_gateway(tmp_path, max_queued_jobs=1, presence_window_seconds=1,
                     pickup_timeout_seconds=2, poll_window_seconds=2) as gateway:
        key = gateway.create_key("acme")
        daemon = await paired_daemon(gateway.url, key, reply=Reply(never=True), capacity=1)
        body = {"model": f"lattice:personal:{daemon.lattice_id}",
                "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(base_url=gateway.url, trust_env=False, timeout=15,
                                     headers={"authorization": f"Bearer {key}"}) as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", json=body))

            async def leased() -> bool:
                return len(daemon.jobs) == 1

            await async_wait_until(leased, what="the first job at the daemon (never answered)")
            # The daemon is busy: of three more, one waits in the queue, two are refused.
            more = [asyncio.create_task(client.post("/v1/chat/completions", json=body))
                    for _ in range(3)]
            async def two_refused() -> bool:
                return sum(t.done() for t in more) >= 2

            await async_wait_until(two_refused, what="two answers")
            refused = [t.result() for t in more if t.done()]
            assert [r.status_code for r in refused] == [429, 429]
            for response in refused:
                assert response.json()["error"]["code"] == "rate_limited"
                assert response.headers["retry-after"] == "1"
                assert response.headers["x-should-retry"] == "true"
            await daemon.kill()  # the held requests end too, never hang
            for task in [first, *(t for t in more if not t.done())]:
                assert (await task).status_code in (503, 504)
