"""scripts/quickstart.py, the README's main job, as a user runs it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.e2e.harness import REPO
from tests.support.net import closed_port

pytestmark = pytest.mark.e2e

SCRIPT = str(REPO / "scripts" / "quickstart.py")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LATTICE_HOME", None)
    env.pop("LATTICE_SOCKET", None)
    return env


def _quickstart(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args, "--dir", str(workdir)],
                          capture_output=True, text=True, timeout=180, env=_env(),
                          stdin=subprocess.DEVNULL)


def test_quickstart_demo_answers_through_the_whole_path(tmp_path: Path) -> None:
    workdir = tmp_path / "qs"
    done = _quickstart(workdir, "--demo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Hello from the test server!"
    assert "Answered by ollama" in done.stderr
    # the command string ran against the daemon it had started: no advice to start it
    assert "Connected: runtime" in done.stderr
    assert "not running" not in done.stderr
    assert (workdir / "gateway.db").exists() and (workdir / "home" / "config").is_dir()
    _assert_nothing_left_running(workdir)

    # a second run reuses the key and the runtime instead of adding records
    first = json.loads((workdir / "quickstart.json").read_text())
    again = _quickstart(workdir, "--demo")
    assert again.returncode == 0, again.stderr
    assert f"Reusing runtime {first['runtimes']['local-model']}" in again.stderr
    with sqlite3.connect(workdir / "gateway.db") as db:
        runtimes = [row[0] for row in db.execute("SELECT lattice_id FROM runtimes")]
    assert runtimes == [first["runtimes"]["local-model"]]


def test_quickstart_without_a_model_server_answers_with_the_embedded_engine(
        tmp_path: Path, smollm2_gguf: Path) -> None:
    workdir = tmp_path / "qs"
    done = _quickstart(workdir, "--provider", "embedded", "--prompt", "Say hi.")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()  # SmolLM2's own words
    assert "Answered by the embedded engine" in done.stderr
    assert "assistant-runtime" in done.stderr
    assert "Serving with the embedded engine" in done.stderr  # relay connect chose it
    _assert_nothing_left_running(workdir)


def _assert_nothing_left_running(workdir: Path) -> None:
    leftovers = []
    for process in psutil.process_iter(["cmdline", "environ", "status"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        home = (process.info.get("environ") or {}).get("LATTICE_HOME", "")
        if (str(workdir) in cmdline or home.startswith(str(workdir))) \
                and process.info.get("status") != psutil.STATUS_ZOMBIE:
            leftovers.append(cmdline)
    assert leftovers == []


def test_quickstart_without_a_provider_explains_what_to_start(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    done = subprocess.run([sys.executable, SCRIPT, "--provider-url", url, "--dir",
                           str(tmp_path / "qs")], capture_output=True, text=True, timeout=60,
                          env=_env(), stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert "ollama serve" in done.stderr and "ollama pull llama3.2" in done.stderr
    assert "--demo" in done.stderr and "--provider-url" in done.stderr
    assert done.stdout == ""
