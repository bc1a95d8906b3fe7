"""What `lattice-ctl` shares with the daemon, and all it may import from this package.

The daemon's files (where they are, the config's schema, reading and writing them
safely), its exit codes, and the embedded engine built from the config. Everything
else in ``lattice_daemon`` is the daemon's own; rules about model names live in
``providers``. ``tests/docs`` checks that lattice_ctl
imports no other lattice_daemon module. Cheap to import: no asyncio, httpx or PyNaCl.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from providers.embedded import EmbeddedProvider


def build_embedded(config: DaemonConfig) -> EmbeddedProvider:
    """The embedded engine of ``[assistant]`` (the daemon's, and `doctor`'s tiny test
    generation); llama.cpp loads in its worker process, never in the caller."""
    from providers.embedded import EmbeddedProvider

    a, p = config.assistant, config.provider
    return EmbeddedProvider(a.model, n_ctx=a.n_ctx, n_threads=a.n_threads,
                            keep_alive=a.keep_alive, first_token_timeout=p.first_token_timeout,
                            idle_timeout=p.idle_timeout, models_dir=get_paths().models_dir)

__all__ = [
    "ConfigError",
    "DaemonConfig",
    "Paths",
    "ProviderConfig",
    "RelayConfig",
    "build_embedded",
    "check_provider",
    "ensure_private_dir",
    "exitcodes",
    "get_paths",
    "load_config",
    "relay_base_url",
    "save_config",
    "save_keypair",
]
