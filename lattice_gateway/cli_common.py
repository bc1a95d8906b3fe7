"""What the ``lattice-gateway`` command groups share: the database and key-file options,
opening the store, and running an admin command's coroutine with one-line failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .settings import Settings

if TYPE_CHECKING:
    from .store import SqlStore

T = TypeVar("T")

DATABASE_HELP = ("SQLite path or sqlite:///PATH, or postgresql://... "
                 "[env LATTICE_GATEWAY_DATABASE; default: gateway.db in the "
                 "lattice-gateway data dir]")
KEY_FILE_HELP = ("The relay private key's file (0600), the same on every replica "
                 "[env LATTICE_GATEWAY_KEY_FILE; default: relay.key beside the SQLite "
                 "database, or in the lattice-gateway data dir for PostgreSQL]")


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


def key_file_of(option: str | None = None) -> str | None:
    """The relay key file: ``--key-file``, else the environment's."""
    return Settings.from_env(key_file=option).key_file


async def open_store(database: str | None, key_file: str | None = None) -> SqlStore:
    """The store an admin command works on. Every command passes the key file: opening
    may run the migration that moves the relay key out of the database into it."""
    from .store import SqlStore

    return await SqlStore.open(database, key_file=key_file_of(key_file))
