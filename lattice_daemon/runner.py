"""Runs leased jobs on the local provider, with bounded concurrency and cancellation.

For each job envelope from a poll: open it (only the gateway could have sealed it),
refuse what must not run (wrong runtime, id mismatch, past its deadline, a replay),
pick the local model, call the provider and seal every output back as events. Events
are handed to ``emit`` at once; the relay client batches and sends them.

Deadlines are by silence, never by total length: ``firstTokenTimeout`` until the first
chunk (a model that is loading is not a failure), then ``idleTimeout`` between chunks.
The provider enforces the configured deadlines on every call; for streams the runner
also applies the job's own (the gateway's) deadlines, whichever is shorter wins.

Cancelling a job cancels its task: the provider's response is closed, so the provider
sees the client go away and stops generating, and the slot is free at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from lattice_protocol import (
    MAX_SEALED_EVENT_BYTES,
    ErrorCode,
    JobEnvelope,
    JobSpec,
    JobTiming,
    ProtocolError,
    ReplayGuard,
    Requester,
    ResultEvent,
    SealedEvent,
    Sealer,
    SealError,
)
from providers import Provider, ProviderError, default_model_among, model_allowed
from providers.timeouts import within

from .config import ProviderConfig

T = TypeVar("T")

log = logging.getLogger("lattice_daemon.runner")

EmitFn = Callable[[SealedEvent], None]

MODEL_CACHE_SECONDS = 10.0  # how long the provider's model list is trusted for defaults


class JobRefused(Exception):
    """A job that must not run; becomes an ``error`` event with ``code``."""

    def __init__(self, code: ErrorCode, message: str, retry_after: float | None = None
                 ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds until the refusal lifts, if known


@dataclass
class JobRecord:
    """One job as the runner saw it; observers get it when it starts and when it ends.

    Times are the runner's clock (unix seconds). ``outcome`` is ``"ok"``,
    ``"cancelled"`` or the ErrorCode value the app got.
    """

    job_id: str
    requester: Requester | None
    stream: bool
    started_at: float
    model: str | None = None
    first_output_at: float | None = None  # first chunk (streams) or the result
    ended_at: float | None = None
    outcome: str | None = None
    message: str | None = None
    chunks: int = 0
    provider_started_at: float | None = None  # the provider call (Server-Timing)
    provider_ended_at: float | None = None
    prompt_tokens: int | None = None  # as the provider reported them (usage)
    completion_tokens: int | None = None
    refused: bool = False  # ended by JobRefused: it must not run (the owner's rules)
    request: dict[str, Any] = field(default_factory=dict, repr=False)
    last_output: dict[str, Any] | None = field(default=None, repr=False)  # chunk or result


class JobObserver(Protocol):
    """Sees jobs start, produce and end (the owner's activity log and live view)."""

    def job_started(self, record: JobRecord) -> None: ...

    def job_output(self, record: JobRecord) -> None:
        """A chunk or the result arrived; ``record`` counts it already."""
        ...

    def job_ended(self, record: JobRecord) -> None: ...


# Decides whether a job may run, before the provider is called: returns the spec to run
# (a request it may have changed, e.g. a capped max_tokens) or raises JobRefused.
AdmitFn = Callable[[JobSpec], JobSpec]


@dataclass
class JobCounters:
    served: int = 0
    failed: int = 0
    cancelled: int = 0
    refused: int = 0


class _Job:
    """Sequence numbering and sealing for the events of one job."""

    __slots__ = ("_emit", "_sealer", "job_id", "seq")

    def __init__(self, job_id: str, sealer: Sealer, emit: EmitFn) -> None:
        self.job_id = job_id
        self.seq = 0
        self._sealer = sealer
        self._emit = emit

    def send(self, kind: str, data: dict[str, Any] | None = None, code: str | None = None,
             message: str | None = None, timing: JobTiming | None = None,
             retry_after: float | None = None) -> None:
        event = ResultEvent(kind=kind, job_id=self.job_id, seq=self.seq, data=data,  # type: ignore[arg-type]
                            code=code, message=message, timing=timing,
                            retry_after=retry_after)
        sealed = self._sealer.seal_json(event.to_dict())
        if len(sealed) > MAX_SEALED_EVENT_BYTES:
            # The relay would refuse the post and hold every other job's results behind
            # it: the app gets a clear error instead of an answer that cannot travel.
            log.warning("job %s: a %s event of %.1f MB is too large to relay", self.job_id,
                        kind, len(sealed) / 1e6)
            event = ResultEvent(
                kind="error", job_id=self.job_id, seq=self.seq,
                code=ErrorCode.PROVIDER_ERROR.value,
                message=f"the local provider's answer ({len(sealed) / 1e6:.1f} MB sealed) is "
                        f"larger than the relay carries ({MAX_SEALED_EVENT_BYTES / 1e6:.1f} MB)",
                timing=timing)
            sealed = self._sealer.seal_json(event.to_dict())
        self._emit(SealedEvent(self.job_id, self.seq, sealed))
        self.seq += 1

    def error(self, code: ErrorCode | str, message: str, timing: JobTiming | None = None,
              retry_after: float | None = None) -> None:
        self.send("error", code=ErrorCode(code).value, message=message, timing=timing,
                  retry_after=retry_after)


def _progress_interval(idle_timeout: float) -> float:
    """How often a running non-streaming job says so: well inside the gateway's silence
    deadline (the job's idle timeout), at most every 15 s (traffic)."""
    return min(15.0, max(0.05, idle_timeout / 4)) if idle_timeout > 0 else 15.0


async def _with_progress(call: Awaitable[T], job: _Job, interval: float) -> T:
    """Await ``call``, sending a ``progress`` event every ``interval`` seconds.

    A non-streaming job sends nothing until its result; without these the gateway could
    not tell a generation that runs for minutes from a daemon that died. The provider's
    own first-token and idle deadlines still bound the provider's silence underneath.
    """
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            job.send("progress")
    finally:
        if not task.done():
            task.cancel()  # closes the provider connection: it stops generating
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _deadline(seconds: float) -> float | None:
    return seconds if seconds > 0 else None  # 0 in a job means "no deadline of its own"


class JobRunner:
    """Owns the running jobs of one pairing. Not thread-safe; lives on the daemon's loop."""

    def __init__(
        self,
        provider: Provider,
        sealer: Sealer,
        lattice_id: str,
        provider_config: ProviderConfig,
        *,
        emit: EmitFn,
        max_concurrency: int = 4,
        replay_guard: ReplayGuard | None = None,
        log_prompts: bool = False,
        clock: Callable[[], float] = time.time,
        admit: AdmitFn | None = None,
        observers: tuple[JobObserver, ...] = (),
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.provider = provider
        self.max_concurrency = max_concurrency
        self.counters = JobCounters()
        self._sealer = sealer
        self._lattice_id = lattice_id
        self._config = provider_config
        self._emit = emit
        self._replays = replay_guard if replay_guard is not None else ReplayGuard()
        self._log_prompts = log_prompts
        self._clock = clock
        self._admit = admit
        self._observers = observers
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._aborts: dict[str, tuple[ErrorCode, str]] = {}
        self._slot_freed = asyncio.Event()
        self._models: list[str] = []
        self._models_at = float("-inf")

    # -- capacity -----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrency - len(self._tasks))

    def set_max_concurrency(self, value: int) -> None:
        """The owner changed it live: running jobs go on, new ones fit the new bound."""
        if value < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = value
        self._slot_freed.set()  # a poll waiting for a slot may have one now

    def running(self, job_id: str) -> bool:
        return job_id in self._tasks

    async def wait_for_capacity(self) -> None:
        while self.free_slots == 0:
            self._slot_freed.clear()
            await self._slot_freed.wait()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no job runs (drain); False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.wait(list(self._tasks.values()), timeout=remaining)
        return True

    # -- jobs ---------------------------------------------------------------------------

    def start(self, envelope: JobEnvelope) -> bool:
        """Open and admit a leased job and start running it; False if it was refused."""
        job = _Job(envelope.job_id, self._sealer, self._emit)
        try:
            spec = self._open(envelope)
        except SealError as exc:
            # Not sealed by our gateway for our key: nothing trustworthy to answer.
            self.counters.refused += 1
            log.warning("job %s dropped: cannot open its envelope (%s)", envelope.job_id, exc)
            return False
        except JobRefused as exc:
            self.counters.refused += 1
            log.warning("job %s refused: %s", envelope.job_id, exc.message)
            job.error(exc.code, exc.message)
            return False
        if envelope.job_id in self._tasks or self.free_slots == 0:
            # The relay leased more than we asked for: say so rather than queue silently.
            self.counters.refused += 1
            job.error(ErrorCode.RUNTIME_UNREACHABLE, "the runtime has no free job slot")
            return False
        record = JobRecord(job_id=spec.job_id, requester=spec.requester, stream=spec.stream,
                           started_at=self._clock(), request=spec.request)
        task = asyncio.get_running_loop().create_task(self._run(spec, job, record),
                                                       name=f"job-{spec.job_id}")
        self._tasks[spec.job_id] = task
        task.add_done_callback(lambda _task: self._finished(spec.job_id))
        return True

    def refuse(self, envelope: JobEnvelope, code: ErrorCode, message: str) -> None:
        """Answer a leased job with an error without opening or running it."""
        self.counters.refused += 1
        log.warning("job %s refused: %s", envelope.job_id, message)
        _Job(envelope.job_id, self._sealer, self._emit).error(code, message)

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        task = self._tasks.get(job_id)
        if task is None:
            return False
        log.info("job %s cancelled (%s)", job_id, reason[:80])
        task.cancel()
        return True

    def cancel_all(self, reason: str) -> int:
        count = 0
        for job_id in list(self._tasks):
            count += self.cancel(job_id, reason)
        return count

    def abort_all(self, code: ErrorCode, message: str) -> int:
        """Cancel every job and tell the gateway why (unlike ``cancel``, which is silent
        because the gateway asked for it)."""
        for job_id in self._tasks:
            self._aborts[job_id] = (code, message)
        return self.cancel_all(message)

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        self.cancel_all("shutting down")
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        self._aborts.pop(job_id, None)
        self._slot_freed.set()

    def _open(self, envelope: JobEnvelope) -> JobSpec:
        value = self._sealer.open_json(envelope.sealed)
        try:
            spec = JobSpec.from_dict(value)
        except ProtocolError as exc:
            raise JobRefused(ErrorCode.INVALID_REQUEST, f"malformed job: {exc}") from None
        if spec.job_id != envelope.job_id:
            raise JobRefused(ErrorCode.INVALID_REQUEST,
                             "sealed job id does not match its envelope (refused)")
        if spec.lattice_id != self._lattice_id:
            raise JobRefused(ErrorCode.INVALID_REQUEST,
                             "job is addressed to another runtime (refused)")
        try:
            self._replays.admit(spec, now=self._clock())
        except ProtocolError as exc:
            if exc.reason == "unrecorded":  # at most once needs the record on disk
                raise JobRefused(ErrorCode.RUNTIME_UNREACHABLE,
                                 "the runtime cannot record the job (see its log)") from None
            if exc.reason == "expired":
                raise JobRefused(
                    ErrorCode.RUNTIME_TIMEOUT,
                    "job reached the runtime after its start deadline (check this "
                    "machine's clock if this keeps happening)") from None
            raise JobRefused(ErrorCode.INVALID_REQUEST,
                             "job was already received once (replay refused)") from None
        return spec

    def _notify(self, event: str, record: JobRecord) -> None:
        for observer in self._observers:
            try:
                getattr(observer, event)(record)
            except Exception:  # an observer's bug must not fail the job
                log.exception("job %s: %s observer failed", record.job_id, event)

    def _output(self, record: JobRecord, data: dict[str, Any]) -> None:
        if record.first_output_at is None:
            record.first_output_at = self._clock()
        record.chunks += 1
        record.last_output = data
        usage = data.get("usage")
        if isinstance(usage, dict):
            for name in ("prompt_tokens", "completion_tokens"):
                value = usage.get(name)
                if isinstance(value, int) and not isinstance(value, bool):
                    setattr(record, name, value)
        self._notify("job_output", record)

    def _end(self, record: JobRecord, outcome: str, message: str | None = None) -> None:
        record.ended_at = self._clock()
        record.outcome = outcome
        record.message = message
        self._notify("job_ended", record)

    async def _run(self, spec: JobSpec, job: _Job, record: JobRecord) -> None:
        started = time.monotonic()
        self._notify("job_started", record)
        try:
            if self._admit is not None:
                spec = self._admit(spec)
            model = await self._pick_model(spec)
            record.model = model
            request = dict(spec.request)
            request["model"] = model
            log.debug("job %s started: model %s, %s", spec.job_id, model,
                     "streaming" if spec.stream else "non-streaming")
            if self._log_prompts:
                log.info("job %s request: %s", spec.job_id, request.get("messages"))
            if spec.stream:
                chunks = await self._stream(spec, request, job, record)
                job.send("end", timing=self._timing(record))
                outcome = f"{chunks} chunks"
            else:
                request.pop("stream", None)
                record.provider_started_at = self._clock()
                completion = await _with_progress(self.provider.chat(request), job,
                                                  _progress_interval(spec.idle_timeout))
                record.provider_ended_at = self._clock()
                if self._log_prompts:
                    log.info("job %s completion: %s", spec.job_id, completion.get("choices"))
                self._output(record, completion)
                job.send("result", data=completion, timing=self._timing(record))
                outcome = "result"
            self.counters.served += 1
            self._end(record, "ok")
            log.info("job %s done in %.1f ms (model %s, %s)", spec.job_id,
                     (time.monotonic() - started) * 1000, model, outcome)
        except asyncio.CancelledError:
            abort = self._aborts.pop(spec.job_id, None)
            if abort is None:
                self.counters.cancelled += 1
                self._end(record, "cancelled")
            else:
                self.counters.failed += 1
                job.error(*abort, timing=self._timing(record))
                self._end(record, abort[0].value, abort[1])
            raise
        except JobRefused as exc:
            self.counters.failed += 1
            log.warning("job %s refused: %s", spec.job_id, exc.message)
            job.error(exc.code, exc.message, self._timing(record), exc.retry_after)
            record.refused = True
            self._end(record, exc.code.value, exc.message)
        except ProviderError as exc:
            self.counters.failed += 1
            code = _code_for(exc)
            log.warning("job %s failed (%s): %s", spec.job_id, code.value, exc.message)
            job.error(code, _message_for_the_app(exc), self._timing(record))
            self._end(record, code.value, _message_for_the_app(exc))
        except Exception as exc:  # a bug here must fail one job, never the daemon
            self.counters.failed += 1
            log.exception("job %s failed inside the daemon", spec.job_id)
            message = f"the daemon failed while running the job ({type(exc).__name__})"
            job.error(ErrorCode.PROVIDER_ERROR, message, self._timing(record))
            self._end(record, ErrorCode.PROVIDER_ERROR.value, message)

    def _timing(self, record: JobRecord) -> JobTiming:
        """The final event's timing (the gateway's Server-Timing ``daemon`` and
        ``provider`` parts): durations on this machine's clock, taken now, as the final
        event is sealed."""
        now = self._clock()
        provider = None
        if record.provider_started_at is not None:
            ended = record.provider_ended_at if record.provider_ended_at is not None else now
            provider = max(0.0, ended - record.provider_started_at) * 1000
        first = None if record.first_output_at is None else max(
            0.0, record.first_output_at - record.started_at) * 1000
        return JobTiming(daemon_ms=max(0.0, now - record.started_at) * 1000,
                         provider_ms=provider, first_output_ms=first)

    async def _stream(self, spec: JobSpec, request: dict[str, Any], job: _Job,
                      record: JobRecord) -> int:
        request["stream"] = True
        record.provider_started_at = self._clock()
        chunks: AsyncIterator[dict[str, Any]] = aiter(self.provider.stream(request))
        timeout = _deadline(spec.first_token_timeout)
        count = 0
        try:
            while True:
                try:
                    chunk = await within(anext(chunks), timeout)
                except StopAsyncIteration:
                    record.provider_ended_at = self._clock()
                    return count
                except asyncio.TimeoutError:
                    raise self._silence_error(first=count == 0, spec=spec) from None
                self._output(record, chunk)
                job.send("chunk", data=chunk)
                count += 1
                timeout = _deadline(spec.idle_timeout)
        finally:
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                await closer()  # closes the provider's response: it stops generating

    def _silence_error(self, *, first: bool, spec: JobSpec) -> ProviderError:
        name = getattr(self.provider, "display_name", "the local provider")
        if first:
            text = (f"{name}: no output within {spec.first_token_timeout:g} s "
                    "(first-token timeout); the model may still be loading")
        else:
            text = (f"{name}: the model stopped producing output for "
                    f"{spec.idle_timeout:g} s mid-generation (idle timeout)")
        return ProviderError("timeout", text)

    async def _pick_model(self, spec: JobSpec) -> str:
        allowed = self._config.allowed_models
        model = spec.model or self._config.default_model
        if model is None:
            model = default_model_among(await self._provider_models(), allowed)
            if model is None:
                raise JobRefused(ErrorCode.PROVIDER_ERROR,
                                 f"{self.provider.display_name}: no model to run (no default "
                                 "model configured and the provider lists none)")
        if not model_allowed(model, allowed):
            raise JobRefused(ErrorCode.MODEL_NOT_ALLOWED,
                             f"model {model!r} is not allowed on this runtime (allowed: "
                             f"{', '.join(allowed)})")
        return model

    async def _provider_models(self) -> list[str]:
        now = time.monotonic()
        if now - self._models_at > MODEL_CACHE_SECONDS:
            self._models = await self.provider.models()
            self._models_at = now
        return self._models


def _message_for_the_app(exc: ProviderError) -> str:
    """The error as the app reads it. A model server that is not running is the runtime
    owner's to fix: how to start it is advice for them (the log, `lattice-ctl status`,
    `doctor`), not for the app, which learns only that the runtime cannot serve now."""
    if exc.reason == "unreachable":
        return "the runtime's local model server is not running"
    return exc.message


def _code_for(exc: ProviderError) -> ErrorCode:
    if exc.reason == "timeout":
        return ErrorCode.RUNTIME_TIMEOUT
    if exc.reason == "unsupported" or (exc.reason == "bad_request" and exc.status is None):
        return ErrorCode.INVALID_REQUEST  # refused before anything reached the provider
    return ErrorCode.PROVIDER_ERROR
