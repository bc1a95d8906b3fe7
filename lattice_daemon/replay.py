"""The daemon's replay guard: ``lattice_protocol.ReplayGuard`` with bounded pruning cost.

The protocol's guard prunes expired job ids on *every* admit once it holds more than
1024 ids. Ids are kept until their start deadline (a minute by default), so at a few
hundred jobs per second it always holds more than 1024, and every job paid a full scan
of every id seen in the last minute (the top entry of a profile of the daemon under
load). Pruning at most once a second keeps the same guarantees: an id is still
refused until its deadline has passed, it is only forgotten a little later.
"""

from __future__ import annotations

from dataclasses import dataclass

from lattice_protocol import ReplayGuard

PRUNE_INTERVAL = 1.0


@dataclass
class DaemonReplayGuard(ReplayGuard):
    _next_prune: float = 0.0

    def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL
        super()._prune(now)
