"""One pairing at work: the runner and the relay client, and the outbox between them.

The daemon builds one from the ``[relay]`` config when it starts or reloads, and
closes it as a whole when the pairing is replaced, disconnected or the daemon stops.
The provider and the replay guard are the daemon's: they outlive a pairing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lattice_protocol import ErrorCode, KeyPair, ReplayGuard, Sealer
from providers import Provider

from .backoff import Backoff
from .config import DaemonConfig, RelayConfig
from .relay import Outbox, RelayApi, RelayClient, RelayStatus
from .runner import AdmitFn, JobObserver, JobRunner


@dataclass
class Pairing:
    """Everything that belongs to one pairing; replaced as a whole on reload."""

    runner: JobRunner
    relay: RelayClient
    outbox: Outbox

    @classmethod
    def start(cls, relay_config: RelayConfig, config: DaemonConfig, keys: KeyPair,
              provider: Provider, status: RelayStatus, *, replay_guard: ReplayGuard,
              describe_provider: Callable[[], Awaitable[dict[str, Any]]],
              admit: AdmitFn | None = None,
              observers: tuple[JobObserver, ...] = (),
              instance_id: str | None = None,
              paused: Callable[[], dict[str, Any] | None] | None = None) -> Pairing:
        """Build the pairing's parts around one outbox and start polling."""
        outbox = Outbox()
        settings = config.daemon
        runner = JobRunner(provider, Sealer(keys, relay_config.gateway_public_key),
                           relay_config.lattice_id, config.provider, emit=outbox.put,
                           max_concurrency=settings.max_concurrency,
                           replay_guard=replay_guard, log_prompts=settings.log_prompts,
                           admit=admit, observers=observers)
        relay = RelayClient(RelayApi(relay_config.relay_url, relay_config.daemon_token),
                            runner, status, outbox=outbox,
                            describe_provider=describe_provider,
                            instance_id=instance_id, paused=paused,
                            backoff=Backoff(settings.backoff_initial_seconds,
                                            settings.backoff_max_seconds))
        relay.start()
        return cls(runner, relay, outbox)

    async def close(self, *, deregister: bool,
                    reason: str = "the runtime was reconfigured") -> None:
        await self.relay.stop_polling()
        if self.runner.in_flight:  # tell the apps now rather than let them time out
            self.runner.abort_all(ErrorCode.RUNTIME_UNREACHABLE, reason)
            await self.runner.wait_idle(2.0)
            await self.relay.flush(2.0)
        await self.runner.aclose()
        await self.relay.close(deregister=deregister)
