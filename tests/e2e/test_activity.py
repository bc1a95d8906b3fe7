"""The owner's activity log, `lattice-ctl activity` and `lattice-ctl top`, with real
processes: a gateway, two apps of one account (a named API key and a named access token),
a paired daemon and the OpenAI-compatible test server.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.e2e.harness import (
    CTL,
    PairedMachine,
    ctl,
    ctl_env,
    ctl_json,
    home_paths,
    pair_machine,
    provider_process,
    stop_daemon,
    wait_relay_state,
)
from tests.support.gateway import GatewayProcess
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

PROMPT_TOKENS = 21
REPLY = "alpha beta gamma"  # three chunks: the test server counts 3 completion tokens


@contextlib.contextmanager
def two_apps(lattice_home: Path, gateway: GatewayProcess, **behaviour: Any
             ) -> Iterator[tuple[PairedMachine, OpenAI, OpenAI]]:
    """A runtime of one account and two of its apps: "chat-app" (an API key) and
    "notes-app" (an access token), each with its own OpenAI client."""
    account = f"acct-{uuid.uuid4().hex[:8]}"
    key = gateway.create_key(account, name="chat-app")
    token = gateway.create_token(account, name="notes-app")
    with provider_process("openai", **behaviour) as provider:
        try:
            machine = pair_machine(lattice_home, gateway.url, key, provider)
            with machine.openai() as chat_app, OpenAI(
                    base_url=f"{gateway.url}/v1", api_key=token, max_retries=0,
                    timeout=20.0) as notes_app:
                yield machine, chat_app, notes_app
        finally:
            stop_daemon(lattice_home)


def log_file(home: Path) -> Path:
    return home_paths(home).data_dir / "activity.jsonl"


def log_entries(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_file(home).read_text().splitlines()]


def ask(client: OpenAI, machine: PairedMachine, text: str, **options: Any) -> Any:
    return client.chat.completions.create(
        model=machine.model, messages=[{"role": "user", "content": text}], **options)


def test_each_job_is_logged_for_its_app_with_tokens_and_no_prompt_text(
        lattice_home: Path, gateway: GatewayProcess) -> None:
    marker = f"secret-marker-{uuid.uuid4().hex}"
    with two_apps(lattice_home, gateway, prompt_tokens=PROMPT_TOKENS, reply=REPLY
                  ) as (machine, chat_app, notes_app):
        ask(chat_app, machine, f"first {marker}", user="alice")
        ask(chat_app, machine, f"second {marker}")
        ask(notes_app, machine, f"third {marker}")
        chunks = list(ask(notes_app, machine, f"fourth {marker}", stream=True,
                          stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None

        # The file: one line per job, private, attributed, no prompt or answer text.
        wait_until(lambda: len(log_entries(lattice_home)) == 4, timeout=10,
                   what="four activity entries")
        assert stat.S_IMODE(log_file(lattice_home).stat().st_mode) == 0o600
        text = log_file(lattice_home).read_text()
        assert marker not in text and "alpha" not in text
        entries = log_entries(lattice_home)
        assert [e["app"] for e in entries] == ["chat-app", "chat-app", "notes-app",
                                               "notes-app"]
        assert [e["credentialKind"] for e in entries] == ["apiKey", "apiKey", "oauth",
                                                          "oauth"]
        assert entries[0]["user"] == "alice" and entries[1]["user"] is None
        assert len({e["credentialId"] for e in entries[:2]}) == 1
        assert entries[0]["credentialId"] != entries[2]["credentialId"]
        for entry in entries:
            assert entry["outcome"] == "ok" and entry["refused"] is False
            assert entry["promptTokens"] == PROMPT_TOKENS
            assert entry["completionTokens"] == 3
            assert entry["model"] == "qwen2.5-7b-instruct"
            assert entry["jobId"] and entry["requestId"] and entry["accountId"]
            assert entry["durationMs"] >= 0
        assert [e["stream"] for e in entries] == [False, False, False, True]
        assert entries[3]["timeToFirstTokenMs"] is not None

        # `activity --json`: the same jobs and each app's totals.
        data = ctl_json(lattice_home, "activity", "--since", "1h")
        assert [e["jobId"] for e in data["entries"]] == [e["jobId"] for e in entries]
        apps = {app["app"]: app for app in data["apps"]}
        for name in ("chat-app", "notes-app"):
            assert apps[name]["requests"] == 2
            assert apps[name]["promptTokens"] == 2 * PROMPT_TOKENS
            assert apps[name]["completionTokens"] == 6
            assert apps[name]["refusals"] == 0
        only = ctl_json(lattice_home, "activity", "--app", "notes-app")
        assert {e["app"] for e in only["entries"]} == {"notes-app"}
        assert [app["app"] for app in only["apps"]] == ["notes-app"]

        # The table for people names both apps; a bad --since is a clear error.
        table = ctl(lattice_home, "activity")
        assert table.returncode == 0, table.stderr
        assert "chat-app" in table.stdout and "notes-app" in table.stdout
        assert "alice" in table.stdout
        bad = ctl(lattice_home, "activity", "--since", "yesterday-ish")
        assert bad.returncode == 1 and "since" in bad.stderr

        # Restarted with log_prompts on: the log and today's usage survive the restart,
        # and now the prompt and the answer are in the new entries.
        from lattice_daemon.config import load_config, save_config

        paths = home_paths(lattice_home)
        config = load_config(paths)
        save_config(paths, replace(
            config, daemon=replace(config.daemon, log_prompts=True),
            provider=replace(config.provider, allowed_models=["qwen2.5-7b-instruct"])))
        done = ctl(lattice_home, "daemon", "restart", "--timeout", "20")
        assert done.returncode == 0, done.stderr
        wait_relay_state(lattice_home, "connected")
        live = ctl_json(lattice_home, "top")
        assert {app["app"]: app["requests"] for app in live["today"]} == {
            "chat-app": 2, "notes-app": 2}
        ask(chat_app, machine, f"fifth {marker}")
        wait_until(lambda: len(log_entries(lattice_home)) == 5, timeout=10,
                   what="the fifth activity entry")
        logged = log_entries(lattice_home)[-1]
        assert marker in json.dumps(logged["messages"])
        assert logged["completion"] == REPLY
        # The API leaves the text out unless asked for it.
        assert "messages" not in ctl_json(lattice_home, "activity")["entries"][-1]

        # A job the daemon refuses (a model the owner did not allow) is logged as such.
        import openai

        with pytest.raises(openai.PermissionDeniedError):
            notes_app.chat.completions.create(model=f"{machine.model}/other-model",
                                              messages=[{"role": "user", "content": "hi"}])
        wait_until(lambda: len(log_entries(lattice_home)) == 6, timeout=10,
                   what="the refused job's entry")
        refused = log_entries(lattice_home)[-1]
        assert (refused["app"], refused["outcome"], refused["refused"]) == (
            "notes-app", "model_not_allowed", True)
        assert "not allowed" in refused["message"]
        apps = {app["app"]: app for app in ctl_json(lattice_home, "activity")["apps"]}
        assert apps["notes-app"]["refusals"] == 1 and apps["chat-app"]["refusals"] == 0


def test_activity_follow_prints_new_jobs_until_ctrl_c(
        lattice_home: Path, gateway: GatewayProcess) -> None:
    import select
    import signal

    with two_apps(lattice_home, gateway, reply=REPLY) as (machine, chat_app, notes_app):
        ask(chat_app, machine, "before")
        follower = subprocess.Popen([CTL, "--json", "activity", "-f"], env=ctl_env(lattice_home),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL)
        try:
            assert follower.stdout is not None

            def next_line() -> dict[str, Any]:
                ready, _, _ = select.select([follower.stdout], [], [], 15)
                assert ready, "lattice-ctl activity -f printed nothing"
                return json.loads(follower.stdout.readline())  # type: ignore[union-attr]

            assert next_line()["app"] == "chat-app"  # what was there already
            ask(notes_app, machine, "after")
            assert next_line()["app"] == "notes-app"  # what came while following
            follower.send_signal(signal.SIGINT)
            assert follower.wait(10) == 0
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()


def _pane(socket: Path, target: str) -> str:
    return subprocess.run(["tmux", "-S", str(socket), "capture-pane", "-p", "-t", target],
                          capture_output=True, text=True, check=True).stdout


def _exit_shown(socket: Path, target: str) -> str | None:
    """The exit status the pane's shell printed after top ended (tmux itself may mark a
    pane dead before it has collected the status)."""
    shown = re.search(r"EXIT:(\d+)", _pane(socket, target))
    return shown.group(1) if shown else None


def test_top_shows_the_running_job_under_tmux_and_q_quits(
        lattice_home: Path, gateway: GatewayProcess, tmp_path: Path) -> None:
    assert shutil.which("tmux"), "tmux is needed for this test (apt-get install tmux)"
    slow = {"chunks": [f"w{i} " for i in range(200)], "chunk_delay": 0.1}
    with two_apps(lattice_home, gateway) as (machine, chat_app, _notes_app):
        ask(chat_app, machine, "warm up")  # today's usage has a line
        assert machine.provider is not None
        control = machine.provider.control
        control.configure(**slow)
        control.close()
        streaming = threading.Event()
        stop = threading.Event()

        def stream_slowly() -> None:
            with ask(chat_app, machine, "a long answer", stream=True, user="bob") as stream:
                for _chunk in stream:
                    streaming.set()
                    if stop.is_set():
                        break

        worker = threading.Thread(target=stream_slowly, daemon=True)
        worker.start()
        socket = tmp_path / "tmux.sock"  # a private tmux server: nothing shared
        session = f"top-{uuid.uuid4().hex[:8]}"
        command = (f"env LATTICE_HOME={lattice_home} {CTL} top --interval 0.3; "
                   "echo EXIT:$?; sleep 60")
        # The shell prints top's exit status and keeps the pane open to read it (a dead
        # pane's status is not reliable: tmux may mark it dead before collecting it).
        try:
            subprocess.run(["tmux", "-S", str(socket), "new-session", "-d", "-s", session,
                            "-x", "120", "-y", "40", command], check=True)
            assert streaming.wait(20), "the slow stream did not start"

            def shows_the_job() -> bool:
                screen = _pane(socket, session)
                return "Running now" in screen and "bob" in screen and "chat-app" in screen
            wait_until(shows_the_job, timeout=15, what="top showing the running job")
            screen = _pane(socket, session)
            assert "Today, per app" in screen and "tokens/s" in screen
            subprocess.run(["tmux", "-S", str(socket), "send-keys", "-t", session, "q"],
                           check=True)
            wait_until(lambda: _exit_shown(socket, session) is not None, timeout=10,
                       what="top exiting on q")
            assert _exit_shown(socket, session) == "0"
            # Ctrl-C quits as well, with exit 0 and the terminal given back.
            subprocess.run(["tmux", "-S", str(socket), "new-session", "-d", "-s", "ctrl-c",
                            "-x", "120", "-y", "40", command], check=True)
            wait_until(lambda: "Running now" in _pane(socket, "ctrl-c"), timeout=15,
                       what="the second top drawing")
            subprocess.run(["tmux", "-S", str(socket), "send-keys", "-t", "ctrl-c", "C-c"],
                           check=True)
            wait_until(lambda: _exit_shown(socket, "ctrl-c") is not None, timeout=10,
                       what="top exiting on Ctrl-C")
            assert _exit_shown(socket, "ctrl-c") == "0"
        finally:
            stop.set()
            subprocess.run(["tmux", "-S", str(socket), "kill-server"], check=False)
            worker.join(20)
