"""`lattice-ctl providers`."""

from __future__ import annotations

from typing import Any

import click

from lattice_ctl import output


def configured_provider(*, required: bool = True) -> Any | None:
    """The configured ProviderConfig, or None when there is no config file yet.

    An unusable config fails the command when ``required``, else it is a warning (the
    usual ports can be probed without it: that helps most when the config is broken).
    """
    from lattice_daemon.shared import ConfigError, get_paths, load_config

    paths = get_paths()
    if not paths.config_file.exists():
        return None
    try:
        return load_config(paths).provider
    except ConfigError as exc:
        if required:
            output.fail(str(exc))
        output.warn(f"{exc}; probing the usual ports only")
        return None


def _providers_text(data: dict[str, Any]) -> str:
    from rich.markup import escape

    lines = []
    for item in data["providers"]:
        mark = "[green]reachable[/green]" if item["ok"] else "[red]not reachable[/red]"
        configured = " (configured)" if item.get("configured") else ""
        lines.append(escape(f"{item['kind']} at {item['url']}{configured}: ") + mark)
        lines.append(escape(f"  {item['detail']}"))
        if item.get("models"):
            lines.append(escape(f"  models: {', '.join(item['models'])}"))
    return "\n".join(lines)


@click.command()
@click.option("--timeout", default=1.0, show_default=True, help="Seconds per probe.")
def providers(timeout: float) -> None:
    """Detect Ollama (11434) and LM Studio (1234), plus the configured provider."""
    from providers import DEFAULT_URLS, detect_providers

    targets: list[tuple[str, str]] = list(DEFAULT_URLS.items())
    configured = configured_provider(required=False)
    configured_key = None
    if configured is not None:
        url = configured.url or DEFAULT_URLS.get(configured.kind)
        if url:
            configured_key = (configured.kind, url.rstrip("/"))
            if configured_key not in [(k, u.rstrip("/")) for k, u in targets]:
                targets.append(configured_key)
    results = []
    for kind, url in targets:  # one kind per probe call: detect_providers maps kind -> url
        is_configured = (kind, url.rstrip("/")) == configured_key
        options = configured.adapter_options() if configured and is_configured else {}
        for health in detect_providers(timeout=timeout, urls={kind: url}, **options):
            item = health.to_dict()
            item["configured"] = is_configured
            results.append(item)
    output.emit({"providers": results}, _providers_text, markup=True)
