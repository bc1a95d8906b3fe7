"""Fixtures for CLI unit tests: run `lattice-ctl` in-process, a fake daemon socket."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from lattice_ctl.cli import cli
from tests.ctl.fake_control import FakeControlServer, fake_daemon_socket, ping_body, status_body

RunCtl = Callable[..., Result]


@pytest.fixture
def run_ctl(lattice_home: Path) -> RunCtl:
    """Run `lattice-ctl ARGS...` in-process; stdout and stderr are kept apart."""

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return run


@pytest.fixture
def fake_daemon(lattice_home: Path) -> Iterator[FakeControlServer]:
    from lattice_daemon.paths import get_paths

    with fake_daemon_socket(get_paths().socket) as server:
        server.answer("GET /v1/ping", 200, ping_body())
        server.answer("GET /v1/status", 200, status_body())
        yield server


def write_config_text(text: str) -> None:
    """This test's daemon.toml, as the daemon keeps it (0600 in a 0700 directory)."""
    from lattice_daemon.paths import get_paths

    config = get_paths().config_file
    config.parent.mkdir(parents=True, mode=0o700)
    config.write_text(text)
    config.chmod(0o600)


def stdout_json(result: Result) -> Any:
    """stdout must be exactly one JSON document (nothing else on it under --json)."""
    return json.loads(result.stdout)
