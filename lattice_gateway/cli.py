"""``lattice-gateway``: serve the gateway; create API keys and access tokens (docs/gateway.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from lattice_protocol import __version__

from .cli_common import (
    DATABASE_HELP,
    KEY_FILE_HELP,
    database_failure,
    database_of,
    open_store,
    run_admin,
)
from .cli_credentials import keys, tokens
from .settings import Settings

if TYPE_CHECKING:
    from types import FrameType

    import uvicorn


log = logging.getLogger("lattice_gateway")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lattice-gateway",
                      message="%(prog)s %(version)s")
def main() -> None:
    """Lattice gateway: the public API, the relay, and its records."""


# The keys and tokens groups live in their own module; `keys` stays importable from here.
main.add_command(keys)
main.add_command(tokens)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--database", default=None, help=DATABASE_HELP)
@click.option("--public-url", default=None,
              help="URL daemons and apps use to reach this gateway (goes into bootstrap "
                   "commands and relayUrl) [env LATTICE_GATEWAY_PUBLIC_URL]")
@click.option("--redis-url", default=None,
              help="Redis for the relay queue and presence when scaled out "
                   "[env LATTICE_GATEWAY_REDIS_URL]")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", default="text", show_default=True,
              envvar="LATTICE_GATEWAY_LOG_FORMAT", type=click.Choice(["text", "json"]),
              help="text, or json: one object per line (time, level, message, request_id, "
                   "and route, status, duration_ms on access lines) "
                   "[env LATTICE_GATEWAY_LOG_FORMAT]")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              envvar="LATTICE_GATEWAY_ACCESS_LOG",
              help="Log one line per request: method, path, route, status, duration, request "
                   "id; never headers, query strings or bodies [env LATTICE_GATEWAY_ACCESS_LOG]")
@click.option("--metrics-token-file", default=None, type=click.Path(dir_okay=False),
              help="Serve GET /metrics to `Authorization: Bearer <the token in this file>` "
                   "(or set LATTICE_GATEWAY_METRICS_TOKEN); off when neither is given.")
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
@click.option("--oauth-issuer", "oauth_issuers", multiple=True,
              help="Accept JWT access tokens from this identity provider (its issuer URL; "
                   "repeatable) [env LATTICE_GATEWAY_OAUTH_ISSUERS, space-separated]")
@click.option("--oauth-audience", default=None,
              help="The `aud` those tokens must name [env LATTICE_GATEWAY_OAUTH_AUDIENCE]")
@click.option("--oauth-account-claim", default=None,
              help="The claim naming the Lattice account (default: sub) "
                   "[env LATTICE_GATEWAY_OAUTH_ACCOUNT_CLAIM]")
@click.option("--key-file", default=None, help=KEY_FILE_HELP)
def serve(host: str, port: int, database: str | None, public_url: str | None,
          redis_url: str | None, log_level: str, log_format: str, access_log: bool,
          metrics_token_file: str | None, shutdown_timeout: float,
          max_connections: int | None, max_connections_per_ip: int | None,
          max_header_bytes: int | None, header_timeout: float | None,
          body_timeout: float | None, fd: int | None, oauth_issuers: tuple[str, ...],
          oauth_audience: str | None, oauth_account_claim: str | None,
          key_file: str | None) -> None:
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
    from .oauth import oauth_config
    from .observe import configure_logging
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
            body_timeout_seconds=body_timeout, oauth_issuers=oauth_issuers or None,
            oauth_audience=oauth_audience, oauth_account_claim=oauth_account_claim,
            key_file=key_file, metrics_token=_metrics_token(metrics_token_file))
        resolve_database(settings.database)
        _check_public_url(settings.public_url)
        check_limits(settings)
        oauth_config(settings.oauth_issuers, settings.oauth_audience,
                     settings.oauth_account_claim)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(log_level, log_format)
    _preflight_database(settings.database, settings.key_file)
    app = create_app(settings, access_log=access_log)
    cap = connection_cap(settings.max_connections, raise_fd_limit())
    front = FrontDoor(settings, app.state.drain, cap)
    log.info("front door: at most %d connections%s, headers %d bytes within %g s, bodies "
             "within %g s", cap, f" ({settings.max_connections_per_ip} per address)"
             if settings.max_connections_per_ip else "", settings.max_header_bytes,
             settings.header_timeout_seconds, settings.body_timeout_seconds)
    config = uvicorn.Config(
        app, host=host, port=port, loop="auto", http=front.protocol_class(), ws="none",
        # The gateway's own access line (observe.py) replaces uvicorn's: it has the
        # request id, route and duration, in the chosen format.
        lifespan="on", access_log=False, log_level=log_level, server_header=False,
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


def _metrics_token(path: str | None) -> str | None:
    """The metrics token from ``--metrics-token-file`` (first line), if given."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            token = file.readline().strip()
    except OSError as exc:
        raise ValueError(f"cannot read --metrics-token-file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise ValueError(f"--metrics-token-file {path}: the token must be at least 16 "
                         "characters")
    return token


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
        raise click.ClickException(database_failure(database, exc)) from None


def _check_public_url(url: str) -> None:
    # It is pasted into a single-quoted shell command for the user: keep it plain.
    if not url.startswith(("http://", "https://")) or any(
            c.isspace() or c in "'\"\\`$" for c in url):
        raise ValueError(f"--public-url must be a plain http(s):// URL, got {url!r}")


@keys.command("rotate-relay-key")
@click.option("--database", default=None, help=DATABASE_HELP)
@click.option("--key-file", default=None, help=KEY_FILE_HELP)
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
    database = database_of(database)

    async def rotate() -> dict[str, Any]:
        from lattice_protocol import KeyPair

        from .relay_key import create_key_file, fingerprint

        store = await open_store(database, key_file)
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

    result = run_admin(rotate, database)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"relay key rotated: {result['previousKey']} -> {result['newKey']} "
               f"in {result['keyFile']}")
    click.echo(f"{result['unpairedRuntimes']} paired runtimes were un-paired: their daemons "
               "say \"re-pair required\"; mint a bootstrap token for each to pair it again.")
    click.echo("Copy the key file to every replica (or update the shared secret), then "
               "start the gateways.")


if __name__ == "__main__":
    main()
