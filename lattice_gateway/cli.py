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
    import socket
    from types import FrameType

    import uvicorn
    from starlette.applications import Starlette

    from .store import IssuedCredential, SqlStore

T = TypeVar("T")

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


def _key_file(option: str | None = None) -> str | None:
    # Every command opens the store with it: a migration may move the relay key there.
    return Settings.from_env(key_file=option).key_file


_KEY_FILE_HELP = ("The relay private key's file (0600), the same on every replica "
                  "[env LATTICE_GATEWAY_KEY_FILE; default: relay.key beside the SQLite "
                  "database, or in the lattice-gateway data dir for PostgreSQL]")


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
              help="Seconds to let open requests (held polls) finish on SIGTERM/SIGINT.")
@click.option("--fd", type=int, default=None,
              help="Serve on this inherited, already bound TCP socket (socket activation, "
                   "a test harness) instead of binding --host/--port.")
@click.option("--key-file", default=None, help=_KEY_FILE_HELP)
def serve(host: str, port: int, database: str | None, public_url: str | None,
          redis_url: str | None, log_level: str, access_log: bool,
          shutdown_timeout: float, fd: int | None, key_file: str | None) -> None:
    """Run the gateway (uvicorn; uvloop and httptools when installed)."""
    import uvicorn

    from .app import create_app
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
        settings = Settings.from_env(database=database, public_url=public_url,
                                     redis_url=redis_url, key_file=key_file)
        resolve_database(settings.database)
        _check_public_url(settings.public_url)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _preflight_database(settings.database, settings.key_file)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=host, port=port, loop="auto", http="auto",
        lifespan="on", access_log=access_log, log_level=log_level, server_header=False,
        # typed int by uvicorn, which waits for it with asyncio: fractions of a second work
        timeout_graceful_shutdown=shutdown_timeout,  # type: ignore[arg-type]
        log_config=None,
    )
    # uvicorn.Server handles SIGTERM/SIGINT: stop accepting, finish open requests (up to
    # the shutdown timeout), then run the lifespan shutdown (close broker and store).
    server = _gateway_server(config, app)
    with _graceful_signals(server):
        server.run(sockets)
    if not server.started:
        sys.exit(1)


def _gateway_server(config: uvicorn.Config, app: Starlette) -> uvicorn.Server:
    import uvicorn

    class GatewayServer(uvicorn.Server):
        def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
            super().__init__(config)
            self.gateway_app = app

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # Where uvicorn's graceful shutdown begins (before it waits for open
            # requests). Held long-polls would otherwise keep the shutdown waiting for the whole
            # timeout: answer them now (empty) so daemons reconnect elsewhere at once.
            services = getattr(self.gateway_app.state, "services", None)
            if services is not None:
                await services.broker.release_polls()
            await super().shutdown(sockets)

    return GatewayServer(config, app)


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


def _preflight_database(database: str | None, key_file: str | None) -> None:
    """Open the database (running migrations) and check the relay key once before serving.

    A wrong URL, a database that is down or a key file that does not match then fails
    with one clear line instead of a traceback from inside the server's startup.
    """
    from .relay_key import GatewayKeyError
    from .store import SqlStore

    async def check() -> None:
        store = await SqlStore.open(database, key_file=key_file)
        try:
            await store.gateway_keypair()
        finally:
            await store.close()

    try:
        asyncio.run(check())
    except GatewayKeyError as exc:
        raise click.ClickException(str(exc)) from None
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

    store = await SqlStore.open(database, key_file=_key_file())
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
        store = await SqlStore.open(_database(database), key_file=_key_file())
        try:
            return await store.revoke_credential(secret)
        finally:
            await store.close()

    if not _run(revoke, _database(database)):
        raise click.ClickException("no such active key or token")
    click.echo("revoked (gateways stop accepting it within a few seconds)", err=True)


@keys.command("rotate-relay-key")
@click.option("--database", default=None, help=_DATABASE_HELP)
@click.option("--key-file", default=None, help=_KEY_FILE_HELP)
@click.option("--yes", is_flag=True,
              help="Confirm: every paired runtime must pair again afterwards.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: keyFile, previousKey, newKey, unpairedRuntimes, database.")
def keys_rotate_relay_key(database: str | None, key_file: str | None, yes: bool,
                          as_json: bool) -> None:
    """Replace the relay keypair that seals jobs (docs/operations.md).

    Stop every gateway replica first. Each paired daemon knows the old public key from
    its pairing, so every paired runtime is un-paired: its daemon says "re-pair
    required", and a new bootstrap token pairs it again.
    """
    if not yes:
        raise click.ClickException(
            "rotating the relay key un-pairs every paired runtime (each must pair again "
            "with a new bootstrap token); stop every gateway replica, then run this again "
            "with --yes")
    database, key_file = _database(database), _key_file(key_file)

    async def rotate() -> dict[str, Any]:
        from lattice_protocol import KeyPair

        from .relay_key import create_key_file, fingerprint
        from .store import SqlStore

        store = await SqlStore.open(database, key_file=key_file)
        try:
            old = await store.gateway_keypair()  # refuses a key file that does not match
            new = KeyPair.generate()
            path = store.key_file
            staged = path.with_name(path.name + ".new")
            create_key_file(staged, new, replace=True)
            unpaired = await store.rotate_gateway_public_key(old.public_text(),
                                                             new.public_text())
            try:
                os.replace(staged, path)
            except OSError as exc:
                raise click.ClickException(
                    f"the database now uses relay key {fingerprint(new.public_text())}, "
                    f"but {path} could not be replaced ({exc.strerror}): install {staged} "
                    f"as {path} (0600) before starting a gateway") from None
        finally:
            await store.close()
        return {"keyFile": str(path), "previousKey": fingerprint(old.public_text()),
                "newKey": fingerprint(new.public_text()), "unpairedRuntimes": unpaired,
                "database": store.target.display()}

    result = _run(rotate, database)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"relay key rotated: {result['previousKey']} -> {result['newKey']} "
               f"in {result['keyFile']}")
    click.echo(f"{result['unpairedRuntimes']} paired runtimes were un-paired: their daemons "
               "say \"re-pair required\"; mint a bootstrap token for each to pair it again.")
    click.echo("Copy the key file to every replica (or update the shared secret), then "
               "start the gateways.")


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
