"""A pairing copied to a second machine (daemon.toml and daemon.key) is noticed: the
gateway sees two daemon instance ids with live sessions on one runtime and both
machines' `lattice-ctl status` say so, human and --json; it clears when one stops.
The runtime's name, with a bidi override and a zero-width space in it, is shown escaped.
Real processes: gateway, two daemons (two LATTICE_HOMEs), lattice-ctl, Ollama server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.support import DaemonProcess, pair_runtime, write_config
from tests.e2e.harness import ctl, ctl_json, home_paths
from tests.servers import run_ollama_server
from tests.support.gateway import run_gateway
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

NAME = "Lab \u202egnp.exe\u200b"  # RIGHT-TO-LEFT OVERRIDE, ZERO WIDTH SPACE


@pytest.fixture
def homes() -> Iterator[tuple[Path, Path]]:
    made = [Path(tempfile.mkdtemp(prefix="lh-", dir="/tmp")) for _ in range(2)]
    yield made[0], made[1]
    for home in made:
        shutil.rmtree(home, ignore_errors=True)


def _daemon(home: Path) -> DaemonProcess:
    return DaemonProcess(home_paths(home), env={"LATTICE_HOME": str(home)})


def _status(home: Path) -> dict[str, Any]:
    answer: dict[str, Any] = ctl_json(home, "status")
    return answer


def test_a_copied_pairing_is_reported_on_both_machines(homes: tuple[Path, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = homes
    monkeypatch.setenv("LATTICE_HOME", str(first))
    with run_ollama_server(models=["llama3.2:3b"]) as ollama, \
            run_gateway(None, poll_window_seconds=2, presence_window_seconds=1) as gw:
        runtime = pair_runtime(gw, home_paths(first), name=NAME)
        write_config(home_paths(first), relay=runtime.relay, provider_url=ollama.url)
        shutil.copytree(first / "config", second / "config")  # the copy, key and all

        with _daemon(first).start():
            wait_until(lambda: _status(first).get("state") == "connected", timeout=10)
            assert _status(first)["instanceConflict"] is False
            human = ctl(first, "status")
            assert "another machine" not in human.stdout
            # The name as the gateway holds it, escaped for the terminal.
            assert "Lab \\u202egnp.exe\\u200b" in human.stdout
            assert "\u202e" not in human.stdout and "\u200b" not in human.stdout

            with _daemon(second).start():
                for home in (first, second):
                    wait_until(lambda home=home: _status(home).get("instanceConflict"),
                               timeout=10, what=f"the conflict in {home}'s status")
                    assert _status(home)["relay"]["instanceConflict"] is True
                    text = ctl(home, "status").stdout
                    assert "another machine is serving this runtime" in text

            # The copy stopped (deregistered): the warning goes with it.
            wait_until(lambda: _status(first).get("instanceConflict") is False, timeout=10,
                       what="the conflict to clear")
            assert "another machine" not in ctl(first, "status").stdout
