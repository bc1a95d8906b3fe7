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


def emit(data: Any, human: Callable[[Any], str | None] | None = None, *,
         markup: bool = False) -> None:
    """Print ``data``: JSON under --json, otherwise ``human(data)``.

    The human text is plain unless ``markup`` says it carries rich markup (whose
    callers escape the data in it): rich would otherwise eat text such as
    "[provider]" from a config error, taking it for a style tag.
    """
    if _json_mode():
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return
    text = human(data) if human else json.dumps(data, indent=2, default=str)
    if not text:
        return
    if not markup:  # plain text: no rich import either (~25 ms of `ping`'s budget)
        sys.stdout.write(text + "\n")
        return
    _console().print(text)


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
