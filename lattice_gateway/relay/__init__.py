"""The relay broker: queue, leases and presence (placeholder until the relay lands)."""

from __future__ import annotations

from ..services import Broker
from ..settings import Settings


class _NoRelay:
    async def reachable(self, lattice_ids: list[str]) -> dict[str, bool]:
        return dict.fromkeys(lattice_ids, False)

    async def last_seen(self, lattice_ids: list[str]) -> dict[str, float | None]:
        return dict.fromkeys(lattice_ids)

    async def revoke_runtime(self, lattice_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


def create_broker(settings: Settings) -> Broker:
    return _NoRelay()
