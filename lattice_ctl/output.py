"""All of `lattice-ctl`'s output goes through here: rich for people, JSON for scripts.

Data goes to stdout; messages, spinners and errors go to stderr, so stdout carries
nothing but the data under ``--json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click


def json_mode() -> bool:
    """True under `lattice-ctl --json`."""
    return _json_mode()


def _json_mode() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if isinstance(ctx.obj, dict) and "json" in ctx.obj:
            return bool(ctx.obj["json"])
        ctx = ctx.parent
    return False


def _console(stderr: bool = False):  # -> rich.console.Console (imported lazily: startup time)
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def emit(data: Any, human: Callable[[Any], Any] | None = None, *,
         markup: bool = False) -> None:
    """Print ``data``: JSON under --json, otherwise ``human(data)``.

    The human text is plain unless ``markup`` says it carries rich markup (whose
    callers escape the data in it): rich would otherwise eat text such as
    "[provider]" from a config error, taking it for a style tag. ``human`` may also
    return a rich renderable (a table), printed as such.
    """
    if _json_mode():
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return
    text = human(data) if human else json.dumps(data, indent=2, default=str)
    if not text:
        return
    if not markup and isinstance(text, str):  # plain: no rich import (`ping`'s budget)
        sys.stdout.write(text + "\n")
        return
    _console().print(text)


def safe_text(value: object) -> str:
    """``value`` for a terminal, with every character that is not printable escaped
    (``\\u202e``, ``\\x1b``): control characters, bidi overrides and isolates, zero-width
    characters, line separators. Names come from the gateway, set by whoever created the
    runtime; shown raw they could reorder, hide or forge the text around them. JSON
    output keeps the value as it is (json.dumps escapes it)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _escape(message: str) -> str:
    from rich.markup import escape

    return escape(message)


def info(message: str) -> None:
    """A note for people (stderr; silent under --json)."""
    if not _json_mode():
        _console(stderr=True).print(_escape(message))


def warn(message: str) -> None:
    _console(stderr=True).print(f"[yellow]warning:[/yellow] {_escape(message)}")


def fail(message: str, exit_code: int = 1, data: dict[str, Any] | None = None) -> NoReturn:
    """Exit non-zero with a one-line reason (and the data under --json)."""
    if _json_mode():
        payload = {"ok": False, "error": message, **(data or {})}
        sys.stdout.write(json.dumps(payload, sort_keys=True, default=str) + "\n")
    else:
        _console(stderr=True).print(f"[red]error:[/red] {_escape(message)}")
    sys.exit(exit_code)


@contextmanager
def spinner(message: str) -> Iterator[None]:
    """A spinner on stderr for people; nothing under --json or when not a terminal."""
    if _json_mode() or not sys.stderr.isatty():
        yield
        return
    with _console(stderr=True).status(message):
        yield


def size_text(size: int) -> str:
    """Bytes for people, in decimal units as disk tools show them: "138.1 MB"."""
    if size < 1000:
        return f"{size} B"
    value = size / 1000
    for unit in ("kB", "MB"):
        if round(value, 1) < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def table(columns: list[str], rows: list[list[str]], title: str | None = None
          ) -> Any:  # -> rich.table.Table
    """A table for emit()'s human output; cells are shown as given (no markup)."""
    from rich.table import Table
    from rich.text import Text

    grid = Table(*columns, title=title, title_justify="left", box=None, pad_edge=False)
    for row in rows:
        grid.add_row(*(Text(cell) for cell in row))
    return grid


class _PlainProgress:
    """Progress as lines on stderr, one per tenth of the total (not a terminal, --json)."""

    def __init__(self, label: str, total: int | None, done: int) -> None:
        self._label = label
        self._total = total
        self._done = done
        self._shown = -1

    def advance(self, count: int) -> None:
        self._done += count
        if self._total:
            tenth = self._done * 10 // self._total
            if tenth > self._shown:
                self._shown = tenth
                sys.stderr.write(f"{self._label}: {self._done * 100 // self._total}% "
                                 f"({size_text(self._done)} of {size_text(self._total)})\n")
                sys.stderr.flush()


@contextmanager
def progress(label: str, total: int | None, done: int = 0) -> Iterator[Callable[[int], None]]:
    """Show a transfer of ``total`` bytes (None: unknown) that has ``done`` already;
    yields ``advance(count)``. A rich bar at a terminal, else plain lines on stderr."""
    if _json_mode() or not sys.stderr.isatty():
        yield _PlainProgress(label, total, done).advance
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=_console(stderr=True)) as bar:
        task = bar.add_task(_escape(label), total=total, completed=done)
        yield lambda count: bar.advance(task, count)
