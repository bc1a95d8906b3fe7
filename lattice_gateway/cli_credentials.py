"""``lattice-gateway keys`` and ``tokens``: create, list, revoke and rotate the credentials
apps use (docs/gateway.md). Secrets are printed once at creation and never again."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

from .cli_common import DATABASE_HELP, database_of, open_store, run_admin
from .services import ALL_SCOPES

if TYPE_CHECKING:
    from .store import CredentialInfo, IssuedCredential, SqlStore
    from .store.records import CredentialKind

# The longest grace period `keys rotate` allows: a rotation is meant to finish.
MAX_GRACE_SECONDS = 30 * 86400
DEFAULT_GRACE_SECONDS = 86400
# Gateways cache a credential lookup for at most half a second (store.sql).
_REVOKED_NOTE = "revoked: every gateway refuses it within one second"


def _scopes_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--scope", "scopes", multiple=True, required=True, type=click.Choice(ALL_SCOPES),
        help="Scope to grant (repeatable).")(func)


def _name_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--name", default=None, callback=_check_name,
        help="The app this credential is for, as the runtime's owner sees it in their "
             "activity log and rules (default: its id).")(func)


def _check_name(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not (0 < len(value) <= 200 and value.isprintable()
                                  and value.strip() == value):
        raise click.BadParameter("must be 1 to 200 printable characters, without leading "
                                 "or trailing spaces")
    return value


async def _with_store(database: str | None, work: Callable[[SqlStore], Awaitable[Any]]) -> Any:
    store = await open_store(database)
    try:
        return await work(store)
    finally:
        await store.close()


async def _issue(database: str | None,
                 issue: Callable[[SqlStore], Awaitable[IssuedCredential]]
                 ) -> tuple[IssuedCredential, dict[str, Any]]:
    """Issue a credential in ``database``; also say which database that was and what
    could keep a gateway from accepting it (the common 401: a key made in a database no
    gateway serves)."""
    from .store import legacy_location_advice

    store = await open_store(database)
    try:
        issued = await issue(store)
        served = await store.served_by_a_gateway()
    finally:
        await store.close()
    shown = store.target.display()
    warnings = []
    if store.created_now or not served:
        state = "did not exist until now" if store.created_now else "has never been served"
        warnings.append(
            f"the database {shown} {state}: no gateway has served it yet. A gateway "
            f"accepts this secret only when it serves this database (`lattice-gateway "
            f"serve` with the same --database or LATTICE_GATEWAY_DATABASE); any other "
            f"answers 401 invalid_api_key.")
    if advice := legacy_location_advice(store.target):
        warnings.append(advice)
    return issued, {"database": shown, "warnings": warnings}


def _print_secret(payload: dict[str, Any], secret_field: str, as_json: bool,
                  label: str) -> None:
    """The secret (or the JSON) on stdout; for people, the rest on stderr."""
    if as_json:
        click.echo(json.dumps(payload))
    else:
        click.echo(payload[secret_field])
        click.echo(f"{label} {payload['credentialId']} ({payload['name']}) for account "
                   f"{payload['accountId']} "
                   f"(scopes: {' '.join(payload['scopes'])}), stored in the database "
                   f"{payload['database']}. It is shown only once.", err=True)
    for warning in payload.get("warnings", ()):
        click.echo(f"warning: {warning}", err=True)


def _info_json(info: CredentialInfo) -> dict[str, Any]:
    from .store import iso_from_ms

    def iso(ms: int | None) -> str | None:
        return None if ms is None else iso_from_ms(ms)

    return {"credentialId": info.credential_id, "name": info.name,
            "accountId": info.account_id, "account": info.account_name,
            "scopes": list(info.scopes), "createdAt": iso(info.created_ms),
            "expiresAt": iso(info.expires_ms), "lastUsedAt": iso(info.last_used_ms),
            "revokedAt": iso(info.revoked_ms),
            "previousSecretValidUntil": iso(info.previous_valid_until_ms)}


def _list(kind: CredentialKind, account: str | None, database: str | None,
          as_json: bool) -> None:
    where = database_of(database)
    infos: list[CredentialInfo] = run_admin(
        lambda: _with_store(where, lambda store: store.list_credentials(kind, account)), where)
    rows = [_info_json(info) for info in infos]
    if as_json:
        click.echo(json.dumps(rows))
        return
    columns = ["credentialId", "name", "account", "scopes", "createdAt", "lastUsedAt",
               "revokedAt"]
    if kind == "access_token":
        columns.insert(5, "expiresAt")
    headers = {"credentialId": "ID", "name": "NAME", "account": "ACCOUNT", "scopes": "SCOPES",
               "createdAt": "CREATED", "expiresAt": "EXPIRES", "lastUsedAt": "LAST USED",
               "revokedAt": "REVOKED"}
    table = [[headers[c] for c in columns]]
    for row in rows:
        table.append([" ".join(row[c]) if c == "scopes" else (row[c] or "-")
                      for c in columns])
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


def _revoke(credential_id: str | None, prefix: str, label: str, database: str | None) -> None:
    """By public id (argument), or by the secret itself on stdin (never from argv)."""
    where = database_of(database)
    if credential_id is not None:
        if not credential_id.startswith(prefix):
            raise click.BadParameter(f"{label} ids start with {prefix}", param_hint="ID")
        done = run_admin(lambda: _with_store(
            where, lambda store: store.revoke_credential_by_id(credential_id)), where)
        if not done:
            raise click.ClickException(f"no active {label} with id {credential_id}")
    else:
        secret = sys.stdin.readline().strip()
        if not secret:
            raise click.ClickException(
                f"give the {label}'s id, or the secret to revoke on stdin")
        done = run_admin(lambda: _with_store(
            where, lambda store: store.revoke_credential(secret)), where)
        if not done:
            raise click.ClickException("no such active key or token")
    click.echo(_REVOKED_NOTE, err=True)


# ------------------------------------------------------------------------------ keys


@click.group()
def keys() -> None:
    """API keys (sk_...) for app backends."""


@keys.command("create")
@click.option("--account", required=True, help="Account name (created if needed).")
@_scopes_option
@_name_option
@click.option("--database", default=None, help=DATABASE_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: apiKey, credentialId, name, accountId, scopes, database, "
                   "warnings.")
def keys_create(account: str, scopes: tuple[str, ...], name: str | None,
                database: str | None, as_json: bool) -> None:
    """Create an API key and print it once."""

    async def create() -> dict[str, Any]:
        issued, where = await _issue(
            database_of(database),
            lambda store: store.create_api_key(account, scopes, name=name))
        return {"apiKey": issued.secret, "credentialId": issued.credential_id,
                "name": issued.name, "accountId": issued.account_id,
                "scopes": list(issued.scopes), **where}

    _print_secret(run_admin(create, database_of(database)), "apiKey", as_json, "API key")


@keys.command("list")
@click.option("--account", default=None, help="Only this account's keys (by name).")
@click.option("--database", default=None, help=DATABASE_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array: credentialId, name, accountId, account, scopes, "
                   "createdAt, expiresAt, lastUsedAt, revokedAt, previousSecretValidUntil.")
def keys_list(account: str | None, database: str | None, as_json: bool) -> None:
    """List API keys (never their secrets), revoked ones too, oldest first."""
    _list("api_key", account, database, as_json)


@keys.command("revoke")
@click.argument("credential_id", metavar="ID", required=False)
@click.option("--database", default=None, help=DATABASE_HELP)
def keys_revoke(credential_id: str | None, database: str | None) -> None:
    """Revoke the API key ID (key_...), or the key or token whose secret is on stdin."""
    if credential_id is None:
        _revoke(None, "", "key or token", database)
    else:
        _revoke(credential_id, "key_", "API key", database)


@keys.command("rotate")
@click.argument("credential_id", metavar="ID")
@click.option("--grace", "grace_seconds", default=DEFAULT_GRACE_SECONDS, show_default=True,
              type=click.IntRange(0, MAX_GRACE_SECONDS),
              help="Seconds the current secret keeps working beside the new one (0: it "
                   "fails at once).")
@click.option("--database", default=None, help=DATABASE_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: apiKey, credentialId, name, accountId, scopes, "
                   "previousSecretValidUntil.")
def keys_rotate(credential_id: str, grace_seconds: int, database: str | None,
                as_json: bool) -> None:
    """Give the API key ID a new secret (printed once); same id, name and scopes."""
    from .store import iso_from_ms

    where = database_of(database)

    async def rotate() -> dict[str, Any]:
        async def work(store: SqlStore) -> tuple[IssuedCredential, int]:
            issued = await store.rotate_api_key(credential_id, grace_seconds)
            return issued, int(store.clock() * 1000) + grace_seconds * 1000

        issued, until = await _with_store(where, work)
        return {"apiKey": issued.secret, "credentialId": issued.credential_id,
                "name": issued.name, "accountId": issued.account_id,
                "scopes": list(issued.scopes), "previousSecretValidUntil": iso_from_ms(until)}

    payload = run_admin(rotate, where)
    if as_json:
        click.echo(json.dumps(payload))
        return
    click.echo(payload["apiKey"])
    click.echo(f"API key {payload['credentialId']} ({payload['name']}) has a new secret, "
               f"shown only once. The previous secret works until "
               f"{payload['previousSecretValidUntil']}.", err=True)


# ------------------------------------------------------------------------------ tokens


@click.group()
def tokens() -> None:
    """OAuth-style access tokens (loat_v1_...) for user accounts."""


@tokens.command("create")
@click.option("--account", required=True, help="Account name (created if needed).")
@_scopes_option
@_name_option
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(1, 366 * 86400),
              help="Lifetime in seconds.")
@click.option("--database", default=None, help=DATABASE_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: accessToken, credentialId, name, accountId, scopes, "
                   "expiresAt, database, warnings.")
def tokens_create(account: str, scopes: tuple[str, ...], name: str | None, ttl: int,
                  database: str | None, as_json: bool) -> None:
    """Issue an expiring access token and print it once."""
    from .store import iso_from_ms

    async def create() -> dict[str, Any]:
        issued, where = await _issue(
            database_of(database),
            lambda store: store.create_access_token(account, scopes, ttl, name=name))
        assert issued.expires_ms is not None
        return {"accessToken": issued.secret, "credentialId": issued.credential_id,
                "name": issued.name, "accountId": issued.account_id,
                "scopes": list(issued.scopes), "expiresAt": iso_from_ms(issued.expires_ms),
                **where}

    _print_secret(run_admin(create, database_of(database)), "accessToken", as_json,
                  "Access token")


@tokens.command("list")
@click.option("--account", default=None, help="Only this account's tokens (by name).")
@click.option("--database", default=None, help=DATABASE_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array: credentialId, name, accountId, account, scopes, "
                   "createdAt, expiresAt, lastUsedAt, revokedAt.")
def tokens_list(account: str | None, database: str | None, as_json: bool) -> None:
    """List access tokens (never their secrets), expired and revoked ones too."""
    _list("access_token", account, database, as_json)


@tokens.command("revoke")
@click.argument("credential_id", metavar="ID", required=False)
@click.option("--database", default=None, help=DATABASE_HELP)
def tokens_revoke(credential_id: str | None, database: str | None) -> None:
    """Revoke the access token ID (tok_...), or the token whose secret is on stdin."""
    if credential_id is None:
        _revoke(None, "", "key or token", database)
    else:
        _revoke(credential_id, "tok_", "access token", database)
