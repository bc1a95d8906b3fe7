"""A scripted relay for daemon tests: serves the daemon side of docs/protocol.md
(register, poll, events, deregister) on a free 127.0.0.1 port, in a thread.

Unlike the gateway, it hands out whatever envelopes the test queues, so a test can
deliver a captured sealed job again, exactly as someone with the relay queue could:

    with run_scripted_relay() as relay:
        relay.queue(envelope)              # the next poll (of any session) carries it
        relay.events                       # every SealedEvent the daemon posted
        relay.registers                    # every register body
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lattice_protocol import JobEnvelope, SealedEvent

POLL_HOLD = 0.5  # seconds an empty poll is held (short: tests stop daemons often)


@dataclass
class ScriptedRelay:
    url: str = ""
    registers: list[dict[str, Any]] = field(default_factory=list)
    events: list[SealedEvent] = field(default_factory=list)
    register_answer: dict[str, Any] = field(default_factory=dict)
    _jobs: list[JobEnvelope] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _sessions: int = 0

    def queue(self, envelope: JobEnvelope) -> None:
        with self._cond:
            self._jobs.append(envelope)
            self._cond.notify_all()

    def _register(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            self._sessions += 1
            self.registers.append(body)
            return {"sessionId": f"rs_test{self._sessions}", "latticeId": "lat_test",
                    "pollWindowSeconds": 1, "presenceWindowSeconds": 15,
                    **self.register_answer}

    def _poll(self, session_id: str, capacity: int) -> dict[str, Any]:
        with self._cond:
            if not self._jobs and capacity:
                self._cond.wait(POLL_HOLD)
            # Only the newest session gets jobs: a poll a killed daemon left held must
            # not take a job into a dead connection.
            if session_id != f"rs_test{self._sessions}":
                capacity = 0
            taken = self._jobs[:capacity]
            del self._jobs[:len(taken)]
        return {"jobs": [job.to_dict() for job in taken], "cancels": []}

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            self.events.extend(SealedEvent.from_dict(e) for e in body.get("events", []))
        return {"refused": [], "cancels": []}


def _handler(relay: ScriptedRelay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _answer(self, status: int, value: Any = None) -> None:
            data = b"" if value is None else json.dumps(value).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(OSError):  # a killed daemon's held poll
                self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            path = self.path.rstrip("/")
            if path.endswith("/v1/relay/sessions"):
                self._answer(201, relay._register(body))
            elif path.endswith("/poll"):
                session_id = path.split("/")[-2]
                self._answer(200, relay._poll(session_id, int(body.get("capacity", 0))))
            elif path.endswith("/events"):
                self._answer(200, relay._post(body))
            else:
                self._answer(404, {"error": {"message": "no such route", "type": "x",
                                             "param": None, "code": "not_found"}})

        def do_DELETE(self) -> None:
            self._answer(204)

    return Handler


@contextmanager
def run_scripted_relay() -> Iterator[ScriptedRelay]:
    relay = ScriptedRelay()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(relay))
    server.daemon_threads = True
    relay.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        server.shutdown()
        server.server_close()
