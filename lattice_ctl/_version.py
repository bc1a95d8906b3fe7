"""The CLI's version, without importing ``lattice_protocol`` (its package init loads
PyNaCl and the message schemas: ~25 ms, a sixth of the `lattice-ctl ping` budget)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _read_version() -> str:
    loaded = sys.modules.get("lattice_protocol._version")
    if loaded is not None:
        return str(loaded.__version__)
    spec = importlib.util.find_spec("lattice_protocol")  # finds, does not import
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "_version.py"
        namespace: dict[str, object] = {}
        try:
            exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
            return str(namespace["__version__"])
        except (OSError, KeyError, SyntaxError):
            pass
    from lattice_protocol._version import __version__  # the slow, always-right way

    return __version__


__version__ = _read_version()
