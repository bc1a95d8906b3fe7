"""Turning ``--database`` into a SQLAlchemy async URL (SQLite path/URL or PostgreSQL URL)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

APP_NAME = "lattice"
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


def default_database_path() -> Path:
    """``$LATTICE_HOME/data/gateway.db``, else the platform user data dir."""
    home = os.environ.get("LATTICE_HOME")
    if home:
        return Path(home).expanduser().absolute() / "data" / DEFAULT_FILE_NAME
    import platformdirs  # only needed without LATTICE_HOME

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / DEFAULT_FILE_NAME


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
