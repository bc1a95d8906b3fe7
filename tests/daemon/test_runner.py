"""JobRunner: opening, refusing, running, streaming, deadlines and cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lattice_daemon.config import ProviderConfig
from lattice_daemon.runner import JobRunner
from lattice_protocol import JobEnvelope, JobSpec, KeyPair, ResultEvent, SealedEvent, Sealer
from providers import ProviderError, ProviderHealth, default_model_among, make_provider
from tests.servers import run_ollama_server
from tests.support.net import async_wait_until

LATTICE_ID = "lat_test"


class FakeProvider:
    """An in-process provider whose behaviour each test scripts."""

    kind = "ollama"
    base_url = "http://fake"
    display_name = "Fake at http://fake"

    def __init__(self, *, pieces: list[str] | None = None, delay: float = 0.0,
                 first_delay: float = 0.0, stall_after: int | None = None,
                 error: ProviderError | None = None, models: list[str] | None = None) -> None:
        self.pieces = pieces if pieces is not None else ["Hello", " there"]
        self.delay = delay
        self.first_delay = first_delay
        self.stall_after = stall_after
        self.error = error
        self.model_list = models if models is not None else ["m1", "m2"]
        self.requests: list[dict[str, Any]] = []
        self.closed_streams = 0
        self.stream_started = asyncio.Event()

    async def models(self) -> list[str]:
        return list(self.model_list)

    async def health(self) -> ProviderHealth:
        return ProviderHealth(True, "fine", models=list(self.model_list))

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        if self.error:
            raise self.error
        await asyncio.sleep(self.first_delay)
        return {"object": "chat.completion", "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": "".join(self.pieces)},
                             "finish_reason": "stop"}]}

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self.requests.append(request)
        self.stream_started.set()
        try:
            if self.error:
                raise self.error
            await asyncio.sleep(self.first_delay)
            for index, piece in enumerate(self.pieces):
                if self.stall_after is not None and index >= self.stall_after:
                    await asyncio.Event().wait()  # silent forever
                if index and self.delay:
                    await asyncio.sleep(self.delay)
                yield {"object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {"content": piece}}]}
        finally:
            self.closed_streams += 1

    async def aclose(self) -> None:
        pass


class Harness:
    def __init__(self, provider: Any, config: ProviderConfig | None = None,
                 max_concurrency: int = 2) -> None:
        self.gateway_keys = KeyPair.generate()
        self.daemon_keys = KeyPair.generate()
        self.gateway = Sealer(self.gateway_keys, self.daemon_keys.public)
        self.sent: list[SealedEvent] = []
        self.provider = provider
        self.runner = JobRunner(provider, Sealer(self.daemon_keys, self.gateway_keys.public),
                                LATTICE_ID, config or ProviderConfig(),
                                emit=self.sent.append, max_concurrency=max_concurrency)
        self._next = 0

    def spec(self, *, stream: bool = False, model: str | None = "m1", deadline: float = 60,
             first: float = 5.0, idle: float = 5.0, job_id: str | None = None,
             lattice_id: str = LATTICE_ID) -> JobSpec:
        self._next += 1
        return JobSpec(job_id=job_id or f"job_{self._next}", lattice_id=lattice_id,
                       deadline=time.time() + deadline, stream=stream, model=model,
                       request={"messages": [{"role": "user", "content": "secret prompt"}]},
                       first_token_timeout=first, idle_timeout=idle)

    def envelope(self, spec: JobSpec, *, sealer: Sealer | None = None,
                 outer_id: str | None = None) -> JobEnvelope:
        sealed = (sealer or self.gateway).seal_json(spec.to_dict())
        return JobEnvelope(outer_id or spec.job_id, spec.deadline, sealed)

    def events(self, job_id: str | None = None) -> list[ResultEvent]:
        opened = [ResultEvent.from_dict(self.gateway.open_json(e.sealed)) for e in self.sent]
        return [e for e in opened if job_id is None or e.job_id == job_id]

    async def finished(self, job_id: str, timeout: float = 3.0) -> list[ResultEvent]:
        async def done() -> bool:
            return any(e.final for e in self.events(job_id))

        await async_wait_until(done, timeout=timeout, what=f"final event of {job_id}")
        return self.events(job_id)


async def test_non_streaming_job_sends_one_sealed_result() -> None:
    h = Harness(FakeProvider(pieces=["Hi", "!"]))
    spec = h.spec()
    assert h.runner.start(h.envelope(spec))
    events = await h.finished(spec.job_id)
    assert [e.kind for e in events] == ["result"]
    assert events[0].data["choices"][0]["message"]["content"] == "Hi!"
    assert h.provider.requests[0]["model"] == "m1"
    assert h.runner.counters.served == 1


async def test_streaming_job_forwards_chunks_in_order_then_end() -> None:
    h = Harness(FakeProvider(pieces=["a", "b", "c"]))
    spec = h.spec(stream=True)
    h.runner.start(h.envelope(spec))
    events = await h.finished(spec.job_id)
    assert [e.kind for e in events] == ["chunk", "chunk", "chunk", "end"]
    assert [e.seq for e in events] == [0, 1, 2, 3]
    assert [e.data["choices"][0]["delta"]["content"] for e in events[:3]] == ["a", "b", "c"]
    assert [e.seq for e in h.sent] == [0, 1, 2, 3]  # relay-visible seq matches


async def test_replayed_job_is_refused_with_an_error_event() -> None:
    h = Harness(FakeProvider())
    spec = h.spec()
    envelope = h.envelope(spec)
    assert h.runner.start(envelope)
    await h.finished(spec.job_id)
    assert not h.runner.start(envelope)
    errors = [e for e in h.events(spec.job_id) if e.kind == "error"]
    assert len(errors) == 1 and errors[0].code == "invalid_request"
    assert "replay" in (errors[0].message or "")
    assert len(h.provider.requests) == 1  # the replay never reached the provider


async def test_expired_job_is_refused_as_runtime_timeout() -> None:
    h = Harness(FakeProvider())
    spec = h.spec(deadline=-1)
    assert not h.runner.start(h.envelope(spec))
    (event,) = h.events(spec.job_id)
    assert event.kind == "error" and event.code == "runtime_timeout"
    assert h.provider.requests == []


async def test_tampered_envelope_is_dropped_without_an_answer() -> None:
    h = Harness(FakeProvider())
    spec = h.spec()
    envelope = h.envelope(spec)
    body = envelope.sealed
    flipped = body[:-5] + ("A" if body[-5] != "A" else "B") + body[-4:]
    assert not h.runner.start(JobEnvelope(spec.job_id, spec.deadline, flipped))
    assert h.sent == [] and h.provider.requests == []
    assert h.runner.counters.refused == 1


async def test_job_sealed_for_another_key_is_dropped() -> None:
    h = Harness(FakeProvider())
    spec = h.spec()
    stranger = Sealer(KeyPair.generate(), h.daemon_keys.public)
    assert not h.runner.start(h.envelope(spec, sealer=stranger))
    assert h.sent == [] and h.provider.requests == []


async def test_inner_job_id_must_match_the_envelope() -> None:
    h = Harness(FakeProvider())
    spec = h.spec()
    assert not h.runner.start(h.envelope(spec, outer_id="job_other"))
    (event,) = h.events("job_other")
    assert event.code == "invalid_request" and "does not match" in (event.message or "")
    assert h.provider.requests == []


async def test_job_for_another_runtime_is_refused() -> None:
    h = Harness(FakeProvider())
    spec = h.spec(lattice_id="lat_someone_else")
    assert not h.runner.start(h.envelope(spec))
    (event,) = h.events(spec.job_id)
    assert event.code == "invalid_request"


async def test_allowed_models_are_enforced() -> None:
    h = Harness(FakeProvider(), ProviderConfig(allowed_models=["m2"]))
    refused, allowed = h.spec(model="m1"), h.spec(model="m2")
    h.runner.start(h.envelope(refused))
    h.runner.start(h.envelope(allowed))
    (event,) = await h.finished(refused.job_id)
    assert event.code == "model_not_allowed" and "'m1' is not allowed" in (event.message or "")
    assert [e.kind for e in await h.finished(allowed.job_id)] == ["result"]
    assert [r["model"] for r in h.provider.requests] == ["m2"]


async def test_default_model_is_the_configured_one_else_the_providers_first() -> None:
    h = Harness(FakeProvider(models=["first", "second"]))
    spec = h.spec(model=None)
    h.runner.start(h.envelope(spec))
    await h.finished(spec.job_id)
    h2 = Harness(FakeProvider(), ProviderConfig(default_model="configured"))
    spec2 = h2.spec(model=None)
    h2.runner.start(h2.envelope(spec2))
    await h2.finished(spec2.job_id)
    assert h.provider.requests[0]["model"] == "first"
    assert h2.provider.requests[0]["model"] == "configured"


async def test_an_embedding_model_is_never_the_default() -> None:
    # Ollama lists the most recently pulled model first; often an embedding model.
    h = Harness(FakeProvider(models=["nomic-embed-text:latest", "llama3.2:latest"]))
    spec = h.spec(model=None)
    h.runner.start(h.envelope(spec))
    await h.finished(spec.job_id)
    assert h.provider.requests[0]["model"] == "llama3.2:latest"


def test_default_model_among_prefers_allowed_chat_models() -> None:
    assert default_model_among(["text-embedding-nomic-embed-text-v1.5", "qwen3-8b"], []) \
        == "qwen3-8b"
    assert default_model_among(["only-embed"], []) == "only-embed"  # better than nothing
    assert default_model_among(["a-embed", "b", "c"], ["c"]) == "c"
    # Ollama: a name without a tag is ":latest", in allowed_models too
    assert default_model_among(["llama3.2:latest"], ["llama3.2"]) == "llama3.2:latest"


async def test_an_allowed_model_matches_with_or_without_latest() -> None:
    h = Harness(FakeProvider(models=["llama3.2:latest"]),
                ProviderConfig(allowed_models=["llama3.2"]))
    for requested in (None, "llama3.2:latest", "llama3.2"):
        spec = h.spec(model=requested)
        h.runner.start(h.envelope(spec))
        (event,) = await h.finished(spec.job_id)
        assert event.kind == "result", event.message
    spec = h.spec(model="qwen3:latest")
    h.runner.start(h.envelope(spec))
    (event,) = await h.finished(spec.job_id)
    assert event.code == "model_not_allowed" and "not allowed" in (event.message or "")
    assert default_model_among([], []) is None


@pytest.mark.parametrize(("error", "message"), [
    (ProviderError("internal", "Fake at http://fake: HTTP 500: out of memory", 500),
     "Fake at http://fake: HTTP 500: out of memory"),
    # Not running: the app learns that much; how to start it is the owner's advice.
    (ProviderError("unreachable", "Fake at http://fake: not running. Start it with "
                                  "`fake serve`.", None),
     "the runtime's local model server is not running"),
])
async def test_provider_error_becomes_provider_error_with_its_message(
        error: ProviderError, message: str) -> None:
    h = Harness(FakeProvider(error=error))
    spec = h.spec(stream=True)
    h.runner.start(h.envelope(spec))
    (event,) = await h.finished(spec.job_id)
    assert event.code == "provider_error" and event.message == message
    assert h.runner.counters.failed == 1


async def test_cancel_closes_the_provider_stream_and_frees_the_slot_at_once() -> None:
    provider = FakeProvider(pieces=["a", "b", "c"], stall_after=1)
    h = Harness(provider, max_concurrency=1)
    spec = h.spec(stream=True, idle=30)
    h.runner.start(h.envelope(spec))
    await asyncio.wait_for(provider.stream_started.wait(), 2)
    assert h.runner.free_slots == 0
    assert h.runner.cancel(spec.job_id)
    await asyncio.wait_for(h.runner.wait_for_capacity(), 1.0)
    assert h.runner.free_slots == 1
    assert provider.closed_streams == 1
    assert not any(e.final for e in h.events(spec.job_id))  # cancelled jobs stay silent
    assert h.runner.counters.cancelled == 1


async def test_first_token_deadline() -> None:
    h = Harness(FakeProvider(first_delay=5))
    spec = h.spec(stream=True, first=0.2)
    started = time.monotonic()
    h.runner.start(h.envelope(spec))
    (event,) = await h.finished(spec.job_id)
    assert event.code == "runtime_timeout" and "first-token" in (event.message or "")
    assert time.monotonic() - started < 2


async def test_idle_deadline_between_chunks() -> None:
    provider = FakeProvider(pieces=["a", "b"], stall_after=1)
    h = Harness(provider)
    spec = h.spec(stream=True, idle=0.2)
    h.runner.start(h.envelope(spec))
    events = await h.finished(spec.job_id)
    assert [e.kind for e in events] == ["chunk", "error"]
    assert events[1].code == "runtime_timeout" and "idle" in (events[1].message or "")
    assert provider.closed_streams == 1


async def test_a_generation_that_keeps_producing_is_never_cut_off() -> None:
    # 12 chunks 0.05 s apart: 0.55 s in total, far past the 0.2 s idle deadline.
    h = Harness(FakeProvider(pieces=[str(i) for i in range(12)], delay=0.05))
    spec = h.spec(stream=True, first=0.2, idle=0.2)
    h.runner.start(h.envelope(spec))
    events = await h.finished(spec.job_id)
    assert [e.kind for e in events] == ["chunk"] * 12 + ["end"]


async def test_concurrency_is_bounded() -> None:
    provider = FakeProvider(stall_after=0)
    h = Harness(provider, max_concurrency=2)
    specs = [h.spec(stream=True, first=30) for _ in range(3)]
    assert h.runner.start(h.envelope(specs[0]))
    assert h.runner.start(h.envelope(specs[1]))
    assert h.runner.free_slots == 0
    assert not h.runner.start(h.envelope(specs[2]))  # over capacity: answered, not queued
    assert h.events(specs[2].job_id)[0].kind == "error"
    await h.runner.aclose()
    assert h.runner.in_flight == 0


async def test_prompts_are_not_logged_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="lattice_daemon")
    h = Harness(FakeProvider(pieces=["secret completion"]))
    spec = h.spec(stream=True)
    h.runner.start(h.envelope(spec))
    await h.finished(spec.job_id)
    assert spec.job_id in caplog.text
    assert "secret prompt" not in caplog.text and "secret completion" not in caplog.text


async def test_cancel_aborts_the_real_provider_connection() -> None:
    """Against the Ollama test server: the server itself sees the client go away."""
    with run_ollama_server(models=["m1"], chunks=["a"] * 50, chunk_delay=0.1) as server:
        provider = make_provider("ollama", server.url, first_token_timeout=5, idle_timeout=5)
        h = Harness(provider, max_concurrency=1)
        try:
            spec = h.spec(stream=True)
            h.runner.start(h.envelope(spec))

            async def streaming() -> bool:
                return len(h.events(spec.job_id)) >= 2

            await async_wait_until(streaming, timeout=3, what="first chunks")
            h.runner.cancel(spec.job_id)
            await asyncio.wait_for(h.runner.wait_for_capacity(), 1.0)

            async def aborted() -> bool:
                return server.stats()["aborts"] >= 1

            await async_wait_until(aborted, timeout=3, what="server-side abort")
            assert server.stats()["completed"] == 0
        finally:
            await provider.aclose()


async def test_an_answer_too_large_to_relay_becomes_an_error_for_that_job_only() -> None:
    from lattice_protocol import MAX_SEALED_EVENT_BYTES

    huge = "x" * (MAX_SEALED_EVENT_BYTES // 2 + 1)  # sealed + base64 is ~4/3 of the JSON
    h = Harness(FakeProvider(pieces=[huge, huge]))
    spec = h.spec()
    h.runner.start(h.envelope(spec))
    (event,) = await h.finished(spec.job_id)
    assert event.kind == "error" and event.code == "provider_error"
    assert "larger than the relay carries" in (event.message or "")
    assert all(len(e.sealed) <= MAX_SEALED_EVENT_BYTES for e in h.sent)
    h.provider.pieces = ["ok"]
    small = h.spec()  # the runner keeps serving
    h.runner.start(h.envelope(small))
    assert [e.kind for e in await h.finished(small.job_id)] == ["result"]


class SteppedClock:
    """The runner's clock, moved only by the provider below: timing becomes exact."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class ClockedProvider(FakeProvider):
    """Each answer (non-streaming) takes 250 ms, each chunk 100 ms, of ``clock`` time."""

    def __init__(self, clock: SteppedClock, **options: Any) -> None:
        super().__init__(**options)
        self.clock = clock

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = await super().chat(request)
        self.clock.now += 0.25
        return answer

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async for chunk in super().stream(request):
            self.clock.now += 0.1
            yield chunk


def clocked_harness(**options: Any) -> Harness:
    clock = SteppedClock()
    h = Harness(ClockedProvider(clock, **options))
    h.runner = JobRunner(h.provider, Sealer(h.daemon_keys, h.gateway_keys.public), LATTICE_ID,
                         ProviderConfig(), emit=h.sent.append, clock=clock)
    return h


async def test_final_events_carry_the_daemons_and_the_providers_time() -> None:
    h = clocked_harness(pieces=["a", "b", "c"])
    spec = h.spec()
    h.runner.start(h.envelope(spec))
    (result,) = await h.finished(spec.job_id)
    assert result.timing is not None
    assert (result.timing.daemon_ms, result.timing.provider_ms,
            result.timing.first_output_ms) == (250.0, 250.0, 250.0)

    spec = h.spec(stream=True)
    h.runner.start(h.envelope(spec))
    events = await h.finished(spec.job_id)
    assert [e.kind for e in events] == ["chunk", "chunk", "chunk", "end"]
    assert all(e.timing is None for e in events[:3])  # only the final event has it
    timing = events[-1].timing
    assert timing is not None
    assert (timing.daemon_ms, timing.provider_ms, timing.first_output_ms) == (
        pytest.approx(300.0), pytest.approx(300.0), pytest.approx(100.0))


async def test_a_failed_job_reports_its_timing_too() -> None:
    h = clocked_harness(error=ProviderError("unreachable", "Fake: connection refused"))
    spec = h.spec()
    h.runner.start(h.envelope(spec))
    (failed,) = await h.finished(spec.job_id)
    assert failed.kind == "error" and failed.timing is not None
    assert failed.timing.daemon_ms == 0.0 and failed.timing.provider_ms == 0.0
    assert failed.timing.first_output_ms is None
