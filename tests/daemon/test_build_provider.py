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


def test_the_embedded_kind_builds_the_engine_from_assistant_without_loading_llama_cpp(
        ) -> None:
    import subprocess
    import sys

    # A fresh interpreter: whether llama_cpp was imported is only meaningful there.
    code = (
        "import sys\n"
        "from lattice_daemon.config import AssistantConfig, DaemonConfig, ProviderConfig\n"
        "from lattice_daemon.daemon import build_provider\n"
        "p = build_provider(DaemonConfig(provider=ProviderConfig(kind='embedded'),\n"
        "    assistant=AssistantConfig(model='/m.gguf', n_ctx=512, keep_alive=5)))\n"
        "print(p.kind, p.model, p.n_ctx, p.keep_alive, 'llama_cpp' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split() == ["embedded", "/m.gguf", "512", "5", "False"]


@pytest.mark.parametrize("settings", [{"n_ctx": 8}, {"n_threads": 0}, {"keep_alive": -1.0}])
def test_unusable_assistant_settings_are_config_errors(settings: dict[str, Any]) -> None:
    from lattice_daemon.config import AssistantConfig, validate

    with pytest.raises(ConfigError, match=r"\[assistant\]"):
        validate(DaemonConfig(provider=ProviderConfig(kind="embedded"),
                              assistant=AssistantConfig(**settings)))


def test_the_assistant_section_round_trips_through_daemon_toml(lattice_home: Any) -> None:
    from lattice_daemon.config import AssistantConfig, load_config, save_config
    from lattice_daemon.paths import get_paths

    paths = get_paths()
    config = DaemonConfig(provider=ProviderConfig(kind="embedded"),
                          assistant=AssistantConfig(model="/m.gguf", n_threads=2))
    save_config(paths, config)
    assert "[assistant]" in paths.config_file.read_text()
    assert load_config(paths).assistant == config.assistant
    save_config(paths, DaemonConfig())  # the defaults: no section written
    assert "[assistant]" not in paths.config_file.read_text()
    paths.config_file.write_text('[assistant]\nn_ctx = "big"\n')
    with pytest.raises(ConfigError, match=r"\[assistant\] n_ctx must be an integer"):
        load_config(paths)
