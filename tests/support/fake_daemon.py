"""A test-side daemon built only from ``lattice_protocol`` + httpx.

It speaks the relay protocol (docs/protocol.md) exactly as a real daemon must, so tests
of the gateway, the SDKs and the walkthrough can run end to end without Ollama:

    daemon = FakeDaemon(gateway_url, reply=Reply(text="hi"))
    await daemon.redeem(bootstrap_token)      # keypair made here; only the public key leaves
    await daemon.start()                      # register a session, keep a poll outstanding
    ... app requests are answered ...
    await daemon.stop()                       # drain in-flight jobs, deregister
    # or: await daemon.kill()                 # drop the connections, no deregister (a crash)

What it records, for assertions: ``jobs`` (opened JobSpecs), ``cancels`` (CancelNotices
received, by poll or piggy-backed on an events answer), ``refused`` (events the gateway
refused), ``completed`` (job ids answered to the end), ``final_error`` (the credential
failure that stopped it: 401/403 means re-pair required).

Replies (``Reply``): fixed ``text``; ``echo`` (the last user message); streaming jobs are
answered in ``chunks`` (default: the text split in words) with ``first_delay`` before
the first and ``chunk_delay`` between chunks; ``error=(code, message)`` answers with an
error event (after ``error_after_chunks`` chunks when streaming); ``never=True`` takes
the job and never answers (to test cancellation and timeouts). With
``error_after_chunks=0`` a streaming job fails before its first chunk.

From synchronous tests use ``ThreadedFakeDaemon``, which runs the same daemon on its
own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from lattice_protocol import (
    CancelNotice,
    JobEnvelope,
    JobSpec,
    KeyPair,
    ReplayGuard,
    ResultEvent,
    SealedEvent,
    Sealer,
)

T = TypeVar("T")


@dataclass
class Reply:
    text: str = "Hello from the fake daemon."
    echo: bool = False
    chunks: list[str] | None = None
    first_delay: float = 0.0
    chunk_delay: float = 0.0
    error: tuple[str, str] | None = None  # (code, message)
    error_after_chunks: int = 0
    never: bool = False


class RetryLater(Exception):
    """A 503 the gateway says to retry (``x-should-retry: true``): e.g. a replica that is
    shutting down. Polled again after a short backoff, on a new connection."""


class DaemonStopped(Exception):
    """The gateway refused the daemon's credential (401/403): re-pair required."""


@dataclass
class FakeDaemon:
    gateway_url: str
    reply: Reply = field(default_factory=Reply)
    capacity: int = 4
    models: tuple[str, ...] = ("llama3.2:3b",)
    default_model: str | None = "llama3.2:3b"
    daemon_version: str = "0.1.0-fake"
    # Pairing material (from redeem, or given to reuse another daemon's pairing).
    keypair: KeyPair = field(default_factory=KeyPair.generate)
    daemon_token: str | None = None
    gateway_public_key: str | None = None
    lattice_id: str | None = None
    # Called with each job as it is opened (benchmarks time the pickup with it).
    on_job: Callable[[JobSpec], None] | None = None

    jobs: list[JobSpec] = field(default_factory=list)
    cancels: list[CancelNotice] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    final_error: httpx.Response | None = None
    session_id: str | None = None
    poll_window: float | None = None

    def __post_init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._sealer: Sealer | None = None
        self._replays = ReplayGuard()
        self._running = False
        self._loop_task: asyncio.Task[None] | None = None
        self._job_tasks: dict[str, asyncio.Task[None]] = {}
        self._polls: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._outbox: list[tuple[SealedEvent, asyncio.Future[None]]] = []
        self._sending = False
        self.retried_polls = 0  # polls answered 503 "retry" (a replica shutting down)

    # --------------------------------------------------------------------- pairing

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # The read timeout must outlast the longest poll window (50 s) + 10 s.
            self._client = httpx.AsyncClient(
                base_url=self.gateway_url, timeout=httpx.Timeout(10.0, read=60.0),
                limits=httpx.Limits(max_connections=self.capacity + 8), trust_env=False)
        return self._client

    async def redeem(self, bootstrap_token: str) -> dict[str, Any]:
        response = await self._http().post("/v1/relay/redeem", json={
            "bootstrapToken": bootstrap_token,
            "daemonPublicKey": self.keypair.public_text(),
            "daemonVersion": self.daemon_version,
        })
        if response.status_code != 201:
            raise AssertionError(f"redeem failed: {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        self.daemon_token = body["daemonToken"]
        self.gateway_public_key = body["gatewayPublicKey"]
        self.lattice_id = body["latticeId"]
        return body

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.daemon_token}"}

    @property
    def sealer(self) -> Sealer:
        if self._sealer is None:
            assert self.gateway_public_key is not None, "redeem first"
            self._sealer = Sealer(self.keypair, self.gateway_public_key)
        return self._sealer

    # ------------------------------------------------------------------- lifecycle

    async def register(self) -> str:
        response = await self._http().post("/v1/relay/sessions", headers=self.headers, json={
            "daemonVersion": self.daemon_version,
            "provider": {"kind": "fake", "models": list(self.models),
                         "defaultModel": self.default_model},
            "maxConcurrency": self.capacity,
        })
        self._check_final(response)
        if response.status_code != 201:
            raise AssertionError(f"register failed: {response.status_code} {response.text}")
        body = response.json()
        self.session_id = body["sessionId"]
        self.poll_window = body["pollWindowSeconds"]
        return self.session_id

    async def start(self) -> None:
        """Register and keep one poll outstanding from now on."""
        await self.register()
        self._running = True
        self._slot_freed = asyncio.Event()
        self._loop_task = asyncio.get_running_loop().create_task(self._poll_loop())

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Graceful stop: no new polls, drain in-flight jobs, deregister."""
        self._running = False
        await self._cancel_loop()
        if self._job_tasks:
            await asyncio.wait(list(self._job_tasks.values()), timeout=drain_timeout)
        if self.session_id is not None and self.final_error is None:
            await self._http().delete(f"/v1/relay/sessions/{self.session_id}",
                                      headers=self.headers)
        await self.close()

    async def kill(self) -> None:
        """A crash: every connection drops, nothing is deregistered."""
        self._running = False
        await self._cancel_loop()
        for task in list(self._job_tasks.values()):
            task.cancel()
        await self.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _cancel_loop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._polls) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loop_task = None
        self._polls.clear()

    def _check_final(self, response: httpx.Response) -> None:
        if response.status_code in (401, 403):
            self.final_error = response
            self._running = False
            raise DaemonStopped(f"{response.status_code}: {response.text}")

    # ----------------------------------------------------------------------- polls

    async def _poll_loop(self) -> None:
        while self._running:
            free = self.capacity - len(self._job_tasks)
            poll = asyncio.get_running_loop().create_task(self._poll_once(max(free, 0)))
            self._polls.add(poll)
            poll.add_done_callback(self._polls.discard)
            try:
                if free > 0:
                    await poll
                else:
                    # All slots busy: a capacity-0 poll is the heartbeat that brings
                    # cancel notices; a freed slot replaces it with a real poll.
                    self._slot_freed.clear()
                    freed = asyncio.get_running_loop().create_task(self._slot_freed.wait())
                    await asyncio.wait({poll, freed}, return_when=asyncio.FIRST_COMPLETED)
                    freed.cancel()
            except DaemonStopped:
                return
            except (httpx.HTTPError, RetryLater):
                await asyncio.sleep(0.05)  # backoff before reconnecting

    async def _poll_once(self, capacity: int) -> None:
        assert self.session_id is not None
        response = await self._http().post(f"/v1/relay/sessions/{self.session_id}/poll",
                                           headers=self.headers, json={"capacity": capacity})
        self._check_final(response)
        if response.status_code == 404:
            await self.register()
            return
        if response.status_code == 503 and response.headers.get("x-should-retry") == "true":
            self.retried_polls += 1
            raise RetryLater(response.text)
        if response.status_code != 200:
            raise AssertionError(f"poll failed: {response.status_code} {response.text}")
        body = response.json()
        self._take_cancels(body.get("cancels", []))
        for raw in body.get("jobs", []):
            envelope = JobEnvelope.from_dict(raw)
            task = asyncio.get_running_loop().create_task(self._run_job(envelope))
            self._job_tasks[envelope.job_id] = task
            task.add_done_callback(lambda _t, job_id=envelope.job_id: self._job_done(job_id))

    def _job_done(self, job_id: str) -> None:
        self._job_tasks.pop(job_id, None)
        self._slot_freed.set()

    def _take_cancels(self, raw_cancels: list[Any]) -> None:
        for raw in raw_cancels:
            notice = CancelNotice.from_dict(raw)
            self.cancels.append(notice)
            task = self._job_tasks.get(notice.job_id)
            if task is not None:
                task.cancel()  # abort the "provider call"

    # ------------------------------------------------------------------------ jobs

    async def _run_job(self, envelope: JobEnvelope) -> None:
        spec = JobSpec.from_dict(self.sealer.open_json(envelope.sealed))
        assert spec.job_id == envelope.job_id
        self._replays.admit(spec)
        if self.on_job is not None:
            self.on_job(spec)
        self.jobs.append(spec)
        reply = self.reply
        seq = 0

        async def emit(kind: str, data: dict[str, Any] | None = None,
                       code: str | None = None, message: str | None = None) -> None:
            nonlocal seq
            event = ResultEvent(kind=kind, job_id=spec.job_id, seq=seq, data=data,  # type: ignore[arg-type]
                                code=code, message=message)
            seq += 1
            await self._emit(SealedEvent(spec.job_id, event.seq,
                                         self.sealer.seal_json(event.to_dict())))

        if reply.never:
            await asyncio.Event().wait()  # until cancelled
        text = _last_user_text(spec.request) if reply.echo else reply.text
        model = spec.model or "fake-model"
        created = int(time.time())
        completion_id = f"chatcmpl-{spec.job_id}"
        if reply.first_delay:
            await asyncio.sleep(reply.first_delay)
        if not spec.stream:
            if reply.error is not None:
                await emit("error", code=reply.error[0], message=reply.error[1])
            else:
                await emit("result", _completion(completion_id, created, model, text))
            self.completed.append(spec.job_id)
            return
        pieces = reply.chunks if reply.chunks is not None else _words(text)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        if reply.error is not None and reply.error_after_chunks == 0:
            await emit("error", code=reply.error[0], message=reply.error[1])  # before any chunk
            self.completed.append(spec.job_id)
            return
        await emit("chunk", chunk({"role": "assistant", "content": ""}))
        for index, piece in enumerate(pieces):
            if reply.error is not None and index == reply.error_after_chunks:
                break
            if index and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            await emit("chunk", chunk({"content": piece}))
        if reply.error is not None:
            await emit("error", code=reply.error[0], message=reply.error[1])
            self.completed.append(spec.job_id)
            return
        await emit("chunk", chunk({}, "stop"))
        options = spec.request.get("stream_options") or {}
        if options.get("include_usage"):
            await emit("chunk", {"id": completion_id, "object": "chat.completion.chunk",
                                 "created": created, "model": model, "choices": [],
                                 "usage": _usage(text)})
        await emit("end")
        self.completed.append(spec.job_id)

    async def _emit(self, event: SealedEvent) -> None:
        """Queue one event; events produced while a POST is in flight go in the next one
        (the protocol's batching), so a busy daemon sends few requests."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((event, future))
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._send_outbox())
        await future

    async def _send_outbox(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                try:
                    await self.send_events([event for event, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc if isinstance(exc, Exception)
                                                 else RuntimeError("daemon stopped"))
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._sending = False

    async def send_events(self, events: list[SealedEvent]) -> dict[str, Any]:
        """POST events; records refusals and takes piggy-backed cancels."""
        assert self.session_id is not None
        response = await self._http().post(
            f"/v1/relay/sessions/{self.session_id}/events", headers=self.headers,
            json={"events": [e.to_dict() for e in events]})
        self._check_final(response)
        if response.status_code != 200:
            raise AssertionError(f"events failed: {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        self.refused.extend(body.get("refused", []))
        self._take_cancels(body.get("cancels", []))
        return body


def _last_user_text(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


def _usage(text: str) -> dict[str, int]:
    completion = max(1, len(text.split()))
    return {"prompt_tokens": 5, "completion_tokens": completion, "total_tokens": 5 + completion}


def _completion(completion_id: str, created: int, model: str, text: str) -> dict[str, Any]:
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": _usage(text),
    }


class ThreadedFakeDaemon:
    """A FakeDaemon on its own event loop in a background thread, for sync tests."""

    def __init__(self, gateway_url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.daemon: FakeDaemon = self.call(self._make(gateway_url, options))

    @staticmethod
    async def _make(gateway_url: str, options: dict[str, Any]) -> FakeDaemon:
        return FakeDaemon(gateway_url, **options)  # built on its loop (asyncio.Event)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def redeem(self, bootstrap_token: str) -> dict[str, Any]:
        return self.call(self.daemon.redeem(bootstrap_token))

    def start(self) -> None:
        self.call(self.daemon.start())

    def stop(self) -> None:
        self.call(self.daemon.stop())
        self._shutdown()

    def kill(self) -> None:
        self.call(self.daemon.kill())
        self._shutdown()

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


async def paired_daemon(gateway_url: str, api_key: str, *, display_name: str = "laptop",
                        **options: Any) -> FakeDaemon:
    """Create a runtime with ``api_key`` (manage scope), mint a bootstrap token, redeem it
    with a new FakeDaemon and start it. The runtime id is ``daemon.lattice_id``."""
    headers = {"x-api-key": api_key}
    async with httpx.AsyncClient(base_url=gateway_url, headers=headers, trust_env=False,
                                 timeout=10.0) as client:
        created = await client.post("/v1/personal-runtimes", json={
            "displayName": display_name, "executionBackend": "local-model"})
        assert created.status_code == 201, created.text
        lattice_id = created.json()["runtime"]["latticeId"]
        minted = await client.post(f"/v1/personal-runtimes/{lattice_id}/bootstrap-tokens",
                                   json={"ttlSeconds": 600})
        assert minted.status_code == 201, minted.text
    daemon = FakeDaemon(gateway_url, **options)
    await daemon.redeem(minted.json()["bootstrapToken"])
    await daemon.start()
    return daemon
