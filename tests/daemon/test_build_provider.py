"""The provider the daemon builds from [provider]: options and refusals."""

from __future__ import annotations

from typing import Any

import pytest

from lattice_daemon.config import ConfigError, DaemonConfig, ProviderConfig
from lattice_daemon.daemon import build_provider


def test_an_api_key_goes_to_openai_compatible_servers_only() -> None:
    seen: dict[str, Any] = {}

    def factory(kind: str, url: str | None, **options: Any) -> Any:
        seen.update(options, kind=kind)
        return object()

    build_provider(DaemonConfig(provider=ProviderConfig(kind="lmstudio", api_key="k-1")),
                   factory)
    assert seen["api_key"] == "k-1"
    seen.clear()
    build_provider(DaemonConfig(provider=ProviderConfig(kind="lmstudio", api_key="")), factory)
    assert "api_key" not in seen  # empty means none
    with pytest.raises(ConfigError, match="api_key is for OpenAI-compatible servers"):
        build_provider(DaemonConfig(provider=ProviderConfig(kind="ollama", api_key="k-1")),
                       factory)


def test_the_api_key_never_shows_in_a_repr() -> None:
    assert "k-secret" not in repr(ProviderConfig(kind="openai", api_key="k-secret"))
