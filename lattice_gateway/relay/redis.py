"""The Redis broker: queue, leases and presence shared by several gateway replicas.

Every relay step is one Lua script (``redis_scripts``), so leasing is atomic across
replicas and a job runs at most once. Pub/sub carries what must reach another replica
at once: ``wake`` (a job was queued, a cancel or revocation happened) to whichever
replica holds the daemon's parked poll. A lost wake costs one retake: every parked poll
looks again once the subscription is back.

Events and failures for the replica holding the app's request must not be lost (with
pub/sub, at-most-once, a reconnect lost the final event and the app waited for its idle
timeout). Each replica has a Redis stream, ``evs:<replica>``, that the scripts append
to, and one reader that blocks on it (``XREAD BLOCK``) from the last entry it handled:
after a cut connection (or a Redis restart that kept its data) it reads on from there,
so nothing is lost and nothing is handed twice. One stream per replica rather than one
per job: a single blocking read covers every job the replica waits for, with no
re-issued read when a job is added and no connection per waiting job. Memory stays
bounded: the replica trims what it has read on every sweep, the stream is capped
(``MAXLEN ~``) and expires once its replica is gone. Each event entry carries its job's
event count, so a ticket sees when an entry was trimmed before it was read (a replica
cut off for very long): that job fails with runtime_unreachable at once rather than at
the app's idle timeout.

Parked polls stay local to the replica that holds them (a future each, as in the
in-process broker); their presence is refreshed in Redis by the replica's sweeper, so
any replica can answer ``reachable``. Jobs and sealed bodies only live in Redis while
in flight (job hashes expire).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from lattice_protocol import CancelNotice, ErrorCode, JobEnvelope, LatticeError, SealedEvent

from .. import metrics
from . import redis_scripts as lua
from .base import (
    DAEMON_SILENT,
    DAEMON_STOPPED,
    MAX_SESSIONS_PER_RUNTIME,
    PAIRED_ELSEWHERE,
    REVOKED,
    SYSTEM_CLOCK,
    BrokerStats,
    Clock,
    EventInbox,
    EventsResult,
    ParkedPoll,
    Pause,
    PollResult,
    Receive,
    SessionNotFound,
    answer_expired,
    lost_with_its_session,
    not_leased,
    pause_ttl,
    pickup_timed_out,
    queue_full,
    revoked,
    sweep_tick,
    too_many_sessions,
)

log = logging.getLogger("lattice_gateway.relay")

_JOB_TTL_SECONDS = 24 * 3600  # a safety net; finished jobs are deleted at once
_CLOSE_SECONDS = 2.0  # bound on waiting for background tasks at close
_EVENTS_BLOCK_MS = 5000  # one blocking read of the event stream; the loop re-issues it
_EVENTS_BATCH = 512  # entries handled per read
# A blocking read that outlives its block time by this much is on a dead connection
# (half-open, Redis gone without a reset): give up on it and reconnect.
_EVENTS_SOCKET_SLACK = 5.0
_RECONNECT_PAUSE = 0.05
_ATTEMPT_TRIES = 3  # tries of a parked poll's retake or a write-behind when Redis errs
EVENTS_LOST = "the relay lost events of this job (the gateway was cut off from Redis)"
JOB_LOST = "the relay lost this job (Redis restarted or failed over without it)"
PAUSE_CACHE_SECONDS = 0.25
PAUSE_CACHE_MAX = 100_000  # runtimes remembered; past it the cache starts over


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisTicket(EventInbox):
    __slots__ = ("_broker", "done", "enqueued_at", "events_read", "job_id", "lattice_id",
                 "seen_event")

    picked_up_at: float | None = None  # another replica may lease it: not measured here

    def __init__(self, broker: RedisBroker, lattice_id: str, job_id: str,
                 enqueued_at: float) -> None:
        super().__init__()
        self._broker = broker
        self.job_id = job_id
        self.lattice_id = lattice_id
        self.enqueued_at = enqueued_at
        self.done = False
        self.seen_event = False
        self.events_read = 0  # the per-job count of the last event read from the stream

    def push(self, item: SealedEvent | LatticeError) -> None:
        if isinstance(item, SealedEvent):
            self.seen_event = True
        super().push(item)

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self._broker._forget(self)
            self._broker._write_behind("finish", self.job_id)

    def cancel(self, reason: str = "cancelled") -> None:
        self.fail(LatticeError(ErrorCode.CANCELLED, f"job cancelled ({reason})"), reason)

    def fail(self, error: LatticeError, reason: str = "cancelled") -> None:
        """End the job with ``error`` for the app; its daemon gets a cancel notice."""
        if self.done:
            return
        self.done = True
        self._broker._forget(self)
        self.push(error)
        notice = orjson.dumps(CancelNotice(self.job_id, reason).to_dict()).decode()
        self._broker._write_behind("cancel", self.job_id, notice)


@dataclass(eq=False)
class _Parked(ParkedPoll):
    lattice_id: str
    session_id: str
    busy: bool = False  # an attempt to fill it from Redis is running
    dirty: bool = False  # a wake came during that attempt: look again


class RedisBroker:
    def __init__(self, url: str, *, poll_window_seconds: float = 25.0,
                 presence_window_seconds: float = 15.0, pickup_timeout_seconds: float = 30.0,
                 key_prefix: str = "lattice:relay:", max_queued_jobs: int = 512,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.poll_window_seconds = poll_window_seconds
        self.max_queued_jobs = max_queued_jobs
        self.presence_window_seconds = presence_window_seconds
        self.pickup_timeout_seconds = pickup_timeout_seconds
        self._clock = clock
        self._prefix = key_prefix
        self._replica = secrets.token_hex(8)
        self._pause_cache: dict[str, tuple[float, Pause | None]] = {}
        self._redis = aioredis.from_url(url)
        # The event reader's own connection: its blocking read would hold a pooled one,
        # and a socket timeout just above the block time notices a dead connection.
        self._events_key = key_prefix + "evs:" + self._replica
        self._events_redis = aioredis.from_url(
            url, socket_timeout=_EVENTS_BLOCK_MS / 1000 + _EVENTS_SOCKET_SLACK,
            client_name="lattice-relay-events-" + self._replica)
        self._events_seen = "0-0"  # the last stream entry handled
        self._events_trimmed = "0-0"
        self._scripts = {name.lower(): self._redis.register_script(getattr(lua, name))
                         for name in ("REACHABLE", "SUBMIT", "END_OTHER_PAIRINGS", "REGISTER",
                                      "POLL", "UNLEASE", "TOUCH", "EVENTS", "FINISH", "CANCEL",
                                      "PICKUP_EXPIRE", "END_SESSION", "REVOKE",
                                      "INSTANCE_CONFLICT")}
        self._tickets: dict[str, RedisTicket] = {}
        self._parked_by_runtime: dict[str, set[_Parked]] = {}
        self._parked_by_session: dict[str, _Parked] = {}
        self._poll_deadlines: deque[ParkedPoll] = deque()
        self._pickup_deadlines: deque[RedisTicket] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writes: set[asyncio.Task[Any]] = set()
        self._started: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._closed = False
        self._draining = False
        self._tick = sweep_tick(poll_window_seconds, presence_window_seconds,
                                pickup_timeout_seconds)
        self._refresh_every = max(self._tick, presence_window_seconds / 3)

    # ---------------------------------------------------------------------- plumbing

    async def _script(self, name: str, *args: Any) -> Any:
        return await self._scripts[name](args=[self._prefix, *args])

    def _background(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _write_behind(self, script: str, *args: Any) -> None:
        """A script the caller does not wait for (finish, cancel, touch: each may run
        twice harmlessly)."""
        task = self._background(self._script_retried(script, *args))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _script_retried(self, script: str, *args: Any) -> None:
        # A pooled connection that Redis lost (a cut, a restart) fails its next command
        # once; nobody waits for this write to see the error, so try again.
        for attempt in range(_ATTEMPT_TRIES):
            try:
                await self._script(script, *args)
                return
            except (ConnectionError, OSError, aioredis.RedisError):
                if attempt + 1 == _ATTEMPT_TRIES or self._closed:
                    log.warning("relay %s of %s lost: Redis unreachable", script, args[0])
                    return
                await asyncio.sleep(_RECONNECT_PAUSE)

    async def flush(self) -> None:
        """Wait for the writes started so far (finish, cancel) to reach Redis."""
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def _ensure_started(self) -> None:
        started = self._started
        if started is None or (started.done() and (started.cancelled()
                                                   or started.exception() is not None)):
            # First use, or Redis was unreachable last time: (re)subscribe now.
            started = self._started = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(started)

    async def _start(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._prefix + "wake")
        self._pubsub = pubsub
        self._background(self._read_messages())
        self._background(self._read_events())
        self._background(self._sweep_forever())

    async def release_polls(self) -> None:
        """Graceful shutdown: answer this replica's held polls now (empty), hold no new
        ones; the daemons' next polls go to another replica."""
        self._draining = True
        for parked in list(self._parked_by_session.values()):
            parked.answer()

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        self._closed = True
        for parked in list(self._parked_by_session.values()):
            parked.answer()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # redis-py can turn a cancellation into a connection error, which the loops
            # below survive by design: they also stop when they see _closed, within a turn.
            done, _ = await asyncio.wait(tasks, timeout=_CLOSE_SECONDS)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: errors of a closing broker are moot
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self._redis.aclose()
        await self._events_redis.aclose()

    async def _read_messages(self) -> None:
        resubscribed = False
        while not self._closed:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (ConnectionError, OSError, aioredis.RedisError):
                metrics.broker_error("redis", "subscribe")
                await asyncio.sleep(0.1)  # Redis restarting; the subscription reconnects
                resubscribed = True
                continue
            if resubscribed:
                # Wakes published while we were not subscribed are gone: every parked
                # poll looks for its jobs and cancels once more.
                resubscribed = False
                for parked in list(self._parked_by_session.values()):
                    self._attempt(parked)
            if message is None or message.get("type") != "message":
                continue
            try:
                self._on_wake(_text(message["data"]))
            except (ValueError, KeyError, TypeError):
                log.warning("ignored a malformed relay wake %r", message["data"])

    async def _read_events(self) -> None:
        """Hand this replica's event stream to its tickets, in order, each entry once."""
        cut_off = False
        while not self._closed:
            try:
                # Back from a cut: take what is waiting without blocking, then look for
                # jobs that Redis no longer has.
                answer = await self._events_redis.xread(
                    {self._events_key: self._events_seen}, count=_EVENTS_BATCH,
                    block=None if cut_off else _EVENTS_BLOCK_MS)
            except (ConnectionError, OSError, aioredis.RedisError):
                # Cut off: read on from _events_seen once Redis answers again.
                cut_off = True
                await asyncio.sleep(_RECONNECT_PAUSE)
                continue
            # [[stream, entries]] (RESP2) or {stream: entries} (RESP3)
            streams: Any = answer.items() if isinstance(answer, dict) else answer or ()
            read = 0
            for _, entries in streams:
                for entry_id, fields in entries:
                    read += 1
                    self._events_seen = _text(entry_id)
                    try:
                        self._on_event(fields)
                    except (ValueError, KeyError, TypeError):
                        log.warning("ignored a malformed relay event entry %s",
                                    self._events_seen)
            if cut_off and read < _EVENTS_BATCH:
                # Asked again after the next read if Redis failed the question (a pooled
                # connection it dropped fails its next command once).
                cut_off = not await self._fail_lost_jobs()

    async def _fail_lost_jobs(self) -> bool:
        """After a cut: a job this replica waits for whose key Redis no longer has (it
        restarted without its data, or failed over to a replica that lacks it) will never
        send anything more. Fail it now, not at its idle timeout. False when Redis could
        not be asked.

        A job that ended normally keeps its key until this replica has read its final
        event (then ``finish`` deletes it), so a final event still unread is never lost
        here."""
        tickets = [t for t in self._tickets.values() if not t.done]
        if not tickets:
            return True
        pipe = self._redis.pipeline(transaction=False)
        for ticket in tickets:
            pipe.exists(self._prefix + "job:" + ticket.job_id)
        try:
            found = await pipe.execute()
        except (ConnectionError, OSError, aioredis.RedisError):
            return False
        for ticket, exists in zip(tickets, found, strict=True):
            if not exists and self._tickets.get(ticket.job_id) is ticket:
                log.warning("job %s: lost from Redis", ticket.job_id)
                self._forget(ticket)
                ticket.done = True
                ticket.push(lost_with_its_session(JOB_LOST))
        return True

    def _on_wake(self, data: str) -> None:
        kind, _, target = data.partition(" ")
        if kind == "j":
            for waiting in list(self._parked_by_runtime.get(target, ())):
                if waiting.capacity > 0:
                    self._attempt(waiting)
        elif kind == "c":
            held = self._parked_by_session.get(target)
            if held is not None:
                self._attempt(held)
        elif kind == "d":
            held = self._parked_by_session.get(target)
            if held is not None:
                held.answer()
        elif kind == "r":
            for parked in list(self._parked_by_runtime.get(target, ())):
                parked.answer()

    def _on_event(self, fields: dict[bytes, bytes]) -> None:
        """One entry of this replica's event stream (written by ``redis_scripts``)."""
        ticket = self._tickets.get(_text(fields[b"j"]))
        if ticket is None:
            return
        if b"e" in fields:
            count = int(fields[b"n"])
            if count != ticket.events_read + 1:
                # Entries of this job were trimmed before this replica read them: its
                # stream cannot be trusted any more. Fail it now; its daemon stops.
                ticket.fail(lost_with_its_session(EVENTS_LOST), "events_lost")
                return
            ticket.events_read = count
            ticket.push(SealedEvent.from_dict(orjson.loads(fields[b"e"])))
            return
        try:
            code = ErrorCode(_text(fields[b"f"]))
        except ValueError:
            code = ErrorCode.RUNTIME_UNREACHABLE
        self._forget(ticket)
        ticket.done = True
        message = _text(fields.get(b"m", b"")) or code.value
        # runtime_unreachable comes only from an ended session, i.e. for a leased job.
        ticket.push(lost_with_its_session(message) if code is ErrorCode.RUNTIME_UNREACHABLE
                    else LatticeError(code, message))

    def _forget(self, ticket: RedisTicket) -> None:
        self._tickets.pop(ticket.job_id, None)

    def parked_polls(self, lattice_id: str) -> int:
        """How many of the runtime's polls this replica holds right now (tests, metrics)."""
        return len(self._parked_by_runtime.get(lattice_id, ()))

    async def stats(self) -> BrokerStats:
        # This replica's share: polls it holds, jobs it submitted that no daemon answered yet.
        return BrokerStats(
            sessions=len(self._parked_by_session), parked_polls=len(self._parked_by_session),
            queued_jobs=sum(not (t.done or t.seen_event) for t in self._tickets.values()))

    # ------------------------------------------------------------------------ presence

    async def reachable(self, lattice_ids: list[str]) -> dict[str, bool]:
        if not lattice_ids:
            return {}
        await self._ensure_started()
        live = await self._script("reachable",
                                  self._clock.time() - self.presence_window_seconds,
                                  *lattice_ids)
        return {lid: bool(flag) for lid, flag in zip(lattice_ids, live, strict=True)}

    async def last_seen(self, lattice_ids: list[str]) -> dict[str, float | None]:
        if not lattice_ids:
            return {}
        values = await self._redis.mget([self._prefix + "seen:" + lid for lid in lattice_ids])
        return {lid: float(v) if v is not None else None
                for lid, v in zip(lattice_ids, values, strict=True)}

    # -- pauses (plain keys, no script: ``P pause:<rt>`` JSON {reason, until}, expiring
    # unless the paused daemon's polls say it again). Each replica remembers what it read
    # for PAUSE_CACHE_SECONDS: a chat costs no extra round trip at full load, another
    # replica's change shows within that, and a job that reaches a paused daemon in
    # between is refused by the daemon with the same error. --

    async def pauses(self, lattice_ids: list[str]) -> dict[str, Pause | None]:
        now = self._clock.monotonic()
        cache = self._pause_cache
        stale = [lid for lid in lattice_ids
                 if (hit := cache.get(lid)) is None or now - hit[0] > PAUSE_CACHE_SECONDS]
        if stale:
            raw = await self._redis.mget([f"{self._prefix}pause:{lid}" for lid in stale])
            if len(cache) > PAUSE_CACHE_MAX:
                cache.clear()
            for lid, value in zip(stale, raw, strict=True):
                cache[lid] = (now, Pause.from_store(orjson.loads(value)) if value else None)
        wall = self._clock.time()
        result: dict[str, Pause | None] = {}
        for lid in lattice_ids:
            pause = cache[lid][1]
            result[lid] = None if pause is None or pause.over(wall) else pause
        return result

    async def set_pause(self, lattice_id: str, session_id: str, pause: Pause | None) -> None:
        if _text(await self._redis.hget(f"{self._prefix}s:{session_id}", "rt") or b"") \
                != lattice_id:
            raise SessionNotFound()
        key = f"{self._prefix}pause:{lattice_id}"
        self._pause_cache.pop(lattice_id, None)
        if pause is None:
            await self._redis.delete(key)
            return
        ttl = pause_ttl(self.poll_window_seconds, self.presence_window_seconds)
        await self._redis.set(key, orjson.dumps(pause.to_store()), px=int(ttl * 1000))

    async def revoke_runtime(self, lattice_id: str) -> None:
        await self._ensure_started()
        await self._script("revoke", lattice_id, ErrorCode.RUNTIME_REVOKED.value, REVOKED)

    # ------------------------------------------------------------------------ sessions

    async def register_session(self, lattice_id: str, max_concurrency: int,
                               daemon_key: str | None = None,
                               instance_id: str | None = None) -> str:
        await self._ensure_started()
        await self.end_other_pairings(lattice_id, daemon_key or "")
        session_id = "rs_" + secrets.token_hex(12)
        outcome = await self._script("register", lattice_id, session_id, self._clock.time(),
                                     MAX_SESSIONS_PER_RUNTIME, daemon_key or "",
                                     instance_id or "")
        if outcome == 0:
            raise revoked()
        if outcome == -1:
            raise too_many_sessions()
        return session_id

    async def instance_conflict(self, lattice_id: str, session_id: str) -> bool:
        await self._ensure_started()
        answer = await self._script("instance_conflict", lattice_id, session_id,
                                    self._clock.time() - self.presence_window_seconds)
        if answer is None:
            raise SessionNotFound()
        return bool(answer)

    async def end_other_pairings(self, lattice_id: str, daemon_key: str) -> None:
        await self._ensure_started()
        await self._script("end_other_pairings", lattice_id, daemon_key,
                           ErrorCode.RUNTIME_UNREACHABLE.value, PAIRED_ELSEWHERE)

    async def deregister_session(self, lattice_id: str, session_id: str) -> None:
        await self._ensure_started()
        ended = await self._script("end_session", session_id, "", lattice_id,
                                   ErrorCode.RUNTIME_UNREACHABLE.value, DAEMON_STOPPED)
        if ended is None:
            raise SessionNotFound()

    # --------------------------------------------------------------------------- polls

    async def _take(self, lattice_id: str, session_id: str, capacity: int) -> PollResult:
        now = self._clock.time()
        answer = await self._script("poll", lattice_id, session_id, capacity, now,
                                    now - self.presence_window_seconds)
        if answer is None:
            raise SessionNotFound()
        envelopes, cancels, conflict = answer
        return PollResult(
            jobs=[JobEnvelope.from_dict(orjson.loads(e)) for e in envelopes],
            cancels=[CancelNotice.from_dict(orjson.loads(c)) for c in cancels],
            instance_conflict=bool(conflict))

    async def poll(self, lattice_id: str, session_id: str, capacity: int,
                   receive: Receive | None = None) -> PollResult:
        await self._ensure_started()
        previous = self._parked_by_session.get(session_id)
        if previous is not None:
            # Ownership first: session ids are not secret (access logs), so another
            # runtime's daemon naming this one must get session_not_found and must not
            # end its parked poll. A parked poll's runtime was checked when it parked.
            if previous.lattice_id != lattice_id:
                raise SessionNotFound()
            previous.answer()  # superseded by this poll
        result = await self._take(lattice_id, session_id, capacity)
        if result.jobs or result.cancels or self._draining:
            return result
        conflict = result.instance_conflict  # as of this poll's start
        parked = _Parked(capacity=capacity, lattice_id=lattice_id, session_id=session_id,
                         deadline=self._clock.monotonic() + self.poll_window_seconds)
        self._parked_by_session[session_id] = parked
        self._parked_by_runtime.setdefault(lattice_id, set()).add(parked)
        self._poll_deadlines.append(parked)
        # A job queued between the take above and parking published its wake before we
        # listened: look once more now that we are parked.
        self._attempt(parked)
        try:
            answer = await parked.held(receive)
            answer.instance_conflict = answer.instance_conflict or conflict
            return answer
        finally:
            if self._parked_by_session.get(session_id) is parked:
                del self._parked_by_session[session_id]
            waiting = self._parked_by_runtime.get(lattice_id)
            if waiting is not None:
                waiting.discard(parked)
                if not waiting:
                    del self._parked_by_runtime[lattice_id]
            if not self._closed:
                self._write_behind("touch", lattice_id, session_id, self._clock.time())

    def _attempt(self, parked: _Parked) -> None:
        """Try to fill a parked poll from Redis; one attempt at a time per poll."""
        if not parked.open:
            return
        if parked.busy:
            parked.dirty = True
            return
        parked.busy = True
        self._background(self._attempt_loop(parked))

    async def _attempt_loop(self, parked: _Parked) -> None:
        failures = 0
        try:
            while True:
                parked.dirty = False
                try:
                    result = await self._take(parked.lattice_id, parked.session_id,
                                              parked.capacity)
                except SessionNotFound:
                    parked.answer()
                    return
                except (ConnectionError, OSError, aioredis.RedisError):
                    # A pooled connection that Redis lost fails its next command once;
                    # Redis down for longer: the poll stays parked and looks again when
                    # the wake subscription is back (_read_messages).
                    failures += 1
                    if failures >= _ATTEMPT_TRIES or not parked.open:
                        return
                    await asyncio.sleep(_RECONNECT_PAUSE)
                    continue
                if result.jobs or result.cancels:
                    if parked.open:
                        parked.answer(result)
                    else:
                        await self._give_back(parked, result)
                    return
                if not parked.dirty or not parked.open:
                    return
        finally:
            parked.busy = False

    async def _give_back(self, parked: _Parked, result: PollResult) -> None:
        """The poll ended while its answer was being taken: nothing may be lost."""
        if result.jobs:
            await self._script("unlease", parked.lattice_id, parked.session_id,
                               *[j.job_id for j in result.jobs])
        if result.cancels:
            key = self._prefix + "sc:" + parked.session_id
            await self._redis.rpush(key, *[orjson.dumps(c.to_dict()) for c in result.cancels])

    # -------------------------------------------------------------------------- events

    async def post_events(self, lattice_id: str, session_id: str,
                          events: list[SealedEvent]) -> EventsResult:
        await self._ensure_started()
        args: list[Any] = [lattice_id, session_id, self._clock.time()]
        for event in events:
            args.append(event.job_id)
            args.append(orjson.dumps(event.to_dict()))
        answer = await self._script("events", *args)
        if answer is None:
            raise SessionNotFound()
        refused_ids, cancels = answer
        result = EventsResult(cancels=[CancelNotice.from_dict(orjson.loads(c)) for c in cancels])
        seen: set[str] = set()
        for raw in refused_ids:
            job_id = _text(raw)
            if job_id not in seen:
                seen.add(job_id)
                result.refused.append(not_leased(job_id))
        return result

    # ---------------------------------------------------------------------------- jobs

    async def submit(self, lattice_id: str, envelope: JobEnvelope) -> RedisTicket:
        await self._ensure_started()
        ticket = RedisTicket(self, lattice_id, envelope.job_id, self._clock.monotonic())
        self._tickets[envelope.job_id] = ticket
        queued = await self._script("submit", lattice_id, envelope.job_id,
                                    orjson.dumps(envelope.to_dict()), self._replica,
                                    _JOB_TTL_SECONDS, self.max_queued_jobs)
        if queued == -1:
            self._forget(ticket)
            raise queue_full(self.max_queued_jobs)
        if not queued:
            self._forget(ticket)
            ticket.done = True
            ticket.push(revoked())
            return ticket
        self._pickup_deadlines.append(ticket)
        return ticket

    # ------------------------------------------------------------------------- sweeper

    async def _sweep_forever(self) -> None:
        last_refresh = 0.0
        while not self._closed:
            await self._clock.sleep(self._tick)
            now = self._clock.monotonic()
            try:
                await self._sweep(now, refresh=now - last_refresh >= self._refresh_every)
            except (ConnectionError, OSError, aioredis.RedisError):
                metrics.broker_error("redis", "sweep")
                continue  # Redis unavailable for a moment: try again next tick
            except Exception:
                metrics.broker_error("redis", "sweep")
                log.exception("relay sweep failed; retrying next tick")
                continue
            if now - last_refresh >= self._refresh_every:
                last_refresh = now

    async def _sweep(self, now: float, refresh: bool) -> None:
        answer_expired(self._poll_deadlines, now)
        seen = self._events_seen
        if seen != self._events_trimmed:
            # What the reader handled is done with (MINID keeps the last entry read).
            await self._redis.xtrim(self._events_key, minid=seen, approximate=False)
            self._events_trimmed = seen
        pickups = self._pickup_deadlines
        limit = now - self.pickup_timeout_seconds
        while pickups and pickups[0].enqueued_at <= limit:
            ticket = pickups.popleft()
            if ticket.done or ticket.seen_event:
                continue
            if await self._script("pickup_expire", ticket.job_id):
                self._forget(ticket)
                ticket.done = True
                ticket.push(pickup_timed_out(self.pickup_timeout_seconds))
        wall = self._clock.time()
        if refresh and self._parked_by_session:
            # Held polls are live presence: refresh them where every replica looks.
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in self._parked_by_session:
                    pipe.zadd(self._prefix + "sessions", {session_id: wall}, xx=True)
                await pipe.execute()
        if refresh:
            cutoff = wall - self.presence_window_seconds
            stale = await self._redis.zrangebyscore(self._prefix + "sessions", "-inf", cutoff,
                                                    start=0, num=100)
            for raw in stale:
                await self._script("end_session", _text(raw), cutoff, "",
                                   ErrorCode.RUNTIME_UNREACHABLE.value, DAEMON_SILENT)
