"""The daemon's lifecycle, in one place: wiring, reload, signals, drain, exit codes.

``run_daemon`` is what ``lattice-daemon run`` calls: config and key (unusable ->
``exitcodes.CONFIG``), the single-instance lock (held -> ``ALREADY_RUNNING``), then the
event loop with the control server and, when paired, a ``Pairing`` (provider, runner,
relay client). A reload swaps the pairing without a restart, so `relay connect` turns
the runtime reachable within a second. SIGTERM/SIGINT stop taking jobs, drain the
running ones (up to ``drain_seconds``), deregister and exit 0; a second signal exits at
once. Losing the credential is not an exit: the daemon stays up and says
"re-pair required" until a reload brings a new pairing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from lattice_protocol import ErrorCode, KeyPair, ReplayGuard, Sealer, SealError, __version__
from providers import DEFAULT_URLS, Provider, ProviderHealth, make_provider

from . import exitcodes
from .backoff import Backoff
from .clock import iso_utc
from .config import (
    ConfigError,
    DaemonConfig,
    load_config,
    load_or_create_keypair,
)
from .control import ControlError, ControlServer, SocketInUse, SocketPathUnusable
from .lock import AlreadyRunning, InstanceLock
from .memory import trim_heap
from .paths import Paths
from .relay import RelayApi, RelayClient, RelayState, RelayStatus
from .runner import JobRunner, default_model_among, model_allowed
from .transports import provider_transport

log = logging.getLogger("lattice_daemon")

HEALTH_MAX_AGE = 5.0  # re-check the provider at most this often
PROBE_TIMEOUT = 2.0
RELOAD_SETTLE = 1.0  # how long a reload waits for the first register before answering
STARTUP_SETTLE = 3.0  # seconds after start: registered, first health check done

ProviderFactory = Callable[..., Provider]


@dataclass
class Pairing:
    """Everything that belongs to one pairing; replaced as a whole on reload."""

    runner: JobRunner
    relay: RelayClient

    async def close(self, *, deregister: bool,
                    reason: str = "the runtime was reconfigured") -> None:
        await self.relay.stop_polling()
        if self.runner.in_flight:  # tell the apps now rather than let them time out
            self.runner.abort_all(ErrorCode.RUNTIME_UNREACHABLE, reason)
            await self.runner.wait_idle(2.0)
            await self.relay.flush(2.0)
        await self.runner.aclose()
        await self.relay.close(deregister=deregister)


def build_provider(config: DaemonConfig, factory: ProviderFactory = make_provider,
                   transport: httpx.AsyncBaseTransport | None = None) -> Provider:
    p = config.provider
    if p.first_token_timeout <= 0 or p.idle_timeout <= 0:
        raise ConfigError("[provider] first_token_timeout and idle_timeout must be > 0")
    if p.kind == "embedded":
        return build_embedded(config)
    if p.api_key and p.kind == "ollama":
        raise ConfigError("[provider] api_key is for OpenAI-compatible servers "
                          "(kind lmstudio or openai); Ollama takes none")
    url = p.url or DEFAULT_URLS.get(p.kind)
    if transport is None and url:
        transport = provider_transport(url, config.daemon.max_concurrency)
    try:
        return factory(p.kind, p.url, first_token_timeout=p.first_token_timeout,
                       idle_timeout=p.idle_timeout, probe_timeout=PROBE_TIMEOUT,
                       transport=transport, **p.adapter_options())
    except ValueError as exc:
        raise ConfigError(f"[provider] {exc}") from None


def build_embedded(config: DaemonConfig) -> Provider:
    """The embedded engine ([assistant]); llama.cpp loads in its worker, never here."""
    from providers.embedded import EmbeddedProvider

    a, p = config.assistant, config.provider
    if a.n_ctx < 16 or (a.n_threads is not None and a.n_threads < 1) or a.keep_alive < 0:
        raise ConfigError("[assistant] n_ctx must be at least 16, n_threads at least 1 and "
                          "keep_alive >= 0")
    return EmbeddedProvider(a.model, n_ctx=a.n_ctx, n_threads=a.n_threads,
                            keep_alive=a.keep_alive, first_token_timeout=p.first_token_timeout,
                            idle_timeout=p.idle_timeout)


def validate(config: DaemonConfig) -> None:
    """Checks load_config cannot make (it only knows shapes); raises ConfigError."""
    d = config.daemon
    if isinstance(d.max_concurrency, bool) or not isinstance(d.max_concurrency, int) \
            or not 1 <= d.max_concurrency <= 1024:
        raise ConfigError("[daemon] max_concurrency must be an integer from 1 to 1024")
    if not 0 <= d.drain_seconds < math.inf:
        raise ConfigError("[daemon] drain_seconds must be a number >= 0")
    if not 0 < d.backoff_initial_seconds <= d.backoff_max_seconds < math.inf:
        raise ConfigError("[daemon] backoff_initial_seconds must be > 0 and at most "
                          "backoff_max_seconds")
    if config.relay is not None:
        try:
            Sealer(KeyPair.generate(), config.relay.gateway_public_key)
        except SealError:
            raise ConfigError("[relay] gateway_public_key is not a valid public key; "
                              "run `lattice-ctl relay connect --replace`") from None
        try:  # every relay request is built on it: a bad one would be a traceback later
            relay_host = httpx.URL(config.relay.relay_url).host
        except httpx.InvalidURL:
            relay_host = ""
        if not (config.relay.relay_url.startswith(("http://", "https://")) and relay_host):
            raise ConfigError("[relay] relay_url must be an https:// or http:// URL; "
                              "run `lattice-ctl relay connect --replace`")


class Daemon:
    """One running daemon: serves the control API and, when paired, the relay."""

    def __init__(self, paths: Paths, config: DaemonConfig, keys: KeyPair, *,
                 provider_factory: ProviderFactory = make_provider) -> None:
        self.paths = paths
        self.config = config
        self.keys = keys
        self.started_at = time.time()
        self._provider_factory = provider_factory
        self.provider = build_provider(config, provider_factory)
        self.relay_status = RelayStatus(RelayState.NOT_PAIRED, self.started_at)
        self.pairing: Pairing | None = None
        self._replays = ReplayGuard()  # survives reloads: a replay is a replay
        self._health: ProviderHealth | None = None
        self._health_at = float("-inf")
        self._health_task: asyncio.Task[ProviderHealth] | None = None
        self._stop = asyncio.Event()
        self._signals = 0
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._served_before = (0, 0)  # counters of pairings replaced by reloads
        self.control = ControlServer(paths.socket, self,
                                     private_dir=paths.socket.parent == paths.runtime_dir)

    # -- lifecycle ----------------------------------------------------------------------

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.set_exception_handler(_log_loop_error)
        try:
            await self.control.start()
        except (SocketInUse, SocketPathUnusable, OSError) as exc:
            _fatal(f"cannot serve the control socket: {exc}")
            if isinstance(exc, SocketInUse):
                return exitcodes.ALREADY_RUNNING
            # Not "already running" (lattice-ctl would say so): a path a person must fix.
            return exitcodes.CONFIG if isinstance(exc, SocketPathUnusable) \
                else exitcodes.FAILURE
        log.info("lattice-daemon %s started (pid %d)", __version__, os.getpid())
        self._start_pairing()
        self._refresh_health_soon()
        loop.call_later(STARTUP_SETTLE, trim_heap)  # once start-up garbage is freed
        await self._stop.wait()
        await self._graceful_stop()
        return exitcodes.OK

    def request_stop(self) -> None:
        self._stop.set()

    def _on_sighup(self) -> None:
        """SIGHUP reloads, like POST /v1/reload (the service managers' convention)."""
        log.info("SIGHUP received: reloading")
        self._spawn(self._reload_logged())

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ControlError as exc:
            log.error("reload failed: %s", exc.message)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s received: stopping (draining in-flight jobs up to %g s; "
                     "send it again to exit at once)", sig.name,
                     self.config.daemon.drain_seconds)
            self._stop.set()
            return
        log.warning("%s received again: exiting at once", sig.name)
        logging.shutdown()
        os._exit(exitcodes.OK)

    async def _graceful_stop(self) -> None:
        async with self._reload_lock:  # a reload under way finishes first
            pairing = self.pairing
        if pairing is not None:
            await pairing.relay.stop_polling()
            runner = pairing.runner
            if runner.in_flight:
                log.info("draining %d in-flight jobs", runner.in_flight)
            if not await runner.wait_idle(self.config.daemon.drain_seconds):
                left = runner.abort_all(ErrorCode.RUNTIME_UNREACHABLE,
                                        "the runtime shut down before the job finished")
                log.warning("drain time over: aborted %d jobs", left)
                await runner.wait_idle(2.0)
            await pairing.relay.flush(5.0)
            await pairing.close(deregister=True)
        if self._background:
            await asyncio.wait(self._background, timeout=5.0)
        await self.provider.aclose()
        await self.control.close()
        log.info("lattice-daemon stopped")

    # -- pairing ------------------------------------------------------------------------

    def _start_pairing(self) -> None:
        relay_config = self.config.relay
        if relay_config is None:
            self.relay_status = RelayStatus(RelayState.NOT_PAIRED, time.time())
            log.info("not paired: run `lattice-ctl relay connect` to pair this machine")
            return
        self.relay_status = RelayStatus(RelayState.CONNECTING, time.time(),
                                  gateway=relay_config.gateway)
        sealer = Sealer(self.keys, relay_config.gateway_public_key)
        api = RelayApi(relay_config.relay_url, relay_config.daemon_token)
        relay: RelayClient
        runner = JobRunner(self.provider, sealer, relay_config.lattice_id,
                           self.config.provider,
                           emit=lambda event: relay.emit(event),
                           max_concurrency=self.config.daemon.max_concurrency,
                           replay_guard=self._replays,
                           log_prompts=self.config.daemon.log_prompts)
        backoff = Backoff(self.config.daemon.backoff_initial_seconds,
                          self.config.daemon.backoff_max_seconds)
        relay = RelayClient(api, runner, self.relay_status,
                            describe_provider=self.describe_provider, backoff=backoff)
        self.pairing = Pairing(runner, relay)
        relay.start()
        log.info("serving runtime %s (%s) via %s", relay_config.lattice_id,
                 relay_config.display_name, relay_config.gateway)

    def _take_pairing(self) -> Pairing | None:
        """Detach the current pairing, keeping its job counters for the status."""
        pairing, self.pairing = self.pairing, None
        if pairing is not None:
            jobs = pairing.runner.counters
            served, failed = self._served_before
            self._served_before = (served + jobs.served, failed + jobs.failed)
        return pairing

    def _retire_pairing(self, *, deregister: bool) -> None:
        """Close the current pairing in the background (its gateway may be slow)."""
        pairing = self._take_pairing()
        if pairing is not None:
            self._spawn(pairing.close(deregister=deregister))

    # -- provider -----------------------------------------------------------------------

    async def provider_health(self, max_age: float = HEALTH_MAX_AGE) -> ProviderHealth | None:
        if time.monotonic() - self._health_at > max_age:
            await self._refresh_health()
        return self._health

    def _refresh_health_soon(self) -> None:
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self._check_health())

    async def _refresh_health(self) -> None:
        self._refresh_health_soon()
        assert self._health_task is not None
        await asyncio.shield(self._health_task)

    async def _check_health(self) -> ProviderHealth:
        provider = self.provider
        try:
            health = await provider.health()
        except Exception as exc:  # health() promises not to raise; be safe anyway
            health = ProviderHealth(False, f"{provider.display_name}: {type(exc).__name__}")
        if provider is self.provider:
            self._health = health
            self._health_at = time.monotonic()
        return health

    def default_model(self) -> str | None:
        configured = self.config.provider.default_model
        if configured:
            return configured
        models = list(self._health.models) if self._health else []
        return default_model_among(models, self.config.provider.allowed_models)

    async def describe_provider(self) -> dict[str, Any]:
        """The provider part of a session registration."""
        health = await self.provider_health()
        models = list(health.models) if health else []
        allowed = self.config.provider.allowed_models
        if allowed:
            models = [m for m in models if model_allowed(m, allowed)] or list(allowed)
        return {"kind": self.config.provider.kind, "models": models,
                "defaultModel": self.default_model()}

    def provider_dict(self) -> dict[str, Any]:
        health = self._health
        return {
            "kind": self.config.provider.kind,
            "url": self.provider.base_url,
            "ok": health.ok if health else None,
            "detail": health.detail if health else "not checked yet",
            "models": list(health.models) if health else [],
            "defaultModel": self.default_model(),
            **({"engine": health.engine} if health and health.engine else {}),
        }

    # -- control API (ControlBackend) ---------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        if time.monotonic() - self._health_at > HEALTH_MAX_AGE:
            self._refresh_health_soon()  # answer from the cache: ping must be instant
        now = time.time()
        return {
            "daemonVersion": __version__,
            "pid": os.getpid(),
            "startedAt": iso_utc(self.started_at),
            "uptimeSeconds": round(now - self.started_at, 3),
            "relay": self.relay_status.to_dict(),
            "provider": self.provider_dict(),
        }

    async def status(self) -> dict[str, Any]:
        await self.provider_health()
        answer = await self.ping()
        relay = self.config.relay
        runner = self.pairing.runner if self.pairing else None
        served, failed = self._served_before
        answer.update({
            "runtime": None if relay is None else {
                "latticeId": relay.lattice_id,
                "displayName": relay.display_name,
                "accountId": relay.account_id,
                "executionBackend": relay.execution_backend,
            },
            "jobs": {
                "inFlight": runner.in_flight if runner else 0,
                "served": served + (runner.counters.served if runner else 0),
                "failed": failed + (runner.counters.failed if runner else 0),
                "maxConcurrency": self.config.daemon.max_concurrency,
            },
            "configFile": str(self.paths.config_file),
            "logFile": str(self.paths.log_file),
        })
        return answer

    def _refuse_while_stopping(self) -> None:
        if self._stop.is_set():
            raise ControlError(503, "stopping", "the daemon is stopping")

    async def reload(self) -> dict[str, Any]:
        self._refuse_while_stopping()
        async with self._reload_lock:
            self._refuse_while_stopping()
            try:
                config, keys = load_startup(self.paths)
                provider = None
                if (config.provider, config.assistant) != (self.config.provider,
                                                           self.config.assistant):
                    provider = build_provider(config, self._provider_factory)
            except ConfigError as exc:
                log.error("reload refused, keeping the running config: %s", exc)
                raise ControlError(400, "config_error", str(exc)) from None
            same = (config == self.config and keys.private_text() == self.keys.private_text())
            healthy = self.pairing is not None or config.relay is None
            if same and healthy and self.relay_status.state != RelayState.REPAIR_REQUIRED:
                return {"ok": True, "changed": False, "relay": self.relay_status.to_dict()}
            log.info("reloading the configuration")
            self._retire_pairing(deregister=True)
            if provider is not None:
                old, self.provider = self.provider, provider
                self._health, self._health_at = None, float("-inf")
                self._spawn(old.aclose())
            self.config, self.keys = config, keys
            self._start_pairing()
            self._refresh_health_soon()
            await self._settle(RELOAD_SETTLE)
            return {"ok": True, "changed": True, "relay": self.relay_status.to_dict()}

    async def _settle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        status = self.relay_status
        while status.state == RelayState.CONNECTING and status.last_error is None:
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.01)

    async def disconnect(self) -> dict[str, Any]:
        self._refuse_while_stopping()
        async with self._reload_lock:
            pairing = self._take_pairing()
            if pairing is not None:
                await pairing.close(deregister=True, reason="the runtime was disconnected")
                log.info("disconnected from the relay on request")
            self.relay_status = RelayStatus(RelayState.NOT_PAIRED, time.time(),
                                      last_error="disconnected on request")
            # The pairing is forgotten here too (the CLI removes it from the file), so the
            # status stops naming the runtime and a reload of the new file is a no-op.
            self.config = replace(self.config, relay=None)
            return {"ok": True}

    async def shutdown(self) -> dict[str, Any]:
        log.info("shutdown requested over the control socket")
        self._stop.set()
        return {"ok": True}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Errors asyncio would print to stderr go to the daemon's log instead."""
    exc = context.get("exception")
    log.error("unexpected error in the event loop: %s", context.get("message"),
              exc_info=(type(exc), exc, exc.__traceback__) if exc else None)


def load_keys(paths: Paths, config: DaemonConfig) -> KeyPair:
    """The daemon's keypair. A pairing without its key cannot open a single job (the
    gateway seals to the old public key), so that is a config error, not a new key."""
    if config.relay is not None and not paths.key_file.exists():
        raise ConfigError(f"the key file {paths.key_file} of this pairing is missing; "
                          "run `lattice-ctl relay connect --replace` to pair again")
    return load_or_create_keypair(paths)


def make_secrets_private(paths: Paths) -> None:
    """Make the config (it holds the daemon token) and key files 0600 again.

    A copy, a restore or an editor can leave them readable by other users; the daemon
    tightens them, and says so, rather than keep serving with a readable credential.
    """
    for path, private in ((paths.config_dir, 0o700), (paths.config_file, 0o600),
                          (paths.key_file, 0o600)):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot check the mode of {path}: {exc.strerror}") from None
        if not mode & 0o077:
            continue
        try:
            path.chmod(private)
        except OSError as exc:
            raise ConfigError(f"{path} has mode {mode:04o}, which lets other users read it, "
                              f"and cannot be made {private:04o}: {exc.strerror}") from None
        log.warning("%s had mode %04o, which let other users read it; made it %04o",
                    path, mode, private)


def _fatal(message: str) -> None:
    """Why the daemon cannot run: in its log, and on stderr for whoever started it
    (`lattice-ctl daemon start` shows daemon.stderr.log; systemd keeps it in the journal)."""
    log.error("%s", message)
    print(f"lattice-daemon: {message}", file=sys.stderr)


def load_startup(paths: Paths) -> tuple[DaemonConfig, KeyPair]:
    """Config and key for a start or a reload; ConfigError says what is wrong in one line."""
    make_secrets_private(paths)
    config = load_config(paths)
    validate(config)
    return config, load_keys(paths, config)


def run_daemon(paths: Paths, *, provider_factory: ProviderFactory = make_provider) -> int:
    """The whole life of a daemon process; returns its exit code."""
    try:
        config, keys = load_startup(paths)
    except ConfigError as exc:
        _fatal(f"config error: {exc}")
        return exitcodes.CONFIG
    lock = InstanceLock(paths.lock_file)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        _fatal(str(exc))
        return exitcodes.ALREADY_RUNNING
    except OSError as exc:  # e.g. the runtime dir is not writable: a restart won't help
        _fatal(f"cannot create the lock file {paths.lock_file}: {exc.strerror}")
        return exitcodes.CONFIG
    try:
        async def main() -> int:
            try:
                daemon = Daemon(paths, config, keys, provider_factory=provider_factory)
            except ConfigError as exc:
                _fatal(f"config error: {exc}")
                return exitcodes.CONFIG
            return await daemon.serve()

        return asyncio.run(main())
    finally:
        lock.release()
