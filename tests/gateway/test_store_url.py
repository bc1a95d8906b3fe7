"""``--database`` resolution: SQLite paths and URLs, PostgreSQL URLs, the default location."""

from __future__ import annotations

from pathlib import Path

import pytest

from lattice_gateway.store import (
    default_database_path,
    legacy_location_advice,
    resolve_database,
)


def test_default_is_the_gateways_own_directory_not_the_daemons(lattice_home: Path) -> None:
    assert default_database_path() == lattice_home / "gateway" / "gateway.db"
    target = resolve_database(None)
    assert target.dialect == "sqlite"
    assert target.url == f"sqlite+aiosqlite:///{lattice_home / 'gateway' / 'gateway.db'}"
    assert legacy_location_advice(target) is None


def test_without_lattice_home_the_gateway_has_its_own_platform_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATTICE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    assert default_database_path() == tmp_path / "share" / "lattice-gateway" / "gateway.db"


def test_a_database_at_the_old_default_is_still_used_with_advice(lattice_home: Path) -> None:
    old = lattice_home / "data" / "gateway.db"  # where earlier gateways put it
    old.parent.mkdir(parents=True)
    old.write_bytes(b"")
    assert default_database_path() == old
    advice = legacy_location_advice(resolve_database(None))
    assert advice is not None
    assert "--purge" in advice and str(lattice_home / "gateway" / "gateway.db") in advice
    # Once a database exists at the new place, that one is the default.
    (lattice_home / "gateway").mkdir()
    (lattice_home / "gateway" / "gateway.db").write_bytes(b"")
    assert default_database_path() == lattice_home / "gateway" / "gateway.db"


def test_sqlite_forms(tmp_path: Path) -> None:
    plain = resolve_database(str(tmp_path / "a.db"))
    assert plain.url == f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    assert resolve_database(f"sqlite:///{tmp_path}/b.db").sqlite_path == tmp_path / "b.db"
    assert resolve_database(f"sqlite+aiosqlite:///{tmp_path}/c.db").sqlite_path == (
        tmp_path / "c.db")


def test_postgres_forms() -> None:
    for url in ("postgresql://u:secret@db:5432/x", "postgres://u:secret@db:5432/x",
                "postgresql+asyncpg://u:secret@db:5432/x"):
        target = resolve_database(url)
        assert target.dialect == "postgresql"
        assert target.url == "postgresql+asyncpg://u:secret@db:5432/x"
        assert "secret" not in target.display()  # logs never show the password
    with_schema = resolve_database("postgresql://db/x?schema=tenant_1&sslmode=require")
    assert with_schema.pg_schema == "tenant_1"
    assert with_schema.url == "postgresql+asyncpg://db/x?sslmode=require"


@pytest.mark.parametrize("bad", ["mysql://db/x", "sqlite:///:memory:",
                                 "postgresql://db/x?schema=drop;table"])
def test_unsupported(bad: str) -> None:
    with pytest.raises(ValueError):
        resolve_database(bad)
