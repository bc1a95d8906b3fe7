"""`ping` and `status` against a stand-in control socket: output, --json, states, errors."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from lattice_ctl.control_client import (
    ControlClient,
    DaemonApiError,
    DaemonBadAnswer,
    DaemonNotRunning,
    DaemonPermissionDenied,
    parse_answer,
)
from tests.ctl.conftest import RunCtl, stdout_json
from tests.ctl.fake_control import FakeControlServer, ping_body, status_body, troubled_relay


def test_ping_prints_version_uptime_relay_and_provider(run_ctl: RunCtl,
                                                       fake_daemon: FakeControlServer) -> None:
    result = run_ctl("ping")
    assert result.exit_code == 0, result.stderr
    assert "Daemon 0.1.0" in result.stdout
    assert "up 2m 5s" in result.stdout
    assert "Connected to http://127.0.0.1:9" in result.stdout
    assert "ollama at http://localhost:11434: ok" in result.stdout
    assert "llama3.2" in result.stdout
    assert fake_daemon.requests[0][0] == "GET /v1/ping"


def test_ping_names_the_gateway_of_a_runtime_that_needs_re_pairing(
        run_ctl: RunCtl, fake_daemon: FakeControlServer) -> None:
    fake_daemon.answer("GET /v1/ping", 200, ping_body(relay=troubled_relay(
        "repair_required", "runtime revoked: re-pair required")))
    result = run_ctl("ping")
    assert result.exit_code == 0, result.stderr
    assert ("Relay: Re-pair required (gateway http://127.0.0.1:9) - runtime revoked"
            in result.stdout)


def test_ping_json_is_the_daemon_answer_plus_round_trip(run_ctl: RunCtl,
                                                        fake_daemon: FakeControlServer) -> None:
    result = run_ctl("--json", "ping")
    assert result.exit_code == 0
    data = stdout_json(result)
    assert data["relay"]["state"] == "connected"
    assert data["provider"]["models"] == ["llama3.2", "qwen3"]
    assert data["roundTripMs"] >= 0
    assert result.stderr == ""


def test_version_mismatch_is_warned_on_stderr(run_ctl: RunCtl,
                                              fake_daemon: FakeControlServer) -> None:
    fake_daemon.version = "9.9.9"
    fake_daemon.answer("GET /v1/ping", 200, ping_body(daemonVersion="9.9.9"))
    result = run_ctl("--json", "ping")
    assert result.exit_code == 0
    assert "9.9.9" in result.stderr and "daemon restart" in result.stderr
    stdout_json(result)  # the warning never pollutes stdout


@pytest.mark.parametrize(("relay", "line", "exit_code"), [
    ({"state": "connected"}, "Connected", 0),
    ({"state": "not_paired"}, "Not paired", 4),
    ({"state": "repair_required", "lastError": "runtime revoked: re-pair required"},
     "Re-pair required", 6),
    ({"state": "reconnecting", "since": "2026-01-01T10:00:00.000Z",
      "lastError": "gateway unreachable: connection refused"},
     "Reconnecting since 2026-01-01T10:00:00.000Z", 5),
    ({"state": "connecting"}, "Connecting", 5),
])
def test_status_state_line(run_ctl: RunCtl, fake_daemon: FakeControlServer,
                           relay: dict[str, str], line: str, exit_code: int) -> None:
    fake_daemon.answer("GET /v1/status", 200, status_body(relay=relay))
    result = run_ctl("status")
    assert result.exit_code == exit_code
    assert result.stdout.splitlines()[0] == line
    if relay.get("lastError"):
        assert relay["lastError"] in result.stdout


def test_status_details_runtime_jobs_provider(run_ctl: RunCtl,
                                              fake_daemon: FakeControlServer) -> None:
    out = run_ctl("status").stdout
    assert "Runtime: rt_test (Test laptop)" in out
    assert "Gateway: http://127.0.0.1:9" in out
    assert "Last successful poll: 2026-01-01T00:02:00.000Z" in out
    assert "1 in flight, 7 served, 2 failed" in out
    data = stdout_json(run_ctl("--json", "status"))
    assert data["running"] is True and data["state"] == "connected"
    assert data["jobs"]["inFlight"] == 1


def test_garbage_answer_is_a_clear_error(run_ctl: RunCtl,
                                         fake_daemon: FakeControlServer) -> None:
    fake_daemon.answer_raw("GET /v1/ping", b"SSH-2.0-OpenSSH\r\n")
    result = run_ctl("ping")
    assert result.exit_code == 1
    assert "did not answer like the Lattice daemon" in result.stderr


def test_error_envelope_becomes_the_message(run_ctl: RunCtl,
                                            fake_daemon: FakeControlServer) -> None:
    fake_daemon.answer("GET /v1/ping", 503, {"error": {"message": "starting up",
                                                       "code": "unavailable"}})
    result = run_ctl("--json", "ping")
    assert result.exit_code == 1
    assert stdout_json(result)["error"] == "starting up"


def test_stale_socket_file_means_not_running(run_ctl: RunCtl, lattice_home: Path) -> None:
    from lattice_daemon.paths import get_paths

    path = get_paths().socket
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed daemon
    result = run_ctl("ping")
    assert result.exit_code == 1
    assert "not running" in result.stderr


def test_client_errors_are_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DaemonNotRunning):
        ControlClient(tmp_path / "none.sock").ping()

    def denied(self: socket.socket, address: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket.socket, "connect", denied)
    with pytest.raises(DaemonPermissionDenied, match="Permission denied"):
        ControlClient(tmp_path / "x.sock").ping()


def test_silent_daemon_times_out_within_the_deadline(lattice_home: Path) -> None:
    path = lattice_home / "silent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)  # accepts (in the backlog) but never answers
    try:
        started = time.monotonic()
        with pytest.raises(DaemonBadAnswer, match="did not answer in time"):
            ControlClient(path, timeout=0.3).ping()
        assert time.monotonic() - started < 2
    finally:
        listener.close()


def test_parse_answer_handles_chunked_and_rejects_non_json() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"7\r\n{\"a\": 1\r\n1\r\n}\r\n0\r\n\r\n")
    assert parse_answer(raw).body == {"a": 1}
    with pytest.raises(DaemonBadAnswer):
        parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    with pytest.raises(DaemonBadAnswer):
        parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")


def test_api_error_carries_code(fake_daemon: FakeControlServer) -> None:
    fake_daemon.answer("POST /v1/reload", 409, {"error": {"message": "bad config",
                                                          "code": "config_invalid"}})
    with pytest.raises(DaemonApiError) as info:
        ControlClient(fake_daemon.path).reload()
    assert info.value.code == "config_invalid" and info.value.status == 409


def test_socket_option_and_environment_pick_the_daemon(run_ctl: RunCtl, lattice_home: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.ctl.fake_control import fake_daemon_socket

    custom = lattice_home / "elsewhere" / "d.sock"
    with fake_daemon_socket(custom) as server:
        server.answer("GET /v1/ping", 200, ping_body(pid=777))
        assert stdout_json(run_ctl("--json", "--socket", str(custom), "ping"))["pid"] == 777
        monkeypatch.setenv("LATTICE_SOCKET", str(custom))
        assert stdout_json(run_ctl("--json", "ping"))["pid"] == 777


def test_bracketed_words_from_the_daemon_are_printed_as_they_are(
        run_ctl: RunCtl, fake_daemon: FakeControlServer) -> None:
    fake_daemon.answer("GET /v1/ping", 200, ping_body(relay=troubled_relay(
        "reconnecting", "gateway answered HTTP 400: [daemon] bad [b]field[/b]")))
    result = run_ctl("ping")
    assert result.exit_code == 0, result.stderr
    assert "gateway answered HTTP 400: [daemon] bad [b]field[/b]" in result.stdout
