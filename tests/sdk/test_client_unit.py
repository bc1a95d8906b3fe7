"""lattice_client against httpx.MockTransport: errors, SSE, retries, config, request shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

import lattice_client as lc
from lattice_client._sse import iter_chunks

BASE = "http://gateway.test"
RUNTIME = {
    "latticeId": "rt_1", "accountId": "acct", "displayName": "Mac", "executionBackend":
    "local-model", "status": "reachable", "createdAt": "2026-01-01T00:00:00.000Z",
    "updatedAt": "2026-01-01T00:00:00.000Z",
}
COMPLETION = {"id": "c1", "object": "chat.completion",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}

Handler = Callable[[httpx.Request], httpx.Response]


def envelope(code: str, message: str = "nope", param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "x", "param": param, "code": code}}


class Recorder:
    """A MockTransport that answers from a list and records every request."""

    def __init__(self, *responses: httpx.Response | Exception | Handler) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        if callable(item) and not isinstance(item, httpx.Response):
            return item(request)
        return item


def compute(rec: Recorder, **kwargs: Any) -> lc.ComputeClient:
    client = lc.ComputeClient(
        lc.ApiKeyCredential("sk_test"), base_url=BASE,
        http_client=httpx.Client(transport=httpx.MockTransport(rec)), **kwargs,
    )
    client._http.sleep = lambda _seconds: None  # retries must not slow the tests
    return client


def cloud(rec: Recorder, **kwargs: Any) -> lc.LatticeCloudClient:
    client = lc.LatticeCloudClient(
        base_url=BASE, api_key="sk_test",
        http_client=httpx.Client(transport=httpx.MockTransport(rec)), **kwargs,
    )
    client._http.sleep = lambda _seconds: None
    return client


ERROR_TABLE = [
    ("invalid_api_key", 401, lc.InvalidApiKeyError),
    ("insufficient_scopes", 403, lc.InsufficientScopesError),
    ("runtime_not_found", 404, lc.RuntimeNotFoundError),
    ("runtime_revoked", 403, lc.RuntimeRevokedError),
    ("runtime_unreachable", 503, lc.RuntimeUnreachableError),
    ("invalid_request", 400, lc.InvalidRequestError),
    ("request_too_large", 413, lc.RequestTooLargeError),
    ("provider_error", 502, lc.ProviderError),
    ("runtime_timeout", 504, lc.RuntimeTimeoutError),
    ("bootstrap_token_expired", 401, lc.BootstrapTokenExpiredError),
    ("bootstrap_token_used", 409, lc.BootstrapTokenUsedError),
    ("invalid_bootstrap_token", 401, lc.InvalidBootstrapTokenError),
    ("rate_limited", 429, lc.RateLimitedError),
    ("some_future_code", 418, lc.LatticeAPIError),
]


@pytest.mark.parametrize(("code", "status", "cls"), ERROR_TABLE)
def test_every_error_code_raises_its_class(code: str, status: int, cls: type) -> None:
    rec = Recorder(httpx.Response(status, json=envelope(code, "said why", "messages"),
                                  headers={"x-should-retry": "false", "retry-after": "3"}))
    with compute(rec) as client, pytest.raises(lc.LatticeAPIError) as info:
        client.chat_complete_for_personal_runtime("rt_1", {"messages": []})
    err = info.value
    assert type(err) is cls
    assert (err.code, err.status, err.message, err.param) == (code, status, "said why", "messages")
    assert len(rec.requests) == 1
    if cls is lc.RateLimitedError:
        assert err.retry_after == 3.0


def test_error_without_envelope_keeps_status_and_base_class() -> None:
    rec = Recorder(httpx.Response(502, text="<html>bad gateway</html>"))
    with compute(rec) as client, pytest.raises(lc.LatticeAPIError) as info:
        client.list_personal_runtimes()
    assert type(info.value) is lc.LatticeAPIError
    assert info.value.status == 502 and info.value.code is None
    assert "bad gateway" in info.value.message


def test_api_key_and_oauth_headers_and_chat_body() -> None:
    rec = Recorder(httpx.Response(200, json=COMPLETION))
    with compute(rec) as client:
        result = client.chat_complete_for_personal_runtime(
            lc.PersonalRuntime.from_json(RUNTIME), {"messages": [{"role": "user", "content": "x"}],
                                                    "temperature": 0}, model="llama3.2:3b")
    assert result["choices"][0]["message"]["content"] == "hi"
    sent = rec.requests[0]
    assert sent.headers["x-api-key"] == "sk_test" and "authorization" not in sent.headers
    body = json.loads(sent.content)
    assert body == {"messages": [{"role": "user", "content": "x"}], "temperature": 0,
                    "model": "lattice:personal:rt_1/llama3.2:3b", "stream": False}

    rec = Recorder(httpx.Response(200, json={"runtimes": [RUNTIME]}))
    client = lc.ComputeClient({"kind": "oauth", "accessToken": "tok_abc"}, base_url=BASE,
                              http_client=httpx.Client(transport=httpx.MockTransport(rec)))
    with client:
        assert client.list_personal_runtimes()[0].lattice_id == "rt_1"
    assert rec.requests[0].headers["authorization"] == "Bearer tok_abc"
    assert "x-api-key" not in rec.requests[0].headers


def test_list_reachable_filters_on_live_status() -> None:
    runtimes = [dict(RUNTIME, latticeId=f"rt_{s}", status=s)
                for s in ("unpaired", "reachable", "offline", "revoked")]
    rec = Recorder(httpx.Response(200, json={"runtimes": runtimes}))
    with compute(rec) as client:
        reachable = client.list_reachable_personal_runtimes()
    assert [rt.lattice_id for rt in reachable] == ["rt_reachable"]
    assert reachable[0].display_name == "Mac" and reachable[0].raw["status"] == "reachable"


def test_configuration_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATTICE_GATEWAY_URL", raising=False)
    monkeypatch.delenv("LOVELACE_API_KEY", raising=False)
    with pytest.raises(lc.LatticeConfigurationError, match="LATTICE_GATEWAY_URL"):
        lc.ComputeClient()
    monkeypatch.setenv("LATTICE_GATEWAY_URL", BASE + "/")
    with pytest.raises(lc.LatticeConfigurationError, match="LOVELACE_API_KEY"):
        lc.ComputeClient()
    monkeypatch.setenv("LOVELACE_API_KEY", "sk_env")
    with lc.ComputeClient() as client:
        assert client.base_url == BASE
    with pytest.raises(lc.LatticeConfigurationError, match="oauth"):
        lc.ComputeClient({"kind": "password", "password": "x"})
    with pytest.raises(lc.LatticeConfigurationError, match="http"):
        lc.ComputeClient(base_url="gateway.test")
    with lc.create_lattice_cloud_client() as admin:
        assert admin.base_url == BASE


def test_credentials_do_not_leak_into_repr() -> None:
    assert "sk_secret" not in repr(lc.ApiKeyCredential("sk_secret"))
    token = lc.BootstrapToken.from_json({"latticeId": "rt", "bootstrapToken": "plrt_v1_x",
                                         "expiresAt": "t", "command": "c plrt_v1_x"})
    assert "plrt_v1_x" not in repr(token)


def test_cloud_client_paths_and_bodies() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/personal-runtimes":
            return httpx.Response(201, json={"runtime": dict(RUNTIME, status="unpaired")})
        if request.url.path.endswith("/bootstrap-tokens"):
            return httpx.Response(201, json={"latticeId": "rt_1", "bootstrapToken": "plrt_v1_t",
                                             "expiresAt": "2026", "command": "lattice-ctl x"})
        if request.method == "DELETE":
            return httpx.Response(200, json={"runtime": dict(RUNTIME, status="revoked")})
        if request.url.path == "/v1/personal-runtimes/rt_1":
            return httpx.Response(200, json={"runtime": RUNTIME})
        return httpx.Response(200, json={"runtimes": [RUNTIME]})

    rec = Recorder(answer)
    with cloud(rec) as admin:
        rt = admin.personal_runtimes.create(display_name="Mac", execution_backend="local-model")
        assert rt.status == "unpaired"
        token = admin.personal_runtimes.create_bootstrap_token(rt.lattice_id, ttl_seconds=600)
        assert token.bootstrap_token == "plrt_v1_t" and token.command == "lattice-ctl x"
        assert admin.personal_runtimes.get("rt_1").status == "reachable"
        assert len(admin.personal_runtimes.list()) == 1
        assert admin.personal_runtimes.revoke(rt).status == "revoked"
    sent = [(r.method, r.url.path, json.loads(r.content) if r.content else None)
            for r in rec.requests]
    assert sent == [
        ("POST", "/v1/personal-runtimes",
         {"displayName": "Mac", "executionBackend": "local-model"}),
        ("POST", "/v1/personal-runtimes/rt_1/bootstrap-tokens", {"ttlSeconds": 600}),
        ("GET", "/v1/personal-runtimes/rt_1", None),
        ("GET", "/v1/personal-runtimes", None),
        ("DELETE", "/v1/personal-runtimes/rt_1", None),
    ]


# --- SSE ---------------------------------------------------------------------------------

def chunk(text: str) -> dict[str, Any]:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": text}}]}


def test_sse_ignores_keepalives_and_stops_at_done() -> None:
    lines = [": keep-alive", "", f"data: {json.dumps(chunk('a'))}", "", ":", "",
             f"data:{json.dumps(chunk('b'))}\r", "\r", "data: [DONE]", "",
             f"data: {json.dumps(chunk('after'))}", ""]
    got = [c["choices"][0]["delta"]["content"] for c in iter_chunks(lines)]
    assert got == ["a", "b"]


def test_sse_joins_multiline_data_and_flushes_last_event() -> None:
    text = json.dumps(chunk("x"), indent=1).splitlines()
    lines = [f"data: {part}" for part in text]
    # the last event ([DONE]) has no trailing blank line
    assert [c["choices"][0]["delta"]["content"]
            for c in iter_chunks([*lines, "", "data: [DONE]"])] == ["x"]


@pytest.mark.parametrize("ending", [[], [""]], ids=["unterminated", "terminated"])
def test_sse_body_ending_without_done_raises_after_the_chunks(ending: list[str]) -> None:
    lines = [f"data: {json.dumps(chunk('a'))}", "", f"data: {json.dumps(chunk('b'))}", *ending]
    got: list[str] = []
    with pytest.raises(lc.StreamProtocolError, match=r"ended before data: \[DONE\]") as info:
        for c in iter_chunks(lines):
            got.append(c["choices"][0]["delta"]["content"])
    assert got == ["a", "b"]  # what arrived is delivered, then the cut is reported
    assert info.value.code == "incomplete_stream"


def test_sse_error_event_raises_typed_error() -> None:
    lines = [f"data: {json.dumps(chunk('a'))}", "",
             "data: " + json.dumps(envelope("provider_error", "ollama: model not found")), ""]
    got: list[str] = []
    with pytest.raises(lc.ProviderError) as info:
        for c in iter_chunks(lines):
            got.append(c["choices"][0]["delta"]["content"])
    assert got == ["a"]
    assert info.value.status == 502 and "ollama" in info.value.message


def test_sse_garbage_event_raises_protocol_error() -> None:
    with pytest.raises(lc.StreamProtocolError):
        list(iter_chunks(["data: {not json", ""]))


def sse_body(*events: str) -> bytes:
    return "".join(f"{e}\n\n" for e in events).encode()


def test_stream_chat_over_http() -> None:
    body = sse_body(": ping", f"data: {json.dumps(chunk('he'))}",
                    f"data: {json.dumps(chunk('llo'))}", "data: [DONE]")
    rec = Recorder(httpx.Response(200, content=body,
                                  headers={"content-type": "text/event-stream"}))
    with compute(rec) as client:
        stream = client.stream_chat_for_personal_runtime("rt_1", {"messages": []})
        text = "".join(c["choices"][0]["delta"]["content"] for c in stream)
    assert text == "hello"
    assert json.loads(rec.requests[0].content)["stream"] is True
    assert stream.response.is_closed


class BreaksOff(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that sends one event, then fails the way the network can."""

    def __init__(self, failure: httpx.TransportError) -> None:
        self.failure = failure

    def __iter__(self) -> Iterator[bytes]:
        yield sse_body(f"data: {json.dumps(chunk('he'))}")
        raise self.failure

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield sse_body(f"data: {json.dumps(chunk('he'))}")
        raise self.failure


MID_STREAM_FAILURES = [
    (httpx.RemoteProtocolError("peer closed connection"), lc.LatticeConnectionError,
     "broke off"),
    (httpx.ReadTimeout("timed out"), lc.LatticeTimeoutError, "stopped sending the stream"),
]


@pytest.mark.parametrize(("failure", "raised", "message"), MID_STREAM_FAILURES,
                         ids=["broken", "timeout"])
def test_network_failure_mid_stream_is_a_typed_error(
        failure: httpx.TransportError, raised: type[Exception], message: str) -> None:
    rec = Recorder(httpx.Response(200, stream=BreaksOff(failure)))
    got: list[str] = []
    with compute(rec) as client:
        stream = client.stream_chat_for_personal_runtime("rt_1", {"messages": []})
        with pytest.raises(raised, match=message) as info:
            for c in stream:
                got.append(c["choices"][0]["delta"]["content"])
    assert got == ["he"]
    assert BASE in str(info.value) and isinstance(info.value.__cause__, type(failure))
    assert stream.response.is_closed


@pytest.mark.parametrize(("failure", "raised", "message"), MID_STREAM_FAILURES,
                         ids=["broken", "timeout"])
async def test_async_network_failure_mid_stream_is_a_typed_error(
        failure: httpx.TransportError, raised: type[Exception], message: str) -> None:
    rec = Recorder(httpx.Response(200, stream=BreaksOff(failure)))
    async with acompute(rec) as client:
        stream = await client.stream_chat_for_personal_runtime("rt_1", {"messages": []})
        with pytest.raises(raised, match=message):
            async for _ in stream:
                pass
    assert stream.response.is_closed


async def test_async_stream_cut_short_raises() -> None:
    rec = Recorder(httpx.Response(200, content=sse_body(f"data: {json.dumps(chunk('he'))}")))
    async with acompute(rec) as client:
        stream = await client.stream_chat_for_personal_runtime("rt_1", {"messages": []})
        with pytest.raises(lc.StreamProtocolError, match="incomplete"):
            async for _ in stream:
                pass


def test_stream_error_status_raises_before_iterating() -> None:
    rec = Recorder(httpx.Response(404, json=envelope("runtime_not_found")))
    with compute(rec) as client, pytest.raises(lc.RuntimeNotFoundError):
        client.stream_chat_for_personal_runtime("rt_x", {"messages": []})


# --- retries -----------------------------------------------------------------------------

def unreachable(retry: str | None = None, should: str = "true") -> httpx.Response:
    headers = {"x-should-retry": should}
    if retry is not None:
        headers["retry-after"] = retry
    return httpx.Response(503, json=envelope("runtime_unreachable"), headers=headers)


def test_retries_unreachable_then_succeeds_honouring_retry_after() -> None:
    rec = Recorder(unreachable("1.5"), httpx.Response(200, json=COMPLETION))
    slept: list[float] = []
    with compute(rec) as client:
        client._http.sleep = slept.append
        assert client.chat_complete_for_personal_runtime("rt_1", {"messages": []})["id"] == "c1"
    assert len(rec.requests) == 2 and slept == [1.5]


def test_a_replica_shutting_down_is_retried_but_not_a_chat_it_cut_off() -> None:
    refused = httpx.Response(503, json=envelope("service_unavailable"),
                             headers={"x-should-retry": "true"})
    rec = Recorder(refused, httpx.Response(200, json=COMPLETION))
    with compute(rec) as client:
        client._http.sleep = lambda seconds: None
        assert client.chat_complete_for_personal_runtime("rt_1", {"messages": []})["id"] == "c1"
    assert len(rec.requests) == 2
    cut_off = httpx.Response(503, json=envelope("service_unavailable"),
                             headers={"x-should-retry": "false"})
    rec = Recorder(cut_off, httpx.Response(200, json=COMPLETION))
    with compute(rec) as client, pytest.raises(lc.LatticeAPIError):
        client.chat_complete_for_personal_runtime("rt_1", {"messages": []})
    assert len(rec.requests) == 1


def test_retries_are_bounded_to_two() -> None:
    rec = Recorder(httpx.Response(429, json=envelope("rate_limited"),
                                  headers={"retry-after": "0", "x-should-retry": "true"}))
    with compute(rec) as client, pytest.raises(lc.RateLimitedError) as info:
        client.list_personal_runtimes()
    assert len(rec.requests) == 3 and info.value.retry_after == 0.0


@pytest.mark.parametrize("response", [
    unreachable(should="false"),
    unreachable(retry="120"),  # longer than max_delay: raise, let the caller decide
    httpx.Response(503, json=envelope("provider_error")),
    httpx.Response(502, json=envelope("provider_error")),
    httpx.Response(504, json=envelope("runtime_timeout")),
])
def test_not_retried(response: httpx.Response) -> None:
    rec = Recorder(response, httpx.Response(200, json=COMPLETION))
    with compute(rec) as client, pytest.raises(lc.LatticeAPIError):
        client.chat_complete_for_personal_runtime("rt_1", {"messages": []})
    assert len(rec.requests) == 1


def test_max_retries_zero_disables_retries() -> None:
    rec = Recorder(unreachable("0"), httpx.Response(200, json=COMPLETION))
    with compute(rec, max_retries=0) as client, pytest.raises(lc.RuntimeUnreachableError):
        client.chat_complete_for_personal_runtime("rt_1", {"messages": []})
    assert len(rec.requests) == 1


def test_connect_error_is_retried_even_for_chat() -> None:
    rec = Recorder(httpx.ConnectError("refused"), httpx.Response(200, json=COMPLETION))
    with compute(rec) as client:
        assert client.chat_complete_for_personal_runtime("rt_1", {"messages": []})["id"] == "c1"
    assert len(rec.requests) == 2


def test_chat_is_not_retried_once_bytes_may_have_been_sent() -> None:
    rec = Recorder(httpx.ReadError("reset"), httpx.Response(200, json=COMPLETION))
    with compute(rec) as client, pytest.raises(lc.LatticeConnectionError):
        client.chat_complete_for_personal_runtime("rt_1", {"messages": []})
    assert len(rec.requests) == 1


def test_get_is_retried_after_a_lost_response() -> None:
    rec = Recorder(httpx.RemoteProtocolError("closed"),
                   httpx.Response(200, json={"runtimes": [RUNTIME]}))
    with compute(rec) as client:
        assert len(client.list_personal_runtimes()) == 1
    assert len(rec.requests) == 2


def test_connection_refused_surfaces_as_connection_error() -> None:
    client = lc.ComputeClient(lc.ApiKeyCredential("sk_x"),
                              base_url="http://127.0.0.1:9", max_retries=0)
    with client, pytest.raises(lc.LatticeConnectionError) as info:
        client.list_personal_runtimes()
    assert "sk_x" not in str(info.value)


# --- async -------------------------------------------------------------------------------

def acompute(rec: Recorder) -> lc.AsyncComputeClient:
    client = lc.AsyncComputeClient(
        lc.OAuthCredential("tok"), base_url=BASE,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(rec)),
    )

    async def no_sleep(_seconds: float) -> None:
        return None

    client._http.sleep = no_sleep
    return client


async def test_async_chat_retry_and_stream() -> None:
    body = sse_body(f"data: {json.dumps(chunk('a'))}", ": keep-alive",
                    f"data: {json.dumps(chunk('b'))}", "data: [DONE]")
    rec = Recorder(unreachable("0"), httpx.Response(200, json=COMPLETION),
                   httpx.Response(200, content=body))
    async with acompute(rec) as client:
        done = await client.chat_complete_for_personal_runtime("rt_1", {"messages": []})
        assert done["id"] == "c1"
        stream = await client.stream_chat_for_personal_runtime("rt_1", {"messages": []})
        parts = [c["choices"][0]["delta"]["content"] async for c in stream]
    assert parts == ["a", "b"] and len(rec.requests) == 3


async def test_async_stream_error_event() -> None:
    body = sse_body("data: " + json.dumps(envelope("runtime_revoked", "revoked")))
    rec = Recorder(httpx.Response(200, content=body))
    async with acompute(rec) as client:
        stream = await client.stream_chat_for_personal_runtime("rt_1", {"messages": []})
        with pytest.raises(lc.RuntimeRevokedError) as info:
            async for _ in stream:
                pass
    assert info.value.status == 403


async def test_async_cloud_insufficient_scopes() -> None:
    rec = Recorder(httpx.Response(403, json=envelope(
        "insufficient_scopes", "missing scope lattice:compute:personal_runtime:manage")))
    admin = lc.AsyncLatticeCloudClient(
        base_url=BASE, credential=lc.OAuthCredential("tok"),
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(rec)))
    async with admin:
        with pytest.raises(lc.InsufficientScopesError, match="personal_runtime:manage"):
            await admin.personal_runtimes.create(display_name="x")


def test_timeouts_are_typed_and_not_retried() -> None:
    rec = Recorder(httpx.ReadTimeout("slow"), httpx.Response(200, json={"runtimes": []}))
    with compute(rec) as client, pytest.raises(lc.LatticeTimeoutError):
        client.list_personal_runtimes()
    assert len(rec.requests) == 1
    assert issubclass(lc.LatticeTimeoutError, lc.LatticeConnectionError)
