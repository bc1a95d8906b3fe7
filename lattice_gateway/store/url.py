"""Turning ``--database`` into a SQLAlchemy async URL (SQLite path/URL or PostgreSQL URL)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# The gateway's own directory: never the daemon's ("lattice"), whose config, data and logs
# `install.sh --uninstall --purge` deletes on a machine that may also run a gateway.
APP_NAME = "lattice-gateway"
# Where earlier gateways put the default database: inside the daemon's data directory.
LEGACY_APP_NAME = "lattice"
DEFAULT_FILE_NAME = "gateway.db"


@dataclass(frozen=True)
class DatabaseTarget:
    url: str  # SQLAlchemy async URL (sqlite+aiosqlite / postgresql+asyncpg)
    dialect: str  # "sqlite" or "postgresql"
    pg_schema: str | None = None  # PostgreSQL schema to live in (search_path)
    sqlite_path: Path | None = None

    def display(self) -> str:
        """For logs: the URL without a password."""
        if self.dialect == "sqlite":
            return f"sqlite:///{self.sqlite_path}"
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
        schema = f" (schema {self.pg_schema})" if self.pg_schema else ""
        return f"postgresql://{user}{host}{port}{parts.path}{schema}"


def _default_locations() -> tuple[Path, Path]:
    """(the default database, the old default of earlier gateways)."""
    home = os.environ.get("LATTICE_HOME")
    if home:
        base = Path(home).expanduser().absolute()
        return base / "gateway" / DEFAULT_FILE_NAME, base / "data" / DEFAULT_FILE_NAME
    import platformdirs  # only needed without LATTICE_HOME

    return (Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / DEFAULT_FILE_NAME,
            Path(platformdirs.user_data_dir(LEGACY_APP_NAME, appauthor=False))
            / DEFAULT_FILE_NAME)


def gateway_data_dir() -> Path:
    """The gateway's own data directory (``$LATTICE_HOME/gateway`` with LATTICE_HOME)."""
    return _default_locations()[0].parent


def default_database_path() -> Path:
    """``gateway.db`` in the platform user data dir of ``lattice-gateway`` (with
    ``LATTICE_HOME``: ``$LATTICE_HOME/gateway/``).

    A database an earlier gateway made at the old default (the daemon's data dir) is
    still used while there is none at the new place: its records and keys stay valid.
    """
    current, legacy = _default_locations()
    if not current.exists() and legacy.exists():
        return legacy
    return current


def legacy_location_advice(target: DatabaseTarget) -> str | None:
    """What to do about a database at the old default location, or None."""
    current, legacy = _default_locations()
    if target.sqlite_path != legacy:
        return None
    return (f"the database {legacy} is at the old default location, inside the daemon's "
            f"data directory, which `install.sh --uninstall --purge` cleans; with the "
            f"gateway stopped, move it (and any gateway.db-wal, gateway.db-shm beside it) "
            f"to {current}")


def resolve_database(database: str | None) -> DatabaseTarget:
    """A SQLite path or ``sqlite:///`` URL, or a ``postgresql://`` URL.

    A PostgreSQL URL may carry ``?schema=NAME`` to keep all tables in that schema (created
    if missing); tests use it to run in parallel against one database.
    """
    if not database:
        return _sqlite(default_database_path())
    scheme = database.split("://", 1)[0].lower() if "://" in database else ""
    if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        return _postgres(database)
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        path = database.split("://", 1)[1]
        # sqlite:///relative and sqlite:////absolute, as SQLAlchemy reads them.
        path = path[1:] if path.startswith("/") else path
        if not path or path == ":memory:":
            raise ValueError("an in-memory SQLite database is not supported; give a file path")
        return _sqlite(Path(path))
    if scheme:
        raise ValueError(f"unsupported database URL scheme {scheme!r} "
                         "(use a SQLite path, sqlite:///PATH or postgresql://...)")
    return _sqlite(Path(database))


def _sqlite(path: Path) -> DatabaseTarget:
    path = path.expanduser().absolute()
    return DatabaseTarget(url=f"sqlite+aiosqlite:///{path}", dialect="sqlite", sqlite_path=path)


def _postgres(url: str) -> DatabaseTarget:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not (schema.replace("_", "").isalnum() and schema[:1].isalpha()):
        raise ValueError("schema= must be letters, digits and underscores")
    rest = [(k, v) for k, v in query if k != "schema"]
    async_url = urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, urlencode(rest), ""))
    return DatabaseTarget(url=async_url, dialect="postgresql", pg_schema=schema)
