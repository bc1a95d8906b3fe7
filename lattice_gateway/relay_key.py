"""The gateway's relay keypair (the Curve25519 key every job is sealed with): a 0600 file,
never a database row.

A database dump plus the relay queue must not open sealed jobs, so the private key
lives in a key file: ``LATTICE_GATEWAY_KEY_FILE`` / ``--key-file`` (a mounted secret all
replicas share), by default ``relay.key`` beside the SQLite database, or in the
gateway's data dir for PostgreSQL. The database keeps only the public key
(``gateway_meta.gateway_public_key``): a replica whose key file holds another key, or
none while the database names one, refuses to start and says which file to fix.

``lattice-gateway keys rotate-relay-key`` (docs/operations.md) writes a new key and
un-pairs every paired runtime: a daemon holds the gateway's public key from its pairing
and cannot open jobs sealed to another, so its daemon token stops working and it says
"re-pair required".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lattice_protocol import KeyPair, SealError

if TYPE_CHECKING:
    from .store.url import DatabaseTarget

KEY_FILE_NAME = "relay.key"


class GatewayKeyError(ValueError):
    """The key file is unusable or does not match the database: the gateway must not start."""


def fingerprint(public_text: str) -> str:
    """A short, printable name for a public key (logs, messages): never the key itself."""
    return "sha256:" + hashlib.sha256(public_text.encode()).hexdigest()[:16]


def resolve_key_file(setting: str | None, target: DatabaseTarget) -> Path:
    if setting:
        return Path(setting).expanduser().absolute()
    if target.sqlite_path is not None:
        return target.sqlite_path.parent / KEY_FILE_NAME
    from .store.url import gateway_data_dir  # here: the store imports this module

    return gateway_data_dir() / KEY_FILE_NAME


def read_key_file(path: Path) -> KeyPair | None:
    """The keypair in ``path``, or None when there is no such file."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise GatewayKeyError(f"cannot read the gateway key file {path}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        keys = KeyPair.from_private_text(text)
    except (SealError, ValueError):
        raise GatewayKeyError(f"the gateway key file {path} does not hold a gateway key "
                              "(32-byte Curve25519 private key, base64)") from None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        with contextlib.suppress(OSError):  # a mounted secret may be read-only: fine
            os.chmod(path, 0o600)
    return keys


def create_key_file(path: Path, keys: KeyPair, *, replace: bool = False) -> KeyPair:
    """Write ``keys`` to ``path`` (0600; a directory made here is 0700), durably.

    Without ``replace`` the file is created only if absent (a link, atomic even between
    replicas starting at once); when another process won, its key is returned.
    """
    directory = path.parent
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write((keys.private_text() + "\n").encode("ascii"))
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                existing = read_key_file(path)
                if existing is None:  # removed in between: not worth a loop
                    raise GatewayKeyError(f"the gateway key file {path} vanished") from None
                return existing
    except OSError as exc:
        raise GatewayKeyError(f"cannot write the gateway key file {path}: "
                              f"{exc.strerror or exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the new name must survive a crash too
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return keys


def mismatch(path: Path, keys: KeyPair | None, recorded: str) -> GatewayKeyError:
    held = "no key file" if keys is None else f"key {fingerprint(keys.public_text())}"
    return GatewayKeyError(
        f"this gateway's key does not match its database: the database was set up with "
        f"relay key {fingerprint(recorded)}, and {path} holds {held}. Every replica must "
        f"use the same key file: copy it from a replica that serves this database, or "
        f"point LATTICE_GATEWAY_KEY_FILE (--key-file) at it. A new key would leave every "
        f"paired daemon unable to open its jobs (see `lattice-gateway keys "
        f"rotate-relay-key` to change it on purpose).")
