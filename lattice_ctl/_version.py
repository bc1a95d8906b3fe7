"""The CLI's version, without importing ``lattice_protocol`` (its package init loads
PyNaCl and the message schemas: ~25 ms, a sixth of the `lattice-ctl ping` budget)."""

from __future__ import annotations

import os
import sys


def _read_version() -> str:
    loaded = sys.modules.get("lattice_protocol._version")
    if loaded is not None:
        return str(loaded.__version__)
    # Both packages ship in one distribution, side by side (also in an editable install).
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "lattice_protocol", "_version.py")
    namespace: dict[str, object] = {}
    try:
        with open(path, encoding="utf-8") as source:
            exec(compile(source.read(), path, "exec"), namespace)
        return str(namespace["__version__"])
    except (OSError, KeyError, SyntaxError):
        from lattice_protocol._version import __version__  # the slow, always-right way

        return __version__


__version__ = _read_version()
