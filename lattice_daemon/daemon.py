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
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx

from lattice_protocol import ErrorCode, KeyPair, __version__, iso_from_seconds
from providers import (
    DEFAULT_URLS,
    Provider,
    ProviderHealth,
    default_model_among,
    make_provider,
    model_allowed,
)

from . import exitcodes
from .activity import ActivityLog, ActivityQuery, ActivityRecorder, query_activity
from .config import ConfigError, DaemonConfig, check_provider, load_startup
from .control import ControlRefusal, ControlServer, SocketInUse, SocketPathUnusable
from .controls import Controls, PatchError, PauseState, apply_patch
from .instance import load_or_create_instance_id
from .lock import AlreadyRunning, InstanceLock
from .memory import trim_heap
from .pairing import Pairing
from .paths import Paths
from .relay import RelayState, RelayStatus
from .replay import PersistentReplayGuard
from .shared import build_embedded
from .transports import provider_transport

log = logging.getLogger("lattice_daemon")

HEALTH_MAX_AGE = 5.0  # re-check the provider at most this often
PROBE_TIMEOUT = 2.0
RELOAD_SETTLE = 1.0  # how long a reload waits for the first register before answering
STARTUP_SETTLE = 3.0  # seconds after start: registered, first health check done

ProviderFactory = Callable[..., Provider]


def build_provider(config: DaemonConfig, factory: ProviderFactory = make_provider,
                   transport: httpx.AsyncBaseTransport | None = None) -> Provider:
    p = config.provider
    check_provider(p)
    if p.kind == "embedded":
        return build_embedded(config)
    url = p.url or DEFAULT_URLS.get(p.kind)
    if transport is None and url:
        transport = provider_transport(url, config.daemon.max_concurrency)
    try:
        return factory(p.kind, p.url, first_token_timeout=p.first_token_timeout,
                       idle_timeout=p.idle_timeout, probe_timeout=PROBE_TIMEOUT,
                       transport=transport, **p.adapter_options())
    except ValueError as exc:
        raise ConfigError(f"[provider] {exc}") from None


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
        # Survives reloads and restarts: a replay is a replay (lattice_daemon/replay.py).
        try:
            self._replays = PersistentReplayGuard(paths.replay_file)
        except OSError as exc:
            raise ConfigError(f"cannot use the replay guard file {paths.replay_file}: "
                              f"{exc.strerror}") from None
        try:
            self.instance_id = load_or_create_instance_id(paths.instance_file)
        except OSError as exc:
            raise ConfigError(f"cannot use the instance id file {paths.instance_file}: "
                              f"{exc.strerror}") from None
        self._health: ProviderHealth | None = None
        self._health_at = float("-inf")
        self._health_task: asyncio.Task[ProviderHealth] | None = None
        self._stop = asyncio.Event()
        self._signals = 0
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._served_before = (0, 0)  # counters of pairings replaced by reloads
        # The activity log outlives pairings (one file per machine, like the daemon's log).
        self.recorder = ActivityRecorder(ActivityLog(paths.data_dir),
                                         log_prompts=config.daemon.log_prompts)
        self.recorder.load_today()
        self.controls = Controls(paths, config)
        self._pause: PauseState | None = None  # as last told to the gateway
        self._pause_recheck = asyncio.Event()
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
        self._pause = self.controls.current_pause()
        self._start_pairing()
        self._refresh_health_soon()
        self._spawn(self._watch_pause())
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
        except ControlRefusal as exc:
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
        self._pause_recheck.set()  # the pause watcher sees the stop now, not in a minute
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
        self.controls.flush()
        if self._background:
            await asyncio.wait(self._background, timeout=5.0)
        await self.provider.aclose()
        await self.control.close()
        self.recorder.close()
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
        self.recorder.log_prompts = self.config.daemon.log_prompts  # a reload may change it
        self.pairing = Pairing.start(relay_config, self.config, self.keys, self.provider,
                                     self.relay_status, replay_guard=self._replays,
                                     instance_id=self.instance_id,
                                     describe_provider=self.describe_provider,
                                     admit=self.controls.admit,
                                     observers=(self.controls, self.recorder),
                                     paused=self._pause_dict)
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

    # -- the owner's controls -------------------------------------------------------------

    def _pause_dict(self) -> dict[str, Any] | None:
        """The pause as the relay hears it (with each registration and poll)."""
        return None if self._pause is None else self._pause.to_dict()

    async def _watch_pause(self) -> None:
        """Notice the pause state changing by itself (the clock, the battery)."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._pause_recheck.wait(), self.controls.next_check())
            self._pause_recheck.clear()
            if self._stop.is_set():
                return
            try:
                self._update_pause()
            except Exception:  # a sensor's failure must not end the watch
                log.exception("checking the pause state failed")

    def _update_pause(self) -> None:
        """Look at the pause state now; a change goes to the gateway at once."""
        pause = self.controls.current_pause()
        if pause == self._pause:
            return
        log.info("%s", "serving again" if pause is None else
                 f"not taking jobs: {pause.message()}")
        self._pause = pause
        if self.pairing is not None:
            self.pairing.relay.announce_state()

    def _recheck_pause(self) -> None:
        self._pause_recheck.set()

    async def controls_state(self) -> dict[str, Any]:
        return self.controls.snapshot()

    async def pause(self, body: dict[str, Any]) -> dict[str, Any]:
        seconds = body.get("for")
        if seconds is not None and (isinstance(seconds, bool)
                                    or not isinstance(seconds, int | float)
                                    or not 0 < seconds <= 366 * 86400):
            raise ControlRefusal(400, "bad_request",
                                 "'for' must be null or a number of seconds up to a year")
        self.controls.pause(None if seconds is None else float(seconds))
        self._update_pause()
        self._recheck_pause()  # the watcher's next look is at the new end
        return self.controls.snapshot()

    async def resume(self, body: dict[str, Any]) -> dict[str, Any]:
        self.controls.resume()
        self._update_pause()
        self._recheck_pause()
        return self.controls.snapshot()

    async def patch_limits(self, body: dict[str, Any]) -> dict[str, Any]:
        self._refuse_while_stopping()
        async with self._reload_lock:
            try:
                new = apply_patch(self.config, body)
            except PatchError as exc:
                raise ControlRefusal(400, "bad_request", str(exc)) from None
            from .config import load_config, save_config

            try:  # the file as it is now (not as loaded at start), with the change
                on_disk = load_config(self.paths)
                on_disk.limits, on_disk.schedule = new.limits, new.schedule
                on_disk.provider.allowed_models = new.provider.allowed_models
                on_disk.daemon.max_concurrency = new.daemon.max_concurrency
                save_config(self.paths, on_disk)
            except (ConfigError, OSError) as exc:
                raise ControlRefusal(500, "config_error",
                                     f"cannot write {self.paths.config_file}: {exc}") from None
            self._apply_controls(new)
            log.info("limits changed: %s", ", ".join(
                f"[{section}] {key}" for section in ("limits", "schedule", "apps")
                for key in (body.get(section) or {})))
            self._update_pause()
            self._recheck_pause()
        return self.controls.snapshot()

    def _apply_controls(self, new: DaemonConfig) -> None:
        """Live, no re-pairing: the runner and the relay client read these objects."""
        old = self.config
        models_changed = new.provider.allowed_models != old.provider.allowed_models
        slots_changed = new.daemon.max_concurrency != old.daemon.max_concurrency
        old.provider.allowed_models = list(new.provider.allowed_models)
        old.daemon.max_concurrency = new.daemon.max_concurrency
        old.limits, old.schedule = new.limits, new.schedule
        self.controls.update_config(old)
        pairing = self.pairing
        if pairing is not None:
            if slots_changed:
                pairing.runner.set_max_concurrency(new.daemon.max_concurrency)
            if models_changed or slots_changed:
                pairing.relay.registration_changed()

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
            "startedAt": iso_from_seconds(self.started_at),
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
            "paused": self._pause_dict(),
        })
        return answer

    def _refuse_while_stopping(self) -> None:
        if self._stop.is_set():
            raise ControlRefusal(503, "stopping", "the daemon is stopping")

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
                raise ControlRefusal(400, "config_error", str(exc)) from None
            if _only_controls_differ(config, self.config) \
                    and keys.private_text() == self.keys.private_text():
                self._apply_controls(config)  # no re-pairing for a rule change
                self._update_pause()
                self._recheck_pause()
                return {"ok": True, "changed": True, "relay": self.relay_status.to_dict()}
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
            self.controls.update_config(config)
            self._update_pause()  # the new pairing registers with the new rules' state
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

    # -- visibility: the activity log and the live view -----------------------------------

    async def activity(self, query: dict[str, str]) -> dict[str, Any]:
        try:
            parsed = ActivityQuery.parse(query, time.time())
        except ValueError as exc:
            raise ControlRefusal(400, "invalid_query", str(exc)) from None
        # Off the loop: a month of activity is many megabytes of JSON to read.
        return await asyncio.to_thread(query_activity, self.recorder.log, parsed)

    async def live(self) -> dict[str, Any]:
        """Jobs running now, today's usage per app, capacity, pause state, provider."""
        status = await self.status()
        answer = self.recorder.live()
        answer.update({
            "jobs": status["jobs"],
            "queue": {"inFlight": status["jobs"]["inFlight"],
                      "maxConcurrency": status["jobs"]["maxConcurrency"],
                      # Jobs are leased only for free slots: none wait on this machine.
                      "waiting": 0},
            "relay": status["relay"],
            "provider": status["provider"],
            "runtime": status["runtime"],
            "paused": status["paused"],  # {reason, until} or None
        })
        return answer

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _only_controls_differ(new: DaemonConfig, old: DaemonConfig) -> bool:
    """Whether a reloaded config changes the owner's rules and nothing else."""
    if (new.limits, new.schedule) == (old.limits, old.schedule) \
            and new.provider.allowed_models == old.provider.allowed_models \
            and new.daemon.max_concurrency == old.daemon.max_concurrency:
        return False
    same_rest = replace(new, limits=old.limits, schedule=old.schedule,
                        provider=replace(new.provider,
                                         allowed_models=old.provider.allowed_models),
                        daemon=replace(new.daemon, max_concurrency=old.daemon.max_concurrency))
    return same_rest == old


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Errors asyncio would print to stderr go to the daemon's log instead."""
    exc = context.get("exception")
    log.error("unexpected error in the event loop: %s", context.get("message"),
              exc_info=(type(exc), exc, exc.__traceback__) if exc else None)


def _fatal(message: str) -> None:
    """Why the daemon cannot run: in its log, and on stderr for whoever started it
    (`lattice-ctl daemon start` shows daemon.stderr.log; systemd keeps it in the journal)."""
    log.error("%s", message)
    print(f"lattice-daemon: {message}", file=sys.stderr)


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
