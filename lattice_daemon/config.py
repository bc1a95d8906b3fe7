"""The daemon's configuration (``daemon.toml``) and keypair, with safe file handling.

Both files hold secrets (the daemon token, the private key): they are written
atomically (temp file + rename) with mode 0600 inside a 0700 directory, and their
contents never appear in logs or error messages.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import sys
import tempfile
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from .paths import Paths

if TYPE_CHECKING:
    from lattice_protocol import KeyPair

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


log = logging.getLogger("lattice_daemon")


class ConfigError(Exception):
    """The config or key file exists but cannot be used (message says which and why)."""


@dataclass
class RelayConfig:
    """What `relay connect` received when it redeemed a bootstrap token."""

    gateway: str
    relay_url: str
    lattice_id: str
    account_id: str
    display_name: str
    execution_backend: str
    daemon_token: str
    gateway_public_key: str
    paired_at: str

    def __repr__(self) -> str:  # keep the token out of any accidental log line
        return f"RelayConfig(lattice_id={self.lattice_id!r}, gateway={self.gateway!r})"


class AdapterOptions(TypedDict, total=False):
    """The ``make_provider`` options a provider kind takes beyond the common ones."""

    api_key: str


def relay_base_url(relay_url: str) -> str:
    """``.../v1/relay`` whether the pairing stored the relay base or the gateway URL."""
    url = relay_url.rstrip("/")
    return url if url.endswith("/v1/relay") else url + "/v1/relay"


@dataclass
class ProviderConfig:
    kind: str = "ollama"  # ollama | lmstudio | openai | embedded ([assistant])
    url: str | None = None  # None: the kind's default URL
    default_model: str | None = None
    allowed_models: list[str] = field(default_factory=list)  # empty: every local model
    first_token_timeout: float = 300.0  # model loading is not a timeout
    idle_timeout: float = 120.0
    # Sent as "Authorization: Bearer" to an OpenAI-compatible server that requires one
    # (LM Studio's "Require Authentication"); this file is 0600. Never in a repr.
    api_key: str | None = field(default=None, repr=False)

    def adapter_options(self) -> AdapterOptions:
        """Extra ``make_provider`` options: only what is set (Ollama takes no API key)."""
        return {"api_key": self.api_key} if self.api_key else {}


@dataclass
class AssistantConfig:
    """The embedded engine (provider kind ``embedded``, runtimes whose backend is
    ``assistant-runtime``): which GGUF model it runs, and how."""

    model: str | None = None  # a GGUF file path, or a model name found on this machine
    n_ctx: int = 4096  # context length in tokens; longer prompts are refused (400)
    n_threads: int | None = None  # None: llama.cpp's default for this machine
    keep_alive: float = 300.0  # seconds without a job before the model is unloaded


@dataclass
class DaemonSettings:
    max_concurrency: int = 4
    log_prompts: bool = False
    drain_seconds: float = 30.0
    # Reconnect backoff (jittered exponential); tests shorten it.
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0


@dataclass
class AppLimits:
    """``[limits.apps."NAME"]``: one app's own rules (an app is a credential's name)."""

    tokens_per_day: int | None = None  # None: the [limits] default


@dataclass
class LimitsConfig:
    """``[limits]``: who may use this machine and how much (docs/operations.md).

    ``allowed_models`` and ``max_concurrency`` are the ``[provider]`` and ``[daemon]``
    keys of the same name, settable here too (load_config keeps both places equal)."""

    allowed_models: list[str] | None = None
    max_concurrency: int | None = None
    allow: list[str] = field(default_factory=list)  # app names; empty: every app
    block: list[str] = field(default_factory=list)  # app names refused (wins over allow)
    max_tokens: int | None = None  # per request; a larger or missing max_tokens is clamped
    max_prompt_chars: int | None = None  # characters of message text per request
    tokens_per_day: int | None = None  # each app's daily budget unless its own is set
    apps: dict[str, AppLimits] = field(default_factory=dict)


@dataclass
class ScheduleConfig:
    """``[schedule]``: when this machine serves."""

    pause_on_battery: bool = False
    serve_hours: list[str] = field(default_factory=list)  # e.g. "Mon-Fri 09:00-18:00"


@dataclass
class DaemonConfig:
    relay: RelayConfig | None = None
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    assistant: AssistantConfig = field(default_factory=AssistantConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    @property
    def paired(self) -> bool:
        return self.relay is not None


def _has_type(value: Any, annotation: Any) -> bool:
    """Whether a TOML value fits a field's annotation (the few types the config uses)."""
    if isinstance(annotation, types.UnionType):
        return any(_has_type(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if annotation is float:  # TOML writes 30 as an integer; bool is not a number here
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is list:
        return "a list of strings"
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return " or ".join(_TYPE_NAMES.get(k, str(k)) for k in kinds)


def _section(cls: type, raw: Any, name: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"[{name}] has unknown keys: {', '.join(sorted(unknown))}")
    # A wrong type would otherwise surface later as a traceback (exit 1, which the service
    # manager restarts forever), or silently: log_prompts = "false" is truthy.
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        if not _has_type(value, hints[key]):
            raise ConfigError(f"[{name}] {key} must be {_type_name(hints[key])}, "
                              f"not {type(value).__name__}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"[{name}] is incomplete: {exc}") from None


def check_provider(p: ProviderConfig) -> None:
    """The [provider] rules a type check cannot make; raises ConfigError."""
    if p.first_token_timeout <= 0 or p.idle_timeout <= 0:
        raise ConfigError("[provider] first_token_timeout and idle_timeout must be > 0")
    if p.api_key and p.kind == "ollama":
        raise ConfigError("[provider] api_key is for OpenAI-compatible servers "
                          "(kind lmstudio or openai); Ollama takes none")


MAX_APP_NAME = 256  # a credential's name, as the gateway seals it


def check_limits(limits: LimitsConfig) -> None:
    """The [limits] rules a type check cannot make; raises ConfigError."""
    if limits.max_concurrency is not None and not 1 <= limits.max_concurrency <= 1024:
        raise ConfigError("[limits] max_concurrency must be an integer from 1 to 1024")
    for key in ("max_tokens", "max_prompt_chars", "tokens_per_day"):
        value = getattr(limits, key)
        if value is not None and value < 1:
            raise ConfigError(f"[limits] {key} must be at least 1 (leave it out for no limit)")
    for key in ("allow", "block"):
        for name in getattr(limits, key):
            if not name or len(name) > MAX_APP_NAME:
                raise ConfigError(f"[limits] {key} holds app names of 1 to {MAX_APP_NAME} "
                                  "characters")
    for name, app in limits.apps.items():
        if app.tokens_per_day is not None and app.tokens_per_day < 1:
            raise ConfigError(f'[limits.apps."{name}"] tokens_per_day must be at least 1')


def check_schedule(schedule: ScheduleConfig) -> None:
    """The [schedule] rules a type check cannot make; raises ConfigError."""
    for text in schedule.serve_hours:
        parse_serve_hours(text)


_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NUMBERS = {name: number for number, day in enumerate(_DAY_NAMES)
                for name in (day, day[:3])}


@dataclass(frozen=True)
class ServeWindow:
    """One ``serve_hours`` entry: on ``days`` (0 = Monday), from ``start`` to ``end``
    minutes after midnight, local time; an ``end`` at or before ``start`` runs past
    midnight into the next day."""

    days: frozenset[int]
    start: int
    end: int


def _minutes(text: str, entry: str) -> int:
    hours, colon, minutes = text.partition(":")
    if not (colon and hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ConfigError(f"[schedule] serve_hours {entry!r}: {text!r} is not a time (HH:MM)")
    value = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or value > 24 * 60:
        raise ConfigError(f"[schedule] serve_hours {entry!r}: {text!r} is not a time of day")
    return value


def _day(text: str, entry: str) -> int:
    number = _DAY_NUMBERS.get(text.strip().lower())
    if number is None:
        raise ConfigError(f"[schedule] serve_hours {entry!r}: {text.strip()!r} is not a day "
                          "(Mon, Mon-Fri, Sat,Sun or daily)")
    return number


def _days(text: str, entry: str) -> frozenset[int]:
    if text.lower() == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        day, end = _day(first, entry), _day(last, entry) if dash else None
        days.add(day)
        while end is not None and day != end:  # Fri-Mon wraps over the weekend
            day = (day + 1) % 7
            days.add(day)
    return frozenset(days)


def parse_serve_hours(entry: str) -> ServeWindow:
    """``"Mon-Fri 09:00-18:00"``, ``"Sat,Sun 10:00-14:00"``, ``"daily 22:00-06:00"``."""
    days_text, _, hours_text = entry.strip().rpartition(" ")
    start_text, dash, end_text = hours_text.partition("-")
    if not days_text.strip() or not dash:
        raise ConfigError(f"[schedule] serve_hours {entry!r} must look like "
                          "\"Mon-Fri 09:00-18:00\" (days, then HH:MM-HH:MM, local time)")
    start, end = _minutes(start_text, entry), _minutes(end_text, entry)
    if start == end:
        raise ConfigError(f"[schedule] serve_hours {entry!r}: the window is empty")
    return ServeWindow(_days(days_text.strip(), entry), start, end)


def validate(config: DaemonConfig) -> None:
    """Checks load_config cannot make (it only knows shapes); raises ConfigError."""
    from lattice_protocol import KeyPair, Sealer, SealError  # the daemon's checks only

    check_provider(config.provider)
    a = config.assistant
    if a.n_ctx < 16 or (a.n_threads is not None and a.n_threads < 1) or a.keep_alive < 0:
        raise ConfigError("[assistant] n_ctx must be at least 16, n_threads at least 1 and "
                          "keep_alive >= 0")
    d = config.daemon
    if isinstance(d.max_concurrency, bool) or not isinstance(d.max_concurrency, int) \
            or not 1 <= d.max_concurrency <= 1024:
        raise ConfigError("[daemon] max_concurrency must be an integer from 1 to 1024")
    check_limits(config.limits)
    check_schedule(config.schedule)
    if not 0 <= d.drain_seconds < math.inf:
        raise ConfigError("[daemon] drain_seconds must be a number >= 0")
    if not 0 < d.backoff_initial_seconds <= d.backoff_max_seconds < math.inf:
        raise ConfigError("[daemon] backoff_initial_seconds must be > 0 and at most "
                          "backoff_max_seconds")
    if config.relay is not None:
        try:
            Sealer(KeyPair.generate(), config.relay.gateway_public_key)
        except SealError:
            raise ConfigError("[relay] gateway_public_key is not a valid public key; "
                              "run `lattice-ctl relay connect --replace`") from None
        import httpx

        try:  # every relay request is built on it: a bad one would be a traceback later
            relay_host = httpx.URL(config.relay.relay_url).host
        except httpx.InvalidURL:
            relay_host = ""
        if not (config.relay.relay_url.startswith(("http://", "https://")) and relay_host):
            raise ConfigError("[relay] relay_url must be an https:// or http:// URL; "
                              "run `lattice-ctl relay connect --replace`")


def load_config(paths: Paths) -> DaemonConfig:
    """The config, or defaults (not paired) when there is no file yet."""
    try:
        raw = tomllib.loads(paths.config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return DaemonConfig()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {paths.config_file}: {exc}") from None
    config = DaemonConfig()
    if "relay" in raw:
        config.relay = _section(RelayConfig, raw["relay"], "relay")
    if "provider" in raw:
        config.provider = _section(ProviderConfig, raw["provider"], "provider")
    if "daemon" in raw:
        config.daemon = _section(DaemonSettings, raw["daemon"], "daemon")
    if "assistant" in raw:
        config.assistant = _section(AssistantConfig, raw["assistant"], "assistant")
    if "limits" in raw:
        config.limits = _limits(raw["limits"])
    if "schedule" in raw:
        config.schedule = _section(ScheduleConfig, raw["schedule"], "schedule")
    _mirror_limits(config)
    return config


def _limits(raw: Any) -> LimitsConfig:
    if not isinstance(raw, dict):
        raise ConfigError("[limits] must be a table")
    raw = dict(raw)
    apps_raw = raw.pop("apps", {})
    if not isinstance(apps_raw, dict):
        raise ConfigError('[limits.apps] must hold tables: [limits.apps."App name"]')
    limits: LimitsConfig = _section(LimitsConfig, raw, "limits")
    limits.apps = {name: _section(AppLimits, value, f'limits.apps."{name}"')
                   for name, value in apps_raw.items()}
    return limits


def _mirror_limits(config: DaemonConfig) -> None:
    """``allowed_models`` / ``max_concurrency`` may be set under [limits] or in their old
    places ([provider], [daemon]); the rest of the daemon reads the old places."""
    limits = config.limits
    if limits.allowed_models is not None:
        if config.provider.allowed_models and \
                config.provider.allowed_models != limits.allowed_models:
            raise ConfigError("allowed_models is set in both [limits] and [provider] with "
                              "different values; keep one")
        config.provider.allowed_models = list(limits.allowed_models)
    if limits.max_concurrency is not None:
        default = DaemonSettings().max_concurrency
        if config.daemon.max_concurrency not in (default, limits.max_concurrency):
            raise ConfigError("max_concurrency is set in both [limits] and [daemon] with "
                              "different values; keep one")
        config.daemon.max_concurrency = limits.max_concurrency


def _drop_none(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None}  # TOML has no null


def save_config(paths: Paths, config: DaemonConfig) -> None:
    # `lattice-ctl` writes the config, and the daemon when the owner changes a limit live
    import tomli_w

    data: dict[str, Any] = {
        "provider": _drop_none(asdict(config.provider)),
        "daemon": asdict(config.daemon),
    }
    if config.assistant != AssistantConfig():
        data["assistant"] = _drop_none(asdict(config.assistant))
    if config.limits != LimitsConfig():
        limits = _drop_none(asdict(config.limits))
        limits["apps"] = {name: _drop_none(app) for name, app in limits["apps"].items()}
        data["limits"] = {k: v for k, v in limits.items() if v not in ([], {})}
    if config.schedule != ScheduleConfig():
        data["schedule"] = asdict(config.schedule)
    if config.relay is not None:
        data["relay"] = asdict(config.relay)
    write_private_file(paths.config_file, tomli_w.dumps(data).encode("utf-8"))


def load_or_create_keypair(paths: Paths) -> KeyPair:
    """The daemon's Curve25519 keypair, generated locally on first use."""
    from lattice_protocol import KeyPair, SealError

    try:
        return KeyPair.from_private_text(paths.key_file.read_text(encoding="ascii"))
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, SealError) as exc:
        raise ConfigError(f"cannot use key file {paths.key_file}: {type(exc).__name__}") from None
    keys = KeyPair.generate()
    save_keypair(paths, keys)
    return keys


def save_keypair(paths: Paths, keys: KeyPair) -> None:
    write_private_file(paths.key_file, (keys.private_text() + "\n").encode("ascii"))


def ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def write_private_file(path: Path, content: bytes) -> None:
    """Atomically replace ``path`` with ``content``, mode 0600, directory 0700."""
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_keys(paths: Paths, config: DaemonConfig) -> KeyPair:
    """The daemon's keypair. A pairing without its key cannot open a single job (the
    gateway seals to the old public key), so that is a config error, not a new key."""
    if config.relay is not None and not paths.key_file.exists():
        raise ConfigError(f"the key file {paths.key_file} of this pairing is missing; "
                          "run `lattice-ctl relay connect --replace` to pair again")
    return load_or_create_keypair(paths)


def make_secrets_private(paths: Paths) -> None:
    """Make the config (it holds the daemon token) and key files 0600 again.

    A copy, a restore or an editor can leave them readable by other users; the daemon
    tightens them, and says so, rather than keep serving with a readable credential.
    """
    for path, private in ((paths.config_dir, 0o700), (paths.config_file, 0o600),
                          (paths.key_file, 0o600)):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot check the mode of {path}: {exc.strerror}") from None
        if not mode & 0o077:
            continue
        try:
            path.chmod(private)
        except OSError as exc:
            raise ConfigError(f"{path} has mode {mode:04o}, which lets other users read it, "
                              f"and cannot be made {private:04o}: {exc.strerror}") from None
        log.warning("%s had mode %04o, which let other users read it; made it %04o",
                    path, mode, private)


def load_startup(paths: Paths) -> tuple[DaemonConfig, KeyPair]:
    """Config and key for a start or a reload; ConfigError says what is wrong in one line."""
    make_secrets_private(paths)
    config = load_config(paths)
    validate(config)
    return config, load_keys(paths, config)
