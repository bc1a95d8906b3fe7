"""The daemon's configuration (``daemon.toml``) and keypair, with safe file handling.

Both files hold secrets (the daemon token, the private key): they are written
atomically (temp file + rename) with mode 0600 inside a 0700 directory, and their
contents never appear in logs or error messages.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lattice_protocol import KeyPair, SealError

from .paths import Paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


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

    def adapter_options(self) -> dict[str, str]:
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
class DaemonConfig:
    relay: RelayConfig | None = None
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    assistant: AssistantConfig = field(default_factory=AssistantConfig)

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
    return config


def _drop_none(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None}  # TOML has no null


def save_config(paths: Paths, config: DaemonConfig) -> None:
    import tomli_w  # only `lattice-ctl` writes the config; the daemon never imports this

    data: dict[str, Any] = {
        "provider": _drop_none(asdict(config.provider)),
        "daemon": asdict(config.daemon),
    }
    if config.assistant != AssistantConfig():
        data["assistant"] = _drop_none(asdict(config.assistant))
    if config.relay is not None:
        data["relay"] = asdict(config.relay)
    write_private_file(paths.config_file, tomli_w.dumps(data).encode("utf-8"))


def load_or_create_keypair(paths: Paths) -> KeyPair:
    """The daemon's Curve25519 keypair, generated locally on first use."""
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
