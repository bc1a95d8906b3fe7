"""The daemon this gateway hands out: its installer, and a wheel of its own version.

``curl -fsSL <gateway>/install.sh | sh`` installs the daemon from the gateway itself, so a
self-hosted gateway needs no package index holding ``lattice-runtimes`` (pip still takes
the daemon's dependencies from the package index). The wheel is built from the files of
the installed package (a regular or an editable install alike), once per process.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import io
import shlex
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

DISTRIBUTION = "lattice-runtimes"
# The line of install.sh the served copy fills in with its wheel's URL.
_SERVED_PACKAGE_LINE = 'SERVED_PACKAGE=""'
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same files give the same wheel


@dataclass(frozen=True)
class Wheel:
    filename: str
    data: bytes


@lru_cache(maxsize=1)
def wheel_filename() -> str:
    version = importlib.metadata.version(DISTRIBUTION)
    return f"{DISTRIBUTION.replace('-', '_')}-{version}-py3-none-any.whl"


def installer_script(public_url: str) -> str:
    """install.sh whose default package is this gateway's wheel at ``public_url``."""
    text = resources.files("lattice_gateway").joinpath("install.sh").read_text()
    if text.count(_SERVED_PACKAGE_LINE) != 1:
        raise RuntimeError(f"install.sh has no single {_SERVED_PACKAGE_LINE} line")
    wheel_url = f"{public_url.rstrip('/')}/install/{wheel_filename()}"
    return text.replace(_SERVED_PACKAGE_LINE, f"SERVED_PACKAGE={shlex.quote(wheel_url)}")


@lru_cache(maxsize=1)
def build_wheel() -> Wheel:
    """A pure-Python wheel of the installed ``lattice-runtimes`` (packages, metadata,
    entry points), as pip would have installed it."""
    dist = importlib.metadata.distribution(DISTRIBUTION)
    filename = wheel_filename()
    dist_info = f"{filename.split('-py3-')[0]}.dist-info"
    entries: list[tuple[str, bytes]] = []
    for package in (dist.read_text("top_level.txt") or "").split():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"the installed {DISTRIBUTION} has no package {package}")
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                entries.append((f"{package}/{path.relative_to(root).as_posix()}",
                                path.read_bytes()))
    # An editable install run from its checkout may be found as the checkout's egg-info,
    # whose METADATA is called PKG-INFO.
    metadata = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
    if metadata is None:
        raise RuntimeError(f"the installed {DISTRIBUTION} has no metadata")
    entries.append((f"{dist_info}/METADATA", metadata.encode()))
    for name in ("entry_points.txt", "top_level.txt"):
        text = dist.read_text(name)
        if text is not None:
            entries.append((f"{dist_info}/{name}", text.encode()))
    entries.append((f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: lattice-gateway\n"
                                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    record = "".join(f"{name},sha256={_digest(data)},{len(data)}\n" for name, data in entries)
    entries.append((f"{dist_info}/RECORD", f"{record}{dist_info}/RECORD,,\n".encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in entries:
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
    return Wheel(filename, buffer.getvalue())


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
