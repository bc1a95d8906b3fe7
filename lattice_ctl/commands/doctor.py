"""`lattice-ctl doctor`: the troubleshooting checks of docs/operations.md, each failure with a fix.

Checks, in order (a check that depends on an earlier failure is skipped, not failed):
config (readable, 0600, key 0600) -> paired -> daemon running (socket answers) -> relay
state (connected / reconnecting + lastError / re-pair required) -> gateway reachable
(GET <gateway>/healthz, proxies honoured and named) -> clock skew vs the gateway's Date
-> provider reachable -> default model present (for the embedded engine: engine
installed -> model file -> a one-token generation). Exit 0 when nothing failed, else 1.

The daemon is reached only through its control socket; the gateway and the provider are
probed from this process, as the same user, so the answers match what the daemon sees.
"""

from __future__ import annotations

import os
import stat
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from lattice_ctl import output
from lattice_daemon.shared import ConfigError, DaemonConfig, Paths, get_paths, load_config

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
MAX_CLOCK_SKEW_SECONDS = 60.0  # job deadlines are absolute times: beyond this they misfire
PAIR_COMMAND = "lattice-ctl relay connect --gateway '<gateway url>' --bootstrap-token '<token>'"
PAIR_HINT = ("get a bootstrap token from the app that uses Lattice (it shows the whole "
             f"command), then run: {PAIR_COMMAND}")


@dataclass
class Check:
    name: str  # stable id for scripts: config, paired, daemon, relay, gateway, clock, ...
    title: str
    status: str  # pass | fail | warn | skip
    detail: str
    fix: str | None = None


@dataclass
class GatewayProbe:
    reachable: bool
    status_code: int | None = None
    date_header: str | None = None
    received_at: float = 0.0  # local unix time when the answer arrived
    round_trip: float = 0.0


# -- config and pairing ------------------------------------------------------------------


def _mode_problem(path: Path, wanted: int) -> str | None:
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.getuid():
        return f"{path} belongs to another user (uid {info.st_uid})"
    if mode & ~wanted & 0o777:
        return f"{path} has mode {mode:04o}, which lets other users read it (want {wanted:04o})"
    return None


def check_config(paths: Paths) -> tuple[Check, DaemonConfig | None]:
    config_file, key_file = paths.config_file, paths.key_file
    try:
        config = load_config(paths)
    except ConfigError as exc:
        return Check("config", "Config", FAIL, str(exc),
                     f"repair {config_file} or move it away, then pair again: "
                     f"{PAIR_COMMAND}"), None
    if not config_file.exists():
        return Check("config", "Config", PASS,
                     f"no config file yet ({config_file}); defaults apply"), config
    problems: list[str] = []
    fixes: list[str] = []
    for path, wanted in ((paths.config_dir, 0o700), (config_file, 0o600)):
        problem = _mode_problem(path, wanted)
        if problem:
            problems.append(problem)
            fixes.append(f"chmod {wanted:o} '{path}'")
    if config.paired and not key_file.exists():
        problems.append(f"the daemon's private key {key_file} is missing")
        fixes.append(f"pair again (the old key is gone): {PAIR_COMMAND} --replace")
    elif key_file.exists():
        problem = _mode_problem(key_file, 0o600)
        if problem:
            problems.append(problem)
            fixes.append(f"chmod 600 '{key_file}'")
        elif config.paired and not _key_usable(key_file):
            problems.append(f"the daemon's private key {key_file} is unreadable or damaged")
            fixes.append(f"pair again with a new key: {PAIR_COMMAND} --replace")
    if problems:
        return Check("config", "Config", FAIL, "; ".join(problems), "; ".join(fixes)), config
    key_note = ", key 0600" if key_file.exists() else ""
    return Check("config", "Config", PASS, f"{config_file} (0600{key_note})"), config


def _key_usable(key_file: Path) -> bool:
    from lattice_protocol import KeyPair, SealError

    try:
        KeyPair.from_private_text(key_file.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError, SealError, ValueError):
        return False
    return True


def check_paired(config: DaemonConfig | None) -> Check:
    if config is None:
        return Check("paired", "Pairing", SKIP, "the config could not be read")
    if config.relay is None:
        return Check("paired", "Pairing", FAIL, "this machine is not paired with a gateway",
                     PAIR_HINT)
    relay = config.relay
    return Check("paired", "Pairing", PASS,
                 f"paired as {relay.display_name!r} ({relay.lattice_id}) with {relay.gateway}")


# -- the daemon, through its socket ------------------------------------------------------


def ask_daemon(socket_path: str | None, timeout: float) -> tuple[dict[str, Any] | None, str]:
    """The daemon's /v1/status answer (None if it does not answer) and why not."""
    from lattice_ctl.control_client import ControlClient, ControlError, DaemonNotRunning

    client = ControlClient(socket_path, timeout=timeout)
    try:
        return client.status().body, str(client.socket_path)
    except DaemonNotRunning:
        return None, f"nothing answers on {client.socket_path}"
    except ControlError as exc:
        return None, str(exc)


def _start_hint() -> str:
    try:
        from lattice_ctl import service_manager

        installed = service_manager.installed()
    except Exception:  # the hint must never break the doctor
        installed = False
    if not installed:
        return "start it: lattice-ctl daemon start (at every login: lattice-ctl service install)"
    # The service gave up (or was stopped): its own words say why, e.g. exit 78 = config.
    if sys.platform == "darwin":
        why = f"{get_paths().log_dir / 'service.err.log'} and lattice-ctl daemon logs"
    else:
        why = "systemctl --user status lattice-daemon and journalctl --user -u lattice-daemon -e"
    return f"the service is installed but not running; see why: {why}; then: " \
           "lattice-ctl daemon start"


def check_daemon(answer: dict[str, Any] | None, why: str) -> Check:
    if answer is None:
        return Check("daemon", "Daemon", FAIL, f"the daemon is not running ({why})",
                     _start_hint())
    from lattice_protocol import __version__

    version = answer.get("daemonVersion") or "?"
    detail = f"running (pid {answer.get('pid', '?')}, version {version})"
    if version != __version__:
        return Check("daemon", "Daemon", WARN,
                     f"{detail}, but lattice-ctl is {__version__}",
                     "restart it to run the installed version: lattice-ctl daemon restart")
    return Check("daemon", "Daemon", PASS, detail)


def check_relay(answer: dict[str, Any] | None, config: DaemonConfig | None) -> Check:
    if answer is None:
        return Check("relay", "Relay", SKIP, "the daemon is not running")
    relay = answer.get("relay") or {}
    state = relay.get("state")
    last_error = relay.get("lastError")
    gateway = relay.get("gateway") or (config.relay.gateway if config and config.relay else "")
    if state == "connected":
        return Check("relay", "Relay", PASS, f"connected to {gateway}"
                     + (f", last poll {relay['lastPollAt']}" if relay.get("lastPollAt") else ""))
    if state == "connecting":
        return Check("relay", "Relay", WARN, f"connecting to {gateway}",
                     "wait a few seconds and run the doctor again")
    if state == "reconnecting":
        return Check("relay", "Relay", FAIL,
                     f"reconnecting since {relay.get('since') or '?'}: "
                     f"{last_error or 'no error recorded'}",
                     "the daemon retries by itself; the gateway and clock checks below "
                     "show what blocks it (network, proxy, TLS, clock)")
    if state == "repair_required":
        return Check("relay", "Relay", FAIL,
                     f"re-pair required: {last_error or 'the gateway refused the pairing'}",
                     "the runtime was revoked, deleted or paired on another machine; get a "
                     f"new bootstrap token from the app and run: {PAIR_COMMAND} --replace")
    if state == "not_paired":
        if config is not None and config.paired:
            return Check("relay", "Relay", FAIL,
                         "the daemon runs without the pairing that the config holds",
                         "restart it to load the config: lattice-ctl daemon restart")
        return Check("relay", "Relay", SKIP, "not paired")
    return Check("relay", "Relay", WARN, f"unknown relay state {state!r}")


# -- the gateway and the clock -----------------------------------------------------------


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def proxy_for(url: str) -> tuple[str, str] | None:
    """(variable name, proxy URL without credentials) that applies to ``url``, if any."""
    parts = urlsplit(url)
    # real but undocumented, so typeshed has no stub for it
    if urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
            parts.hostname or ""):
        return None
    from lattice_ctl.pairing import proxy_variables

    for name in proxy_variables(parts.scheme):
        value = os.environ.get(name)
        if value:
            return name, _redacted(value)
    return None


def probe_gateway(gateway: str, timeout: float) -> tuple[GatewayProbe, str]:
    """GET <gateway>/healthz as the daemon would (proxies, SSL_CERT_FILE honoured)."""
    import httpx

    url = gateway.rstrip("/") + "/healthz"
    started = time.monotonic()
    try:
        with httpx.Client(trust_env=True, timeout=timeout, follow_redirects=False) as client:
            response = client.get(url, headers={"User-Agent": "lattice-ctl doctor"})
    except httpx.ProxyError as exc:
        return GatewayProbe(False), f"proxy error: {exc}"
    except httpx.TimeoutException:
        return GatewayProbe(False), f"no answer within {timeout:g} s"
    except httpx.HTTPError as exc:
        from lattice_ctl.pairing import scheme_mismatch

        text = str(exc) or type(exc).__name__
        mismatch = scheme_mismatch(gateway, exc)
        if mismatch:
            return GatewayProbe(False), mismatch
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return GatewayProbe(False), f"TLS certificate not trusted: {text}"
        return GatewayProbe(False), text
    except ValueError as exc:  # a malformed proxy URL in the environment
        return GatewayProbe(False), f"bad proxy setting: {exc}"
    probe = GatewayProbe(True, response.status_code, response.headers.get("date"),
                         time.time(), time.monotonic() - started)
    return probe, f"HTTP {response.status_code}"


def check_gateway(config: DaemonConfig | None, timeout: float
                  ) -> tuple[Check, GatewayProbe | None]:
    if config is None or config.relay is None:
        return Check("gateway", "Gateway", SKIP, "not paired: no gateway to reach"), None
    gateway = config.relay.gateway
    proxy = proxy_for(gateway)
    via = f" through the proxy {proxy[1]} ({proxy[0]})" if proxy else ""
    probe, outcome = probe_gateway(gateway, timeout)
    if not probe.reachable:
        if proxy:
            fix = (f"check that the proxy {proxy[1]} is running and allows {gateway}; or "
                   "bypass it for the gateway with NO_PROXY=<gateway host>")
        elif "TLS" in outcome:
            fix = ("if a proxy or security tool inspects TLS here, point SSL_CERT_FILE at "
                   "its CA bundle (and pass it to the service: lattice-ctl service install)")
        elif "not plain HTTP" in outcome or "not HTTPS" in outcome:
            fix = "pair again with the gateway URL the app shows (lattice-ctl relay connect)"
        else:
            over = " over HTTPS" if gateway.startswith("https://") else ""
            fix = (f"check this machine's network, DNS and firewall; {gateway} must be "
                   f"reachable{over} (outbound only)")
        return Check("gateway", "Gateway", FAIL,
                     f"{gateway} is not reachable{via}: {outcome}", fix), probe
    if probe.status_code != 200:
        return Check("gateway", "Gateway", WARN,
                     f"{gateway}/healthz answered HTTP {probe.status_code}{via}",
                     "check the gateway URL in the config (re-pair if it changed)"), probe
    return Check("gateway", "Gateway", PASS,
                 f"{gateway} answers{via} ({probe.round_trip * 1000:.0f} ms)"), probe


def clock_fix() -> str:
    if sys.platform == "darwin":
        return "turn on System Settings > General > Date & Time > Set time automatically"
    return ("synchronise the clock: sudo timedatectl set-ntp true (or start chrony/ntpd); "
            "job deadlines depend on it")


def check_clock(probe: GatewayProbe | None) -> Check:
    if probe is None:
        return Check("clock", "Clock", SKIP, "no gateway to compare with")
    if not probe.reachable:
        return Check("clock", "Clock", SKIP, "the gateway did not answer")
    if not probe.date_header:
        return Check("clock", "Clock", SKIP, "the gateway sent no Date header")
    try:
        server_time = parsedate_to_datetime(probe.date_header).timestamp()
    except (TypeError, ValueError):
        return Check("clock", "Clock", SKIP, f"unreadable Date header {probe.date_header!r}")
    # The header was made during the round trip and has 1 s resolution: compare with
    # the middle of the request and allow for both.
    skew = (probe.received_at - probe.round_trip / 2) - server_time
    tolerance = MAX_CLOCK_SKEW_SECONDS + 1 + probe.round_trip / 2
    direction = "ahead of" if skew > 0 else "behind"
    detail = f"this machine is {abs(skew):.0f} s {direction} the gateway"
    if abs(skew) > tolerance:
        return Check("clock", "Clock", FAIL,
                     f"{detail} (more than {MAX_CLOCK_SKEW_SECONDS:.0f} s)", clock_fix())
    return Check("clock", "Clock", PASS, detail if abs(skew) >= 2 else "in sync with the gateway")


# -- the provider and its model ----------------------------------------------------------

_START_PROVIDER = {
    "ollama": "start Ollama: open the Ollama app, or run `ollama serve`",
    "lmstudio": "start LM Studio's server: Developer tab > Start server, or `lms server start`",
    "openai": "start your OpenAI-compatible server (llama.cpp server, vLLM, LocalAI)",
}
_GET_MODEL = {
    "ollama": "ollama pull {model}",
    "lmstudio": "lms get {model} (or download it in LM Studio), then load it",
    "openai": "load {model} in your server",
}


def probe_provider(config: DaemonConfig, timeout: float) -> tuple[bool, str, list[str], str]:
    """(ok, detail, models, url) from the provider's own health check."""
    import asyncio

    from providers import make_provider

    async def probe() -> tuple[bool, str, list[str], str]:
        provider = make_provider(config.provider.kind, config.provider.url,
                                 probe_timeout=timeout, **config.provider.adapter_options())
        try:
            health = await provider.health()
            return health.ok, health.detail, list(health.models), health.url or ""
        finally:
            await provider.aclose()

    return asyncio.run(probe())


def check_provider(config: DaemonConfig | None, timeout: float
                   ) -> tuple[Check, list[str] | None]:
    if config is None:
        return Check("provider", "Provider", SKIP, "the config could not be read"), None
    kind = config.provider.kind
    try:
        ok, detail, models, url = probe_provider(config, timeout)
    except ValueError as exc:  # unknown kind or bad URL in the config
        return Check("provider", "Provider", FAIL, str(exc),
                     f"fix [provider] in {get_paths().config_file}"), None
    url = url or config.provider.url or "its default URL"
    if not ok:
        fix = _START_PROVIDER.get(kind, "start the provider")
        fix += f"; it must answer at {url}"
        if config.provider.url:
            fix += f" (or correct [provider] url in {get_paths().config_file})"
        return Check("provider", "Provider", FAIL, _where(kind, url, detail), fix), None
    # The health detail already counts the models ("running, 2 model(s)").
    return Check("provider", "Provider", PASS, _where(kind, url, detail)), models


def _where(kind: str, url: str, detail: str) -> str:
    return detail if url in detail else f"{kind} at {url}: {detail}"


def check_model(config: DaemonConfig | None, models: list[str] | None) -> Check:
    from providers import default_model_among, same_model

    if config is None or models is None:
        return Check("model", "Default model", SKIP, "the provider did not answer")
    kind = config.provider.kind
    allowed = config.provider.allowed_models
    wanted = config.provider.default_model
    if wanted:
        if any(same_model(wanted, m) for m in models):
            return Check("model", "Default model", PASS, f"{wanted} is available")
        return Check("model", "Default model", FAIL,
                     f"the default model {wanted} is not on the provider "
                     f"(it has: {', '.join(models) or 'none'})",
                     _GET_MODEL.get(kind, "install {model}").format(model=wanted))

    chosen = default_model_among(models, allowed)
    if chosen:
        return Check("model", "Default model", PASS, f"none configured; the daemon uses {chosen}")
    example = allowed[0] if allowed else "llama3.2"
    return Check("model", "Default model", FAIL,
                 "the provider has no model" + (" that the config allows" if allowed else ""),
                 _GET_MODEL.get(kind, "install {model}").format(model=example))


# -- the embedded engine (assistant-runtime) ---------------------------------------------


def check_engine(config: DaemonConfig) -> list[Check]:
    """The engine installed -> the model file -> a one-token generation in a worker."""
    import asyncio

    from lattice_daemon.shared import build_embedded
    from providers import ProviderError
    from providers.embedded import INSTALL_COMMAND, NO_MODEL_HELP, engine_installed

    if not engine_installed():
        return [Check("engine", "Engine", FAIL, "the embedded engine (llama-cpp-python) is "
                      "not installed", f"install it: {INSTALL_COMMAND}"),
                Check("model", "Model", SKIP, "no engine to run it"),
                Check("generation", "Generation", SKIP, "no engine to run it")]
    from importlib.metadata import version

    checks = [Check("engine", "Engine", PASS,
                    f"llama-cpp-python {version('llama-cpp-python')} is installed")]
    try:
        engine = build_embedded(config)
        name, path = engine.model_file()
    except (ConfigError, ProviderError) as exc:
        message = str(exc) if isinstance(exc, ConfigError) else exc.message
        return [*checks, Check("model", "Model", FAIL, message,
                               f"{NO_MODEL_HELP}; the config is {get_paths().config_file}"),
                Check("generation", "Generation", SKIP, "no model to run")]
    checks.append(Check("model", "Model", PASS,
                        f"{name}: {path} ({path.stat().st_size / 2**20:.0f} MB)"))

    async def generate() -> tuple[float, str]:
        started = time.perf_counter()
        try:
            answer = await engine.chat({"messages": [{"role": "user", "content": "Hi"}],
                                        "max_tokens": 1})
        finally:
            await engine.aclose()
        return time.perf_counter() - started, answer["choices"][0]["message"]["content"]

    try:
        took, _ = asyncio.run(generate())
    except ProviderError as exc:
        checks.append(Check("generation", "Generation", FAIL, exc.message,
                            "check that the file is a GGUF model llama.cpp can run (re-download "
                            "it), and that this machine has memory for it"))
    else:
        checks.append(Check("generation", "Generation", PASS,
                            f"loaded the model and generated a token in {took:.1f} s"))
    return checks


# -- the command -------------------------------------------------------------------------


def run_checks(socket_path: str | None, timeout: float) -> list[Check]:
    paths = get_paths()
    config_check, config = check_config(paths)
    checks = [config_check, check_paired(config)]
    answer, why = ask_daemon(socket_path, timeout)
    checks += [check_daemon(answer, why), check_relay(answer, config)]
    gateway_check, probe = check_gateway(config, timeout)
    checks += [gateway_check, check_clock(probe)]
    if config is not None and config.provider.kind == "embedded":
        return checks + check_engine(config)
    provider_check, models = check_provider(config, timeout)
    checks += [provider_check, check_model(config, models)]
    return checks


_MARKS = {PASS: "[green]✓[/green]", FAIL: "[red]✗[/red]", WARN: "[yellow]![/yellow]",
          SKIP: "[dim]-[/dim]"}


def _human(data: dict[str, Any]) -> str:
    from rich.markup import escape

    lines = []
    for check in data["checks"]:
        lines.append(f"{_MARKS[check['status']]} {check['title']:<14} {escape(check['detail'])}")
        if check["fix"] and check["status"] in (FAIL, WARN):
            lines.append(f"  {'':<14} [bold]fix:[/bold] {escape(check['fix'])}")
    failed = [c["title"] for c in data["checks"] if c["status"] == FAIL]
    lines.append("All checks passed." if not failed
                 else f"{len(failed)} check(s) failed: {', '.join(failed)}.")
    return "\n".join(lines)


@click.command()
@click.option("--timeout", default=5.0, show_default=True,
              help="Seconds to wait for the daemon, the gateway and the provider.")
@click.pass_context
def doctor(ctx: click.Context, timeout: float) -> None:
    """Run the troubleshooting checks and print a fix for each failure."""
    socket_path = (ctx.find_root().obj or {}).get("socket")
    with output.spinner("Checking..."):
        checks = run_checks(socket_path, timeout)
    ok = all(c.status != FAIL for c in checks)
    output.emit({"ok": ok, "checks": [asdict(c) for c in checks]}, _human, markup=True)
    if not ok:
        sys.exit(1)
