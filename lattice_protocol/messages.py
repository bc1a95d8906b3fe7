"""Message shapes that cross the relay, with strict parsing.

Two layers:

* relay-visible envelopes (``JobEnvelope``, ``SealedEvent``, ``CancelNotice``): ids,
  sequence numbers and deadlines the relay needs for routing, plus a sealed body;
* sealed bodies (``JobSpec``, ``ResultEvent``): the request and what the provider
  produced, readable only by the gateway and the daemon. Each sealed body repeats the
  job id, so an envelope cannot be replayed under another job.

``from_dict`` rejects wrong types, missing fields and unknown versions with a
``ProtocolError`` saying what is wrong.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Literal

PROTOCOL_VERSION = 1
_MAX_ID = 128

# Sizes the relay carries (docs/protocol.md §4): the gateway accepts event posts up to
# MAX_EVENTS_POST_BYTES; the daemon never seals one event beyond MAX_SEALED_EVENT_BYTES
# (it sends an error for that job instead) and splits batches to fit a post.
MAX_EVENTS_POST_BYTES = 16 * 1024 * 1024
MAX_SEALED_EVENT_BYTES = 8 * 1024 * 1024


class ProtocolError(ValueError):
    """A message that does not fit the protocol. ``reason`` is a short machine tag."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _field(d: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if name not in d:
        raise ProtocolError(f"{what}: missing field {name!r}")
    value = d[name]
    # bool is an int subclass; never accept it where a number is meant.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ProtocolError(f"{what}: field {name!r} has the wrong type")
    if not isinstance(value, kind):
        raise ProtocolError(f"{what}: field {name!r} has the wrong type")
    return value


def _id(d: dict[str, Any], name: str, what: str) -> str:
    value: str = _field(d, name, str, what)
    if not value or len(value) > _MAX_ID:
        raise ProtocolError(f"{what}: field {name!r} must be 1 to {_MAX_ID} characters")
    return value


def _version(d: dict[str, Any], what: str) -> None:
    v = _field(d, "v", int, what)
    if v != PROTOCOL_VERSION:
        raise ProtocolError(f"{what}: unsupported protocol version {v}", reason="version")


def _number(d: dict[str, Any], name: str, what: str) -> float:
    value = float(_field(d, name, (int, float), what))
    if value != value or value < 0:  # NaN or negative
        raise ProtocolError(f"{what}: field {name!r} must be a non-negative number")
    return value


# --------------------------------------------------------------------------- jobs

CredentialKind = Literal["apiKey", "oauth"]
_CREDENTIAL_KINDS = ("apiKey", "oauth")
_MAX_TEXT = 256


def _text(d: dict[str, Any], name: str, what: str) -> str | None:
    value = d.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ProtocolError(f"{what}: field {name!r} must be a string of at most "
                            f"{_MAX_TEXT} characters")
    return value


@dataclass(frozen=True)
class Requester:
    """Who asked for a job, as the gateway vouches for it inside the sealed job.

    The relay never sees it, and it never holds a secret: the credential is named by its
    id and its human name (an app), not by its value. ``user`` is the OpenAI ``user``
    field if the app set one; ``request_id`` is the gateway's ``x-request-id``, so the
    owner's activity log and the app's logs can be matched.
    """

    account_id: str
    credential_kind: CredentialKind
    credential_id: str
    credential_name: str
    user: str | None = None
    request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"accountId": self.account_id, "credentialKind": self.credential_kind,
                "credentialId": self.credential_id, "credentialName": self.credential_name,
                "user": self.user, "requestId": self.request_id}

    @classmethod
    def from_dict(cls, value: Any) -> Requester:
        what = "job.requester"
        d = _obj(value, what)
        kind = d.get("credentialKind")
        if kind not in _CREDENTIAL_KINDS:
            raise ProtocolError(f"{what}: field 'credentialKind' must be one of "
                                + ", ".join(_CREDENTIAL_KINDS))
        name = _text(d, "credentialName", what)
        if not name:
            raise ProtocolError(f"{what}: field 'credentialName' must be a non-empty string")
        return cls(account_id=_id(d, "accountId", what), credential_kind=kind,
                   credential_id=_id(d, "credentialId", what), credential_name=name,
                   user=_text(d, "user", what), request_id=_text(d, "requestId", what))


@dataclass(frozen=True)
class JobSpec:
    """The sealed body of a job: what the daemon runs.

    ``deadline`` (unix seconds) is the latest moment the daemon may *start* the job;
    once running, a job is bounded by silence, not by total length:
    ``first_token_timeout`` while the model loads, then ``idle_timeout`` between chunks.
    """

    job_id: str
    lattice_id: str
    deadline: float
    stream: bool
    request: dict[str, Any]  # OpenAI chat request body, without "model"
    model: str | None = None  # local model; None means the runtime's default
    first_token_timeout: float = 300.0
    idle_timeout: float = 120.0
    # None only from a gateway older than the requester field.
    requester: Requester | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "type": "job",
            "jobId": self.job_id,
            "latticeId": self.lattice_id,
            "deadline": self.deadline,
            "stream": self.stream,
            "model": self.model,
            "request": self.request,
            "firstTokenTimeout": self.first_token_timeout,
            "idleTimeout": self.idle_timeout,
        }
        if self.requester is not None:
            d["requester"] = self.requester.to_dict()
        return d

    @classmethod
    def from_dict(cls, value: Any) -> JobSpec:
        what = "job"
        d = _obj(value, what)
        _version(d, what)
        if d.get("type") != "job":
            raise ProtocolError("job: field 'type' must be 'job'")
        model = d.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise ProtocolError("job: field 'model' must be a non-empty string or null")
        return cls(
            job_id=_id(d, "jobId", what),
            lattice_id=_id(d, "latticeId", what),
            deadline=_number(d, "deadline", what),
            stream=_field(d, "stream", bool, what),
            request=_obj(d.get("request"), "job.request"),
            model=model,
            first_token_timeout=_number(d, "firstTokenTimeout", what),
            idle_timeout=_number(d, "idleTimeout", what),
            requester=None if d.get("requester") is None
            else Requester.from_dict(d["requester"]),
        )


@dataclass(frozen=True)
class JobEnvelope:
    """A job as the relay sees it (poll responses): routing data and the sealed spec."""

    job_id: str
    deadline: float
    sealed: str

    def to_dict(self) -> dict[str, Any]:
        return {"jobId": self.job_id, "deadline": self.deadline, "sealed": self.sealed}

    @classmethod
    def from_dict(cls, value: Any) -> JobEnvelope:
        what = "job envelope"
        d = _obj(value, what)
        return cls(
            job_id=_id(d, "jobId", what),
            deadline=_number(d, "deadline", what),
            sealed=_field(d, "sealed", str, what),
        )


@dataclass(frozen=True)
class CancelNotice:
    """Gateway -> daemon: stop working on a job (the app went away or timed out)."""

    job_id: str
    reason: str = "cancelled"

    def to_dict(self) -> dict[str, Any]:
        return {"jobId": self.job_id, "reason": self.reason}

    @classmethod
    def from_dict(cls, value: Any) -> CancelNotice:
        d = _obj(value, "cancel")
        return cls(job_id=_id(d, "jobId", "cancel"), reason=str(d.get("reason", "cancelled")))


# ------------------------------------------------------------------------- results

EventKind = Literal["chunk", "result", "error", "end", "progress"]
_EVENT_KINDS = ("chunk", "result", "error", "end", "progress")
FINAL_KINDS = frozenset({"result", "error", "end"})


_MAX_TIMING_MS = 1e10  # about four months: beyond it a number is garbage, not a duration


@dataclass(frozen=True)
class JobTiming:
    """How long a job took at the daemon, by the daemon's own clock (milliseconds).

    Sent on the final event (``result``, ``end``, ``error``); absent from older daemons.
    ``daemon_ms`` runs from the daemon accepting the job to handing its final event to
    the relay client; ``provider_ms`` (inside it) is the time in the provider call;
    ``first_output_ms`` from accepting the job to the first chunk or the result. Each is
    optional; only durations travel, never clock readings (the machines' clocks differ).
    """

    daemon_ms: float | None = None
    provider_ms: float | None = None
    first_output_ms: float | None = None

    _FIELDS = (("daemonMs", "daemon_ms"), ("providerMs", "provider_ms"),
               ("firstOutputMs", "first_output_ms"))

    def to_dict(self) -> dict[str, float]:
        return {wire: round(value, 3) for wire, name in self._FIELDS
                if (value := getattr(self, name)) is not None}

    @classmethod
    def from_dict(cls, value: Any) -> JobTiming:
        """Known fields checked (finite, non-negative milliseconds); unknown ones ignored,
        so a newer daemon's extra numbers do not break this reader."""
        d = _obj(value, "event.timing")
        values: dict[str, float] = {}
        for wire, name in cls._FIELDS:
            if wire not in d:
                continue
            number = d[wire]
            if isinstance(number, bool) or not isinstance(number, (int, float)) \
                    or not 0 <= number <= _MAX_TIMING_MS:
                raise ProtocolError(f"event.timing: field {wire!r} must be a number of "
                                    "milliseconds from 0 to 1e10")
            values[name] = float(number)
        return cls(**values)


@dataclass(frozen=True)
class ResultEvent:
    """The sealed body of one event the daemon sends back for a job.

    * ``chunk``: ``data`` is one OpenAI ``chat.completion.chunk`` (streaming jobs);
    * ``result``: ``data`` is the OpenAI ``chat.completion`` (non-streaming jobs);
    * ``end``: the stream finished normally;
    * ``error``: the job failed; ``code`` is an ErrorCode value, ``message`` says why,
      ``retry_after`` (optional, seconds) when the refusal lifts (a spent budget);
    * ``progress``: a non-streaming job is still running (the daemon keeps the
      provider's silence deadlines itself), so a long generation is not taken for a
      dead daemon.

    ``seq`` starts at 0 and increases by one per event of a job; ``result``, ``end`` and
    ``error`` are final.
    """

    kind: EventKind
    job_id: str
    seq: int
    data: dict[str, Any] | None = None
    code: str | None = None
    message: str | None = None
    timing: JobTiming | None = None  # final events of daemons that report it
    retry_after: float | None = None

    @property
    def final(self) -> bool:
        return self.kind in FINAL_KINDS

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": self.kind, "jobId": self.job_id,
                             "seq": self.seq}
        if self.data is not None:
            d["data"] = self.data
        if self.kind == "error":
            d["code"] = self.code
            d["message"] = self.message
            if self.retry_after is not None:
                d["retryAfter"] = self.retry_after
        if self.timing is not None:
            d["timing"] = self.timing.to_dict()
        return d

    @classmethod
    def from_dict(cls, value: Any) -> ResultEvent:
        what = "event"
        d = _obj(value, what)
        _version(d, what)
        kind = d.get("type")
        if kind not in _EVENT_KINDS:
            raise ProtocolError(f"event: unknown type {str(kind)[:32]!r}")
        seq = _field(d, "seq", int, what)
        if seq < 0:
            raise ProtocolError("event: field 'seq' must be >= 0")
        data = None
        code = message = None
        retry_after: float | None = None
        if kind in ("chunk", "result"):
            data = _obj(d.get("data"), f"{kind}.data")
        elif kind == "error":
            code = _field(d, "code", str, what)
            message = _field(d, "message", str, what)
            retry_after = _retry_after(d.get("retryAfter"))
        timing = None
        if kind in FINAL_KINDS and d.get("timing") is not None:
            timing = JobTiming.from_dict(d["timing"])
        return cls(kind=kind, job_id=_id(d, "jobId", what), seq=seq, data=data, code=code,
                   message=message, timing=timing, retry_after=retry_after)


MAX_RETRY_AFTER = 8 * 24 * 3600.0  # a week and a day: the longest a daemon rule can mean


def _retry_after(value: Any) -> float | None:
    """An error event's optional ``retryAfter``: seconds, finite, 0 to MAX_RETRY_AFTER."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 <= value <= MAX_RETRY_AFTER:
        raise ProtocolError("event: field 'retryAfter' must be a number of seconds from 0 "
                            f"to {MAX_RETRY_AFTER:g}")
    return float(value)


def parse_event(value: Any) -> ResultEvent:
    return ResultEvent.from_dict(value)


@dataclass(frozen=True)
class SealedEvent:
    """An event as the relay sees it (daemon -> gateway): routing data, sealed body."""

    job_id: str
    seq: int
    sealed: str

    def to_dict(self) -> dict[str, Any]:
        return {"jobId": self.job_id, "seq": self.seq, "sealed": self.sealed}

    @classmethod
    def from_dict(cls, value: Any) -> SealedEvent:
        what = "sealed event"
        d = _obj(value, what)
        seq = _field(d, "seq", int, what)
        if seq < 0:
            raise ProtocolError("sealed event: field 'seq' must be >= 0")
        return cls(job_id=_id(d, "jobId", what), seq=seq, sealed=_field(d, "sealed", str, what))


# --------------------------------------------------------------------------- replay


@dataclass
class ReplayGuard:
    """The daemon's memory of jobs it accepted, kept until each job's deadline passes.

    ``admit`` raises ``ProtocolError`` (reason ``expired`` or ``replay``) for a job past
    its deadline or seen before; a replay after the deadline is refused as expired, so
    an id can be forgotten once its deadline has passed. Forgetting walks a heap ordered
    by deadline: each admit costs O(log n), however many ids are remembered.
    """

    _seen: dict[str, float] = field(default_factory=dict)
    _by_deadline: list[tuple[float, str]] = field(default_factory=list)

    def admit(self, spec: JobSpec, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._forget_expired(now)
        if spec.deadline <= now:
            raise ProtocolError(f"job {spec.job_id} is past its deadline", reason="expired")
        if spec.job_id in self._seen:
            raise ProtocolError(f"job {spec.job_id} was already received", reason="replay")
        self._seen[spec.job_id] = spec.deadline
        heapq.heappush(self._by_deadline, (spec.deadline, spec.job_id))

    def _forget_expired(self, now: float) -> None:
        heap = self._by_deadline
        while heap and heap[0][0] <= now:
            _, job_id = heapq.heappop(heap)
            self._seen.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._seen)
