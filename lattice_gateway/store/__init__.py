"""Durable records (SQLAlchemy Core, async): SQLite by default, PostgreSQL when scaled out."""

from .records import (
    CredentialInfo,
    CredentialRecord,
    IssuedCredential,
    MintedBootstrapToken,
    RedeemedRuntime,
    iso_from_ms,
)
from .sql import SqlStore
from .url import (
    DatabaseTarget,
    default_database_path,
    legacy_location_advice,
    resolve_database,
)

__all__ = [
    "CredentialInfo",
    "CredentialRecord",
    "DatabaseTarget",
    "IssuedCredential",
    "MintedBootstrapToken",
    "RedeemedRuntime",
    "SqlStore",
    "default_database_path",
    "iso_from_ms",
    "legacy_location_advice",
    "resolve_database",
]
