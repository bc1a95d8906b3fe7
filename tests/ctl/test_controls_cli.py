"""`lattice-ctl pause` / `limits`: what the CLI checks before it asks the daemon."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from lattice_ctl.cli import cli
from lattice_ctl.commands.controls import parse_duration


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("90s", 90),
                                               ("1d", 86400), ("45", 45), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0m", "soon", "-5m", "5 weeks"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_duration(text)


@pytest.mark.parametrize(("args", "message"), [
    (["limits", "set", "colour", "1"], "no such key 'colour'"),
    (["limits", "set", "max_tokens", "lots"], "max_tokens is a whole number"),
    (["limits", "set", "max_tokens", "1", "2"], "max_tokens takes one value"),
    (["limits", "set", "pause_on_battery", "maybe"], "pause_on_battery is true or false"),
    (["limits", "set", "max_tokens", "5", "--app", "Notes app"], "--app takes only"),
    (["pause", "--for", "soon"], "is not a duration"),
])
def test_bad_input_is_refused_before_the_daemon_is_asked(args: list[str], message: str,
                                                         tmp_path: object) -> None:
    # No daemon runs: the error must come from the CLI's own checks.
    done = CliRunner().invoke(cli, ["--socket", "/nonexistent/daemon.sock", *args],
                              obj={})
    assert done.exit_code == 2, done.output
    assert message in done.output
