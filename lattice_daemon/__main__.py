"""Entry point: ``python -m lattice_daemon`` and the ``lattice-daemon`` script."""

from __future__ import annotations

import sys

from lattice_protocol._extras import exit_if_extra_missing

from .cli import main as _main


def main() -> None:
    with exit_if_extra_missing("lattice-daemon", "daemon"):
        sys.exit(_main())


if __name__ == "__main__":
    main()
