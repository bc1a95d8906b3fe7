"""`lattice-ctl top`: a live full-screen view of the daemon's work (`GET /v1/live`).

A rich ``Live`` on the terminal's alternate screen, redrawn in place every ``--interval``
(no clear-and-repaint, so no flicker). Keys are read in cbreak mode, so `q` quits
without Enter; Ctrl-C quits too (read as a key, not a signal). Plain escape
sequences only: it works over ssh and in tmux. When stdout is not a terminal (or under
--json) it prints one snapshot and exits, like `top -b -n 1`.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
from collections.abc import Iterator
from typing import Any

import click

from lattice_ctl import output
from lattice_ctl.control_client import NOT_RUNNING_MESSAGE, ControlError, DaemonNotRunning
from lattice_ctl.daemon_link import ask, client_for

QUIT_KEYS = {"q", "Q", "\x03"}  # \x03: Ctrl-C, read as a key (see _keys)


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """``read(timeout) -> str``: keys typed (cbreak: no Enter needed), '' on timeout.

    Without a terminal on stdin there are no keys: it just waits (Ctrl-C still quits).
    """
    import time

    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        def wait(timeout: float) -> str:
            time.sleep(timeout)
            return ""

        yield wait
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    # Ctrl-C arrives as a key rather than SIGINT: a signal could interrupt the redraw or
    # the terminal's restore at any point, a key is read between two frames.
    attributes = termios.tcgetattr(fd)
    attributes[3] &= ~termios.ISIG
    termios.tcsetattr(fd, termios.TCSANOW, attributes)
    try:
        def read(timeout: float) -> str:
            ready, _, _ = select.select([fd], [], [], timeout)
            return os.read(fd, 64).decode("utf-8", "replace") if ready else ""

        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@click.command()
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.2, 60),
              help="Seconds between refreshes.")
def top(interval: float) -> None:
    """Live view: jobs running now, tokens/s, free slots, each app's usage today, pause
    state and the provider's health. `q` or Ctrl-C quits."""
    client = client_for(timeout=3.0)
    first = dict(ask(client.live).body)  # not running: the usual message, exit 1
    if output.json_mode() or not sys.stdout.isatty():
        output.emit(first, output.top_view)
        return
    from rich.console import Console
    from rich.live import Live

    def poll() -> Any:
        try:
            return output.top_view(dict(client.live().body))
        except DaemonNotRunning:
            return output.top_view(None, NOT_RUNNING_MESSAGE)
        except ControlError as exc:
            return output.top_view(None, str(exc))

    try:
        with _keys() as read_keys, Live(output.top_view(first), console=Console(),
                                        screen=True, auto_refresh=False) as live:
            while not QUIT_KEYS & set(read_keys(interval)):
                live.update(poll(), refresh=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is a way to quit: exit 0
