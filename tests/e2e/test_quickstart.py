"""scripts/quickstart.py, the README's main job, as a user runs it."""

from __future__ import annotations

import os
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


def test_quickstart_demo_answers_through_the_whole_path(tmp_path: Path) -> None:
    workdir = tmp_path / "qs"
    done = subprocess.run([sys.executable, SCRIPT, "--demo", "--dir", str(workdir)],
                          capture_output=True, text=True, timeout=120, env=_env(),
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Hello from the test server!"
    assert "Answered by ollama" in done.stderr
    assert "Paired: runtime" in done.stderr  # the command string ran
    assert (workdir / "gateway.db").exists() and (workdir / "home" / "config").is_dir()
    # everything it started is stopped again
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
