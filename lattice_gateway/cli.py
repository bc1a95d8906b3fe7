"""``lattice-gateway``: serve the gateway; create API keys and access tokens (docs/gateway.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from lattice_protocol import __version__

from .services import ALL_SCOPES
from .settings import Settings

if TYPE_CHECKING:
    from types import FrameType

    import uvicorn

    from .store import IssuedCredential, SqlStore

T = TypeVar("T")
log = logging.getLogger("lattice_gateway")

_DATABASE_HELP = ("SQLite path or sqlite:///PATH, or postgresql://... "
                  "[env LATTICE_GATEWAY_DATABASE; default: gateway.db in the "
                  "lattice-gateway data dir]")


def _run(make: Callable[[], Coroutine[Any, Any, T]], database: str | None) -> T:
    """Run an admin command's coroutine; bad input and database failures are one line."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return asyncio.run(make())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, SQLAlchemyError) as exc:
        raise click.ClickException(_database_failure(database, exc)) from None


def _database_failure(database: str | None, exc: Exception) -> str:
    """One line naming the database (never its password) and the driver's reason."""
    from .store import resolve_database

    reason = (str(exc).splitlines() or [""])[0]
    return (f"cannot open the database {resolve_database(database).display()}: "
            f"{type(exc).__name__}: {reason}")


def _database(option: str | None) -> str | None:
    return Settings.from_env(database=option).database


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lattice-gateway",
                      message="%(prog)s %(version)s")
def main() -> None:
    """Lattice gateway: the public API, the relay, and its records."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--database", default=None, help=_DATABASE_HELP)
@click.option("--public-url", default=None,
              help="URL daemons and apps use to reach this gateway (goes into bootstrap "
                   "commands and relayUrl) [env LATTICE_GATEWAY_PUBLIC_URL]")
@click.option("--redis-url", default=None,
              help="Redis for the relay queue and presence when scaled out "
                   "[env LATTICE_GATEWAY_REDIS_URL]")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log one line per request (never headers or bodies).")
@click.option("--shutdown-timeout", default=5.0, show_default=True, type=float,
              help="Drain time on SIGTERM/SIGINT: chats in flight get this long to finish, "
                   "then end with a 503 error (docs/operations.md).")
@click.option("--max-connections", type=click.IntRange(0), default=None,
              help="Open connections (parked polls count); beyond it 503. 0: the file "
                   "descriptor limit less a reserve [env LATTICE_GATEWAY_MAX_CONNECTIONS; "
                   "default 0]")
@click.option("--max-connections-per-ip", type=click.IntRange(0), default=None,
              help="Open connections per client address; beyond it 429. 0: no limit "
                   "(the default: behind a proxy all clients share its address) "
                   "[env LATTICE_GATEWAY_MAX_CONNECTIONS_PER_IP]")
@click.option("--max-header-bytes", type=click.IntRange(1024), default=None,
              help="Request line and headers; beyond it 431 "
                   "[env LATTICE_GATEWAY_MAX_HEADER_BYTES; default 16384]")
@click.option("--header-timeout", type=click.FloatRange(0.01), default=None,
              help="Seconds for a request's line and headers to arrive; then 408 "
                   "[env LATTICE_GATEWAY_HEADER_TIMEOUT_SECONDS; default 10]")
@click.option("--body-timeout", type=click.FloatRange(0.01), default=None,
              help="Seconds for a request's body to arrive after its headers; then 408 "
                   "[env LATTICE_GATEWAY_BODY_TIMEOUT_SECONDS; default 30]")
@click.option("--fd", type=int, default=None,
              help="Serve on this inherited, already bound TCP socket (socket activation, "
                   "a test harness) instead of binding --host/--port.")
def serve(host: str, port: int, database: str | None, public_url: str | None,
          redis_url: str | None, log_level: str, access_log: bool,
          shutdown_timeout: float, max_connections: int | None,
          max_connections_per_ip: int | None, max_header_bytes: int | None,
          header_timeout: float | None, body_timeout: float | None, fd: int | None) -> None:
    """Run the gateway (uvicorn with httptools; uvloop when installed)."""
    import uvicorn

    from .app import create_app
    from .frontdoor import (
        FrontDoor,
        GatewayServer,
        check_limits,
        connection_cap,
        raise_fd_limit,
    )
    from .store import resolve_database

    sockets = None
    if fd is not None:
        import socket

        sockets = [socket.socket(fileno=fd)]
        host, port = sockets[0].getsockname()[:2]
    if public_url is None and "LATTICE_GATEWAY_PUBLIC_URL" not in os.environ:
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        public_url = f"http://{shown_host}:{port}"
    try:
        settings = Settings.from_env(
            database=database, public_url=public_url, redis_url=redis_url,
            max_connections=max_connections, max_connections_per_ip=max_connections_per_ip,
            max_header_bytes=max_header_bytes, header_timeout_seconds=header_timeout,
            body_timeout_seconds=body_timeout)
        resolve_database(settings.database)
        _check_public_url(settings.public_url)
        check_limits(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _preflight_database(settings.database)
    app = create_app(settings)
    cap = connection_cap(settings.max_connections, raise_fd_limit())
    front = FrontDoor(settings, app.state.drain, cap)
    log.info("front door: at most %d connections%s, headers %d bytes within %g s, bodies "
             "within %g s", cap, f" ({settings.max_connections_per_ip} per address)"
             if settings.max_connections_per_ip else "", settings.max_header_bytes,
             settings.header_timeout_seconds, settings.body_timeout_seconds)
    config = uvicorn.Config(
        app, host=host, port=port, loop="auto", http=front.protocol_class(), ws="none",
        lifespan="on", access_log=access_log, log_level=log_level, server_header=False,
        log_config=None,
    )
    # GatewayServer handles SIGTERM/SIGINT: drain (new chats refused, parked polls
    # answered, chats in flight finish or end with an error within the shutdown
    # timeout), then uvicorn's shutdown and the lifespan's (close broker and store).
    server = GatewayServer(config, app, drain_timeout=shutdown_timeout)
    with _graceful_signals(server):
        server.run(sockets)
    if not server.started:
        sys.exit(1)


@contextlib.contextmanager
def _graceful_signals(server: uvicorn.Server) -> Iterator[None]:
    """SIGTERM and SIGINT stop the server gracefully and the process exits 0.

    While serving, uvicorn's own handlers take the signals; when done, it restores the
    handlers it found and raises the signal it caught again into them (its cooperative
    signal handling, since uvicorn 0.29: the lower bound in pyproject.toml). With the
    default handlers the process would then die "by SIGTERM" (exit -15) or print a
    KeyboardInterrupt traceback on Ctrl-C; with these, the signal only asks for the
    exit that already happened. One arriving before uvicorn listens stops it as soon as
    it has started.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _preflight_database(database: str | None) -> None:
    """Open the database (running migrations) once before serving.

    A wrong URL or a database that is down then fails with one clear line instead of a
    traceback from inside the server's startup.
    """
    from .store import SqlStore

    async def check() -> None:
        store = await SqlStore.open(database)
        await store.close()

    try:
        asyncio.run(check())
    except Exception as exc:
        raise click.ClickException(_database_failure(database, exc)) from None


def _check_public_url(url: str) -> None:
    # It is pasted into a single-quoted shell command for the user: keep it plain.
    if not url.startswith(("http://", "https://")) or any(
            c.isspace() or c in "'\"\\`$" for c in url):
        raise ValueError(f"--public-url must be a plain http(s):// URL, got {url!r}")


def _scopes_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--scope", "scopes", multiple=True, required=True, type=click.Choice(ALL_SCOPES),
        help="Scope to grant (repeatable).")(func)


async def _issue(database: str | None,
                 issue: Callable[[SqlStore], Awaitable[IssuedCredential]]
                 ) -> tuple[IssuedCredential, dict[str, Any]]:
    """Issue a credential in ``database``; also say which database that was and what
    could keep a gateway from accepting it (the common 401: a key made in a database no
    gateway serves)."""
    from .store import SqlStore, legacy_location_advice

    store = await SqlStore.open(database)
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
        click.echo(f"{label} for account {payload['accountId']} "
                   f"(scopes: {' '.join(payload['scopes'])}), stored in the database "
                   f"{payload['database']}. It is shown only once.", err=True)
    for warning in payload["warnings"]:
        click.echo(f"warning: {warning}", err=True)


@main.group()
def keys() -> None:
    """API keys (sk_...) for app backends."""


@keys.command("create")
@click.option("--account", required=True, help="Account name (created if needed).")
@_scopes_option
@click.option("--database", default=None, help=_DATABASE_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: apiKey, accountId, scopes, database, warnings.")
def keys_create(account: str, scopes: tuple[str, ...], database: str | None,
                as_json: bool) -> None:
    """Create an API key and print it once."""

    async def create() -> dict[str, Any]:
        issued, where = await _issue(_database(database),
                                     lambda store: store.create_api_key(account, scopes))
        return {"apiKey": issued.secret, "accountId": issued.account_id,
                "scopes": list(issued.scopes), **where}

    _print_secret(_run(create, _database(database)), "apiKey", as_json, "API key")


@keys.command("revoke")
@click.option("--database", default=None, help=_DATABASE_HELP)
def keys_revoke(database: str | None) -> None:
    """Revoke an API key or access token read from stdin (never from argv)."""
    from .store import SqlStore

    secret = sys.stdin.readline().strip()
    if not secret:
        raise click.ClickException("give the key or token to revoke on stdin")

    async def revoke() -> bool:
        store = await SqlStore.open(_database(database))
        try:
            return await store.revoke_credential(secret)
        finally:
            await store.close()

    if not _run(revoke, _database(database)):
        raise click.ClickException("no such active key or token")
    click.echo("revoked (gateways stop accepting it within a few seconds)", err=True)


@main.group()
def tokens() -> None:
    """OAuth-style access tokens (loat_v1_...) for user accounts."""


@tokens.command("create")
@click.option("--account", required=True, help="Account name (created if needed).")
@_scopes_option
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(1, 366 * 86400),
              help="Lifetime in seconds.")
@click.option("--database", default=None, help=_DATABASE_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: accessToken, accountId, scopes, expiresAt, database, warnings.")
def tokens_create(account: str, scopes: tuple[str, ...], ttl: int, database: str | None,
                  as_json: bool) -> None:
    """Issue an expiring access token and print it once."""
    from .store import iso_from_ms

    async def create() -> dict[str, Any]:
        issued, where = await _issue(
            _database(database), lambda store: store.create_access_token(account, scopes, ttl))
        assert issued.expires_ms is not None
        return {"accessToken": issued.secret, "accountId": issued.account_id,
                "scopes": list(issued.scopes), "expiresAt": iso_from_ms(issued.expires_ms),
                **where}

    _print_secret(_run(create, _database(database)), "accessToken", as_json, "Access token")


if __name__ == "__main__":
    main()
