"""What the ``lattice-gateway`` command groups share: the database option and running an
admin command's coroutine with one-line failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from .settings import Settings

T = TypeVar("T")

DATABASE_HELP = ("SQLite path or sqlite:///PATH, or postgresql://... "
                 "[env LATTICE_GATEWAY_DATABASE; default: gateway.db in the "
                 "lattice-gateway data dir]")


def run_admin(make: Callable[[], Coroutine[Any, Any, T]], database: str | None) -> T:
    """Run an admin command's coroutine; bad input and database failures are one line."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return asyncio.run(make())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, SQLAlchemyError) as exc:
        raise click.ClickException(database_failure(database, exc)) from None


def database_failure(database: str | None, exc: Exception) -> str:
    """One line naming the database (never its password) and the driver's reason."""
    from .store import resolve_database

    reason = (str(exc).splitlines() or [""])[0]
    return (f"cannot open the database {resolve_database(database).display()}: "
            f"{type(exc).__name__}: {reason}")


def database_of(option: str | None) -> str | None:
    """The database the command works on: ``--database``, else the environment's."""
    return Settings.from_env(database=option).database
