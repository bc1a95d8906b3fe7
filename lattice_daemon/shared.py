"""What `lattice-ctl` shares with the daemon, and all it may import from this package.

The daemon's files (where they are, the config's schema, reading and writing them
safely) and its exit codes. Everything else in ``lattice_daemon`` is the daemon's own;
rules about model names live in ``providers``. ``tests/docs`` checks that lattice_ctl
imports no other lattice_daemon module. Cheap to import: no asyncio, httpx or PyNaCl.
"""

from __future__ import annotations

from . import exitcodes
from .config import (
    ConfigError,
    DaemonConfig,
    ProviderConfig,
    RelayConfig,
    check_provider,
    ensure_private_dir,
    load_config,
    relay_base_url,
    save_config,
    save_keypair,
)
from .paths import Paths, get_paths

__all__ = [
    "ConfigError",
    "DaemonConfig",
    "Paths",
    "ProviderConfig",
    "RelayConfig",
    "check_provider",
    "ensure_private_dir",
    "exitcodes",
    "get_paths",
    "load_config",
    "relay_base_url",
    "save_config",
    "save_keypair",
]
