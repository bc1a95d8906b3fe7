"""Where the daemon's files go without LATTICE_HOME (platformdirs)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from lattice_daemon.paths import get_paths


@pytest.fixture
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LATTICE_HOME", raising=False)
    monkeypatch.delenv("LATTICE_SOCKET", raising=False)
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG layout is Linux's")
def test_without_a_login_session_the_socket_lives_in_the_users_state_dir(
        user_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # platformdirs' RuntimeDirWarning would fail here
        paths = get_paths()
    assert paths.socket == user_home / ".local/state/lattice/run/daemon.sock"
    assert paths.config_file == user_home / ".config/lattice/daemon.toml"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG layout is Linux's")
def test_with_a_login_session_the_socket_lives_in_xdg_runtime_dir(
        user_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = user_home / "run-user"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert get_paths().socket == runtime / "lattice/daemon.sock"


def test_lattice_home_and_lattice_socket_move_the_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATTICE_HOME", str(tmp_path))
    paths = get_paths()
    assert paths.config_file == tmp_path / "config/daemon.toml"
    assert paths.key_file.parent == paths.config_dir
    assert paths.log_file == tmp_path / "logs/daemon.log"
    monkeypatch.setenv("LATTICE_SOCKET", str(tmp_path / "elsewhere.sock"))
    assert get_paths().socket == tmp_path / "elsewhere.sock"
