"""`lattice-ctl models`: the provider's models and the GGUF files on this machine, and
`lattice-ctl models pull` to download one into the Lattice models directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lattice_ctl import output
from lattice_ctl.daemon_link import client_for, try_ask


def _models_dir() -> Path:
    from lattice_daemon.shared import get_paths

    return get_paths().models_dir


def _gguf_files() -> list[dict[str, Any]]:
    from providers.gguf_catalog import discover_models

    return [{"name": m.name, "path": str(m.path), "size": m.size, "source": m.source}
            for m in discover_models(lattice_models_dir=_models_dir())]


def _provider_models() -> tuple[dict[str, Any], str | None]:
    """The configured provider's models (through the daemon when it runs), or the
    provider's details and why they could not be listed."""
    answer = try_ask(client_for().ping)
    if answer is not None:
        provider = answer.body.get("provider") or {}
        if provider.get("ok"):
            return {"kind": provider.get("kind"), "url": provider.get("url"),
                    "models": list(provider.get("models") or []),
                    "defaultModel": provider.get("defaultModel"), "via": "daemon"}, None
    from lattice_ctl.commands.providers import configured_provider
    from lattice_daemon.shared import ProviderConfig
    from providers import DEFAULT_URLS, detect_providers

    configured = configured_provider() or ProviderConfig()
    url = configured.url or DEFAULT_URLS.get(configured.kind)
    if not url:
        return ({"kind": configured.kind, "url": None},
                f"the {configured.kind} provider has no URL in the config")
    health = detect_providers(timeout=3.0, urls={configured.kind: url},
                              **configured.adapter_options())[0]
    if not health.ok:
        return {"kind": configured.kind, "url": url}, health.detail
    return {"kind": configured.kind, "url": health.url, "models": health.models,
            "defaultModel": configured.default_model, "via": "provider"}, None


def _provider_text(data: dict[str, Any]) -> str:
    if not data["models"]:
        return f"{data['kind']} at {data['url']} has no models."
    default = data.get("defaultModel")
    return "\n".join(f"{m}{'  (default)' if m == default else ''}" for m in data["models"])


def _gguf_table(files: list[dict[str, Any]], models_dir: str) -> Any:
    if not files:
        return (f"No GGUF model files found (Lattice models directory {models_dir}, Ollama, "
                "LM Studio, Hugging Face cache). Download one: lattice-ctl models pull "
                "hf:ORG/REPO/FILE.gguf")
    return output.table(["GGUF model", "size", "from", "path"],
                        [[f["name"], output.size_text(f["size"]), f["source"], f["path"]]
                         for f in files], title="GGUF model files on this machine")


@click.group(invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """The configured provider's models (through the daemon when it runs), and the GGUF
    model files on this machine: Lattice's models directory, Ollama, LM Studio, the
    Hugging Face cache."""
    if ctx.invoked_subcommand is not None:
        return
    files = _gguf_files()
    models_dir = str(_models_dir())
    provider, problem = _provider_models()
    if problem is not None:
        # The files are still worth showing; the provider problem fails the command.
        if not output.json_mode():
            output.emit(None, lambda _: _gguf_table(files, models_dir))
        output.fail(problem, data={**provider, "gguf": files, "modelsDir": models_dir})
    data = {**provider, "gguf": files, "modelsDir": models_dir}

    def human(data: dict[str, Any]) -> Any:
        from rich.console import Group

        return Group(_provider_text(data), "", _gguf_table(data["gguf"], models_dir))

    output.emit(data, human)


@models.command()
@click.argument("source", metavar="URL|hf:ORG/REPO/FILE.gguf")
@click.option("--sha256", help="The file's sha256, checked before the file is kept "
              "(hf: sources and URLs naming their digest are checked without it).")
@click.option("--name", help="The file name in the models directory (default: the "
              "source's).")
def pull(source: str, sha256: str | None, name: str | None) -> None:
    """Download a GGUF model into the Lattice models directory (resumable: run it again
    after an interruption). hf:ORG/REPO/FILE.gguf is fetched from the Hugging Face hub
    (LATTICE_HF_ENDPOINT or HF_ENDPOINT moves it)."""
    from lattice_ctl.model_download import DownloadError, download, parse_source

    models_dir = _models_dir()
    try:
        parsed = parse_source(source, sha256, name)
        target = models_dir / parsed.filename
        if target.exists():
            output.info(f"{target} is already there")
            output.emit({"path": str(target), "size": target.stat().st_size,
                         "downloaded": False}, lambda d: d["path"])
            return
        if parsed.sha256 is None and not parsed.from_hub:
            output.warn("no checksum known for this URL: pass --sha256 to verify the file")
        done = download(parsed, models_dir, output.progress)
    except DownloadError as exc:
        output.fail(str(exc), data={"source": source})
    if not done.verified:
        output.warn(f"{done.path.name}: the server sent no sha256 to check it against")
    output.emit({"path": str(done.path), "size": done.size, "sha256": done.sha256,
                 "verified": done.verified, "resumedFrom": done.resumed_from,
                 "downloaded": True},
                lambda d: f"{d['path']} ({output.size_text(d['size'])}, sha256 {d['sha256']}"
                          f"{' verified' if d['verified'] else ''})")
