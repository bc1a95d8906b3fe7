"""Where the daemon keeps its files.

platformdirs locations under the app name ``lattice``; ``LATTICE_HOME=<dir>`` moves all
of them under one directory (tests use it), and ``LATTICE_SOCKET`` moves the socket.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "lattice"


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    data_dir: Path
    runtime_dir: Path
    log_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "daemon.toml"

    @property
    def key_file(self) -> Path:
        return self.config_dir / "daemon.key"

    @property
    def socket(self) -> Path:
        override = os.environ.get("LATTICE_SOCKET")
        return Path(override) if override else self.runtime_dir / "daemon.sock"

    @property
    def models_dir(self) -> Path:
        """GGUF models that `lattice-ctl models pull` downloads (found by discovery)."""
        return self.data_dir / "models"

    @property
    def state_dir(self) -> Path:
        """What the daemon remembers about itself (0700): never copied with daemon.toml."""
        return self.data_dir / "state"

    @property
    def replay_file(self) -> Path:
        """Ids of the jobs this machine accepted, until their start deadlines pass."""
        return self.state_dir / "replay-guard.jsonl"

    @property
    def instance_file(self) -> Path:
        """This machine's daemon instance id (sent at session register)."""
        return self.state_dir / "instance-id"

    @property
    def lock_file(self) -> Path:
        return self.runtime_dir / "daemon.lock"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "daemon.log"


def get_paths() -> Paths:
    home = os.environ.get("LATTICE_HOME")
    if home:
        base = Path(home).expanduser().absolute()
        return Paths(base / "config", base / "data", base / "run", base / "logs")
    import platformdirs  # imported here: only needed without LATTICE_HOME

    dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
    if sys.platform.startswith("linux") and not os.environ.get("XDG_RUNTIME_DIR"):
        # No login session (SSH without pam_systemd, containers, cron): platformdirs
        # would warn on every command and fall back to a shared /tmp/runtime-<uid>,
        # which another user could create first. The user's own state dir is private.
        runtime = Path(dirs.user_state_dir) / "run"
    else:
        runtime = Path(dirs.user_runtime_dir)
    return Paths(Path(dirs.user_config_dir), Path(dirs.user_data_dir), runtime,
                 Path(dirs.user_log_dir))
