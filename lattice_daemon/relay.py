"""The daemon's side of the relay protocol (docs/protocol.md): outbound HTTPS only.

Two layers:

* ``RelayApi``: the five requests, one ``httpx.AsyncClient`` on httpx's own transport
  (HTTP/1.1 keep-alive; ``trust_env=True`` so HTTPS_PROXY / NO_PROXY / SSL_CERT_FILE
  apply; a pooled connection the gateway closed is noticed before reuse; a hard timeout
  on every call), and the mapping of answers to ``RelayError`` kinds;
* ``RelayClient``: the loops. One poll is outstanding whenever the runner has a free
  slot, so a queued job is picked up within milliseconds; a sender posts the events the
  runner produced, batching only what piled up while the previous post was in flight.
  Errors back off (jittered, capped, ``Retry-After`` honoured) and the client
  reconnects by itself; a rejected credential is final (``repair_required``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from lattice_protocol import (
    MAX_EVENTS_POST_BYTES,
    CancelNotice,
    ErrorCode,
    JobEnvelope,
    ProtocolError,
    SealedEvent,
    __version__,
    iso_from_seconds,
)

from .backoff import Backoff, parse_retry_after
from .config import relay_base_url
from .runner import JobRunner

log = logging.getLogger("lattice_daemon.relay")

CALL_TIMEOUT = 15.0  # register / events / deregister: a healthy gateway answers in ms
LATE_LEASE = ("the job reached this machine too late (the network held the relay's answer): "
              "it was not run")
POLL_GRACE = 10.0  # the poll's read timeout is the announced window plus this
# A draining replica's 503s while the load balancer moves us elsewhere are no outage
# for this long (balancers check health every few seconds).
MOVE_GRACE_SECONDS = 30.0
DEFAULT_POLL_WINDOW = 25.0
MAX_POLL_WINDOW = 50.0  # docs/protocol.md: the announced window is bounded 1..50 s
SPACE_FOR_EVENTS = 256  # at most this many events in one post
EVENTS_GIVE_UP = 30.0  # seconds of failed event posts after which results are dropped
EVENTS_RETRY_INITIAL, EVENTS_RETRY_MAX = 0.2, 5.0  # backoff between failed event posts
PROVIDER_CHECK_SECONDS = 30.0  # how often the registered models are compared with the provider's


class RelayState(str, enum.Enum):
    NOT_PAIRED = "not_paired"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    REPAIR_REQUIRED = "repair_required"


@dataclass
class RelayStatus:
    """What the control API shows about the relay connection."""

    state: RelayState
    since: float
    gateway: str | None = None
    last_poll_at: float | None = None
    last_error: str | None = None
    # The gateway sees a live session of another machine on this pairing (a copied
    # daemon.toml): jobs are split between the two.
    instance_conflict: bool = False

    def set(self, state: RelayState, error: str | None = None) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()
        self.last_error = error

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "since": iso_from_seconds(self.since),
            "gateway": self.gateway,
            "lastPollAt": (None if self.last_poll_at is None
                           else iso_from_seconds(self.last_poll_at)),
            "lastError": self.last_error,
            "instanceConflict": self.instance_conflict,
        }

    def set_instance_conflict(self, conflict: bool) -> None:
        if conflict and not self.instance_conflict:
            log.warning("another machine is serving this runtime with a copy of this "
                        "pairing (same daemon.toml and key): jobs are split between them; "
                        "pair each machine with its own bootstrap token")
        elif self.instance_conflict and not conflict:
            log.info("no other machine serves this pairing any more")
        self.instance_conflict = conflict


# ------------------------------------------------------------------------ errors


class RelayError(Exception):
    """A failed relay call that may succeed later (network, 5xx, 429)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class ReplicaDraining(RelayError):
    """503 ``service_unavailable``: this gateway replica is shutting down; another one
    answers the next request (the load balancer learns it from the replica's /readyz)."""


class SessionLost(RelayError):
    """404: the gateway does not know the session (it restarted, or the session expired)."""


class CredentialRejected(RelayError):
    """401/403: the runtime was revoked, deleted or re-paired elsewhere. Final."""


def _describe_transport_error(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if len(text) > 160:
        text = text[:160] + "..."
    if isinstance(exc, httpx.ProxyError):
        return f"proxy error: {text}"
    if isinstance(exc, httpx.TimeoutException):
        return f"gateway timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        if "CERTIFICATE" in text.upper() or "SSL" in text.upper():
            return f"TLS error: {text}"
        return f"gateway unreachable: {text}"
    return f"connection to the gateway failed: {text}"


def _error_message(response: httpx.Response) -> tuple[str, str]:
    """(code, message) from the OpenAI error envelope, tolerating anything else."""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return str(error.get("code") or ""), str(error.get("message") or "")[:200]
    except ValueError:
        pass
    return "", ""


# ----------------------------------------------------------------------- the API


@dataclass(frozen=True)
class Session:
    session_id: str
    poll_window: float
    instance_conflict: bool = False
    # The gateway fails a leased job when the daemon shows no sign of life this long
    # after the lease (None: a gateway that does not say).
    presence_window: float | None = None


@dataclass(frozen=True)
class PollAnswer:
    jobs: list[JobEnvelope]
    cancels: list[CancelNotice]
    # An upper bound on how long ago the jobs were leased: the poll's round trip less the
    # time the gateway held it (durations on each side: no clocks compared). None when
    # the gateway does not say how long it held the poll.
    leased_at_most_ago: float | None = None


class RelayApi:
    """The relay's five requests over one HTTP client; the daemon token stays in here."""

    def __init__(self, relay_url: str, daemon_token: str, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = relay_base_url(relay_url)
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=4,
                              keepalive_expiry=60.0)
        self._client = httpx.AsyncClient(
            trust_env=True,  # HTTPS_PROXY / NO_PROXY / SSL_CERT_FILE
            transport=transport,  # None: httpx's own, which honours the proxy variables
            headers={"authorization": f"Bearer {daemon_token}",
                     "user-agent": f"lattice-daemon/{__version__}"},
            timeout=httpx.Timeout(CALL_TIMEOUT),
            limits=limits,
        )
        self.instance_conflict = False  # as the last poll answer said

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: Any = None,
                    timeout: httpx.Timeout | None = None, session: bool = True) -> Any:
        try:
            response = await self._client.request(
                method, self.base_url + path, json=body,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.TransportError as exc:
            raise RelayError(_describe_transport_error(exc)) from None
        status = response.status_code
        if status < 300:
            if status == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise RelayError(f"gateway sent invalid JSON (HTTP {status})") from None
        code, message = _error_message(response)
        # Final only when the gateway itself says so: a 401/403 page from a proxy, a WAF
        # or a captive portal is network trouble, retried like any other.
        if status == 403 and code == "runtime_revoked":
            raise CredentialRejected("runtime revoked: re-pair required")
        if status == 401 and code == "invalid_api_key":
            if "relay key was rotated" in message:  # docs/protocol.md, credentials
                raise CredentialRejected("the gateway's relay key was rotated since this "
                                         "machine paired: re-pair required")
            raise CredentialRejected("daemon credential rejected (runtime deleted or "
                                     "re-paired elsewhere): re-pair required")
        if status == 404 and session:
            raise SessionLost("relay session not found (gateway restarted?)")
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        detail = f": {message}" if message else ""
        error = ReplicaDraining if status == 503 and code == "service_unavailable" else RelayError
        raise error(f"gateway answered HTTP {status}{detail}", retry_after)

    async def register(self, body: dict[str, Any]) -> Session:
        answer = await self._call("POST", "/sessions", body, session=False)
        if not isinstance(answer, dict) or not isinstance(answer.get("sessionId"), str):
            raise RelayError("gateway sent a malformed session answer")
        window = _seconds(answer.get("pollWindowSeconds")) or DEFAULT_POLL_WINDOW
        # The poll's read timeout derives from the window: an absurd one (a gateway bug)
        # would leave a silently dropped connection (NAT, Wi-Fi change) hanging for ever.
        presence = _seconds(answer.get("presenceWindowSeconds"))
        return Session(answer["sessionId"], min(window, MAX_POLL_WINDOW),
                       answer.get("instanceConflict") is True, presence)

    async def poll(self, session: Session, capacity: int,
                   paused: dict[str, Any] | None = None) -> PollAnswer:
        timeout = httpx.Timeout(CALL_TIMEOUT, read=session.poll_window + POLL_GRACE)
        body: dict[str, Any] = {"capacity": capacity}
        if paused is not None:  # said again on every poll while paused (it expires)
            body["paused"] = paused
        sent = time.monotonic()
        answer = await self._call("POST", f"/sessions/{session.session_id}/poll",
                                  body, timeout)
        round_trip = time.monotonic() - sent
        if not isinstance(answer, dict):
            raise RelayError("gateway sent a malformed poll answer")
        # Read by RelayClient after each poll (kept out of the return value: one flag).
        self.instance_conflict = answer.get("instanceConflict") is True
        held = _seconds(answer.get("heldSeconds"))
        return PollAnswer(
            _parse_list(answer.get("jobs"), JobEnvelope.from_dict, "job"),
            _parse_list(answer.get("cancels"), CancelNotice.from_dict, "cancel"),
            None if held is None else max(0.0, round_trip - held))

    async def post_events(self, session: Session, events: list[SealedEvent]
                          ) -> tuple[list[dict[str, Any]], list[CancelNotice]]:
        answer = await self._call("POST", f"/sessions/{session.session_id}/events",
                                  {"events": [e.to_dict() for e in events]})
        if not isinstance(answer, dict):
            return [], []
        refused = [r for r in answer.get("refused") or [] if isinstance(r, dict)]
        return refused, _parse_list(answer.get("cancels"), CancelNotice.from_dict, "cancel")

    async def post_state(self, session: Session, paused: dict[str, Any] | None) -> None:
        await self._call("POST", f"/sessions/{session.session_id}/state",
                         {"paused": paused})

    async def deregister(self, session: Session, timeout: float = 5.0) -> None:
        await self._call("DELETE", f"/sessions/{session.session_id}",
                         timeout=httpx.Timeout(timeout))


def _lease_may_have_lapsed(answer: PollAnswer, session: Session) -> bool:
    """Whether the gateway may already have failed these jobs for the app.

    It fails a leased job when the daemon shows no sign of life for the presence window
    after the lease. A poll answer the network held that long (TCP retransmitting over a
    bad link) may carry jobs the app was already told failed, and may retry: running one
    then would reach the provider twice. Refused instead (the gateway drops the error if
    it already answered the app). The bound also counts the request's way to the
    gateway, so it errs towards refusing.
    """
    if answer.leased_at_most_ago is None or session.presence_window is None:
        return False
    return answer.leased_at_most_ago > session.presence_window


def _seconds(value: Any) -> float | None:
    """A non-negative number of seconds from the gateway, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None
    return float(value)


def _parse_list(value: Any, parse: Callable[[Any], Any], what: str) -> list[Any]:
    items = []
    for raw in value if isinstance(value, list) else []:
        try:
            items.append(parse(raw))
        except ProtocolError as exc:
            log.warning("ignored a malformed %s from the gateway: %s", what, exc)
    return items


# -------------------------------------------------------------------- the client


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background poll's outcome as seen; the main loop meets any error again."""
    if not task.cancelled():
        task.exception()


async def _stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again while it runs: a
    library that turns a cancellation into an error (CPython 3.11's asyncio.timeout racing
    its own deadline) leaves a retrying loop running, and a stop must not wait forever."""
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if task is not None:
        _retrieve(task)


class Outbox:
    """Sealed events on their way to the gateway: the runner puts them, the relay client
    takes them a post's worth at a time. One per pairing, which builds both ends with it."""

    def __init__(self) -> None:
        self._events: list[SealedEvent] = []
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: SealedEvent) -> None:
        self._events.append(event)
        self._ready.set()

    async def take(self) -> list[SealedEvent]:
        """The next batch for one post; waits until there is one."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            taken = _batch_length(self._events)
            batch, self._events = self._events[:taken], self._events[taken:]
            if self._events:
                self._ready.set()
            if batch:
                return batch

    def drop_all(self) -> int:
        dropped = len(self._events)
        self._events.clear()
        return dropped


class RelayClient:
    """Keeps a session, polls for jobs, posts the outbox's events; one per pairing."""

    def __init__(
        self,
        api: RelayApi,
        runner: JobRunner,
        status: RelayStatus,
        *,
        outbox: Outbox,
        describe_provider: Callable[[], Awaitable[dict[str, Any]]],
        backoff: Backoff | None = None,
        instance_id: str | None = None,
        paused: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.api = api
        self._instance_id = instance_id
        self.runner = runner
        self.status = status
        self.session: Session | None = None
        self._describe_provider = describe_provider
        self._paused = paused or (lambda: None)
        self._state_task: asyncio.Task[None] | None = None
        self._backoff = backoff or Backoff()
        self.outbox = outbox
        self._heartbeat: asyncio.Task[None] | None = None
        self._draining_since = 0.0  # monotonic: since when replicas answer "draining"
        self._poll_task: asyncio.Task[None] | None = None
        self._send_task: asyncio.Task[None] | None = None
        self._check_task: asyncio.Task[None] | None = None
        self._registered_provider: dict[str, Any] | None = None
        self._registration_stale = False
        self._sending = False
        self._stopping = False
        self._lost_in_a_row = 0
        self.polls = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._poll_task = loop.create_task(self._poll_loop(), name="relay-poll")
        self._send_task = loop.create_task(self._send_loop(), name="relay-send")
        self._check_task = loop.create_task(self._check_provider_loop(), name="relay-check")

    async def stop_polling(self) -> None:
        """Take no more jobs (the first step of a graceful stop)."""
        self._stopping = True  # the loops end on their next turn even if a cancel is lost
        for task in (self._poll_task, self._heartbeat, self._check_task, self._state_task):
            await _stop(task)

    async def flush(self, timeout: float) -> bool:
        """Wait until every produced event was posted (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.outbox or self._sending:
            if self._send_task is None or self._send_task.done():
                return not self.outbox
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def close(self, *, deregister: bool, timeout: float = 5.0) -> None:
        """Stop everything; deregister the session so the runtime turns offline at once."""
        await self.stop_polling()
        await _stop(self._send_task)
        session, self.session = self.session, None
        if deregister and session is not None:
            try:
                await self.api.deregister(session, timeout)
                log.info("deregistered relay session %s", session.session_id)
            except RelayError as exc:
                log.warning("could not deregister the relay session: %s", exc.message)
        await self.api.aclose()

    # -- loops --------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while not self._stopping:
            try:
                if self.session is None:
                    await self._register()
                elif self._registration_stale and not self.runner.in_flight:
                    await self._register_again()
                free = self.runner.free_slots
                if free:
                    await self._poll_once(free)
                else:
                    await self._heartbeat_until_free()
            except CredentialRejected as exc:
                self._repair_required(exc)
                return
            except SessionLost as exc:
                self._lose_session(exc)
                if self._lost_in_a_row:  # re-register at once, but never in a tight loop
                    await asyncio.sleep(self._backoff.next_delay())
                self._lost_in_a_row += 1
            except ReplicaDraining as exc:
                # Moving to another replica: not an outage, unless it lasts (a gateway that
                # is only ever shutting down, or a balancer that keeps choosing it).
                now = time.monotonic()
                self._draining_since = self._draining_since or now
                if now - self._draining_since > MOVE_GRACE_SECONDS:
                    self._failed(exc)
                await asyncio.sleep(self._backoff.next_delay(exc.retry_after))
            except RelayError as exc:
                self._failed(exc)
                await asyncio.sleep(self._backoff.next_delay(exc.retry_after))
            except Exception as exc:  # a bug must not end polling while status says fine
                log.exception("unexpected error in the relay loop; retrying")
                self._failed(RelayError(f"internal error: {type(exc).__name__}"))
                await asyncio.sleep(self._backoff.next_delay())

    async def _poll_once(self, capacity: int) -> None:
        session = self.session
        assert session is not None
        answer = await self.api.poll(session, capacity, self._paused())
        self.polls += 1
        self._lost_in_a_row = 0
        self._draining_since = 0.0
        self._backoff.reset()
        self.status.last_poll_at = time.time()
        if self.session is session:
            self.status.set(RelayState.CONNECTED)
            self.status.set_instance_conflict(self.api.instance_conflict)
        for notice in answer.cancels:
            self.runner.cancel(notice.job_id, notice.reason)
        late = _lease_may_have_lapsed(answer, session)
        for envelope in answer.jobs:
            if late:
                self.runner.refuse(envelope, ErrorCode.RUNTIME_UNREACHABLE, LATE_LEASE)
            else:
                self.runner.start(envelope)
        if answer.jobs:
            # Let the jobs reach their provider before building the next poll request
            # (~0.3 ms of CPU that would otherwise delay every pickup).
            await asyncio.sleep(0)

    async def _heartbeat_until_free(self) -> None:
        """Every slot is busy: hold a capacity-0 poll (it brings cancel notices and keeps
        the runtime present) until it returns or a slot frees up. A freed slot starts a
        real poll at once; the heartbeat then finishes on its own."""
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._poll_once(0))
            self._heartbeat.add_done_callback(_retrieve)
        heartbeat = self._heartbeat
        freed = asyncio.get_running_loop().create_task(self.runner.wait_for_capacity())
        try:
            done, _ = await asyncio.wait({heartbeat, freed},
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            freed.cancel()
        if heartbeat in done:
            self._heartbeat = None
            heartbeat.result()  # re-raises its RelayError for the loop to handle

    async def _register(self) -> None:
        provider = await self._describe_provider()
        body = {"daemonVersion": __version__, "provider": provider,
                "maxConcurrency": self.runner.max_concurrency, "paused": self._paused()}
        if self._instance_id:
            body["instanceId"] = self._instance_id
        self.session = await self.api.register(body)
        self.status.set_instance_conflict(self.session.instance_conflict)
        self._registered_provider, self._registration_stale = provider, False
        log.info("relay session %s registered (poll window %g s)", self.session.session_id,
                 self.session.poll_window)
        if self.status.state == RelayState.RECONNECTING:
            log.info("reconnected to the gateway")
        self.status.last_poll_at = time.time()
        self.status.set(RelayState.CONNECTED)

    def announce_state(self) -> None:
        """The runtime was paused or resumed: tell the gateway now, not at the next poll
        (a held poll can take a whole window). A newer change replaces one on its way."""
        if self._stopping:
            return
        if self._state_task is not None:
            self._state_task.cancel()
        self._state_task = asyncio.get_running_loop().create_task(self._post_state(),
                                                                  name="relay-state")

    async def _post_state(self) -> None:
        backoff = Backoff(EVENTS_RETRY_INITIAL, EVENTS_RETRY_MAX)
        for _attempt in range(8):
            session = self.session
            if session is None:
                return  # the next registration carries the state
            try:
                await self.api.post_state(session, self._paused())
                return
            except (CredentialRejected, SessionLost):
                return  # the poll loop meets it too (and a new session carries the state)
            except RelayError as exc:
                log.warning("could not tell the gateway the runtime's state: %s", exc.message)
                await asyncio.sleep(backoff.next_delay(exc.retry_after))

    def registration_changed(self) -> None:
        """What the session was registered with changed (max_concurrency, the allowed
        models): register again once no job runs."""
        self._registration_stale = True

    async def check_provider(self) -> None:
        """Mark the session for a new registration when the provider's models changed
        since it registered (the gateway shows and uses what was registered: a daemon that
        started before Ollama would otherwise list no models until it restarts)."""
        if self.session is None or self._registered_provider is None:
            return
        if await self._describe_provider() != self._registered_provider:
            self._registration_stale = True

    async def _check_provider_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(PROVIDER_CHECK_SECONDS)
            try:
                await self.check_provider()
            except Exception:  # never fatal: the check only keeps a listing fresh
                log.exception("checking the provider's models failed")

    async def _register_again(self) -> None:
        """Register a new session with the current models, then end the old one. Only
        while no job runs: events go out under the current session, and jobs leased to
        the old one would lose their leases."""
        old = self.session
        assert old is not None
        await self._register()
        if self._heartbeat is not None:  # a capacity-0 poll still held on the old session
            self._heartbeat.cancel()
            self._heartbeat = None
        log.info("the provider's models changed: re-registered (was session %s)",
                 old.session_id)
        try:
            await self.api.deregister(old)
        except RelayError as exc:
            log.warning("could not end the previous relay session: %s", exc.message)

    async def _send_loop(self) -> None:
        while True:
            batch = await self.outbox.take()
            self._sending = True
            try:
                await self._post(batch)
            except Exception:  # drop this batch, but keep sending: a dead sender loses all
                log.exception("unexpected error posting %d events; dropped them", len(batch))
            finally:
                self._sending = False

    async def _post(self, batch: list[SealedEvent]) -> None:
        backoff = Backoff(EVENTS_RETRY_INITIAL, EVENTS_RETRY_MAX)
        first_failure = 0.0
        while True:
            session = self.session
            if session is None:
                if batch:
                    log.warning("dropped %d events: no relay session", len(batch))
                return
            try:
                refused, cancels = await self.api.post_events(session, batch)
            except CredentialRejected as exc:
                self._repair_required(exc)
                return
            except SessionLost as exc:
                # The leases died with the session: results can no longer be delivered.
                if self.session is session:
                    self._lose_session(exc)
                return
            except RelayError as exc:
                self._failed(exc)
                now = time.monotonic()
                first_failure = first_failure or now
                if now - first_failure > EVENTS_GIVE_UP:
                    # The leases are long gone; stop producing what cannot be delivered.
                    dropped = self.runner.cancel_all("results undeliverable")
                    log.warning("gave up delivering results after %g s: dropped %d events "
                                "and %d running jobs", EVENTS_GIVE_UP,
                                len(batch) + self.outbox.drop_all(), dropped)
                    return
                delay = backoff.next_delay(exc.retry_after)
                # Never past the give-up point (a proxy's "Retry-After: 3600" would hold
                # every result for an hour while the leases run out).
                await asyncio.sleep(max(0.0, min(delay, first_failure + EVENTS_GIVE_UP - now)))
                continue
            for refusal in refused:
                job_id = str(refusal.get("jobId", ""))
                if self.runner.cancel(job_id, f"gateway refused its events: "
                                              f"{refusal.get('code', '')}"):
                    log.info("job %s dropped: lease no longer held", job_id)
            for notice in cancels:
                self.runner.cancel(notice.job_id, notice.reason)
            return

    # -- state changes ------------------------------------------------------------------

    def _failed(self, exc: RelayError) -> None:
        if self.status.last_error != exc.message:  # once per outage, not per retry
            log.warning("relay error: %s (retrying until reconnected)", exc.message)
        never_connected = self.status.state == RelayState.CONNECTING
        self.status.set(RelayState.CONNECTING if never_connected else RelayState.RECONNECTING,
                        exc.message)

    def _lose_session(self, exc: RelayError) -> None:
        log.warning("%s; registering a new session", exc.message)
        self.session = None
        dropped = self.runner.cancel_all("relay session lost")
        if dropped:
            log.warning("cancelled %d in-flight jobs: their leases ended with the session",
                        dropped)
        self.status.set(RelayState.RECONNECTING, exc.message)

    def _repair_required(self, exc: RelayError) -> None:
        log.error("%s; polling stopped until a new pairing is loaded", exc.message)
        self.session = None
        self.runner.cancel_all("credential rejected")
        self.status.set(RelayState.REPAIR_REQUIRED, exc.message)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._poll_task is not None and self._poll_task is not asyncio.current_task():
            self._poll_task.cancel()


def _batch_length(outbox: list[SealedEvent]) -> int:
    """How many events from the front of ``outbox`` fit in one post: at most
    SPACE_FOR_EVENTS, and within the gateway's body bound (at least one event: the
    runner never seals one larger than MAX_SEALED_EVENT_BYTES)."""
    size = 0
    for count, event in enumerate(outbox[:SPACE_FOR_EVENTS]):
        size += len(event.sealed) + len(event.job_id) + _EVENT_FRAMING
        if count and size > MAX_EVENTS_POST_BYTES - _POST_FRAMING:
            return count
    return min(len(outbox), SPACE_FOR_EVENTS)


_EVENT_FRAMING = 64  # JSON keys, quotes and the seq of one event
_POST_FRAMING = 1024
