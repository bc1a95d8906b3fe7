"""The ``lattice-gateway`` script; ``python -m lattice_gateway`` is the same."""

from __future__ import annotations

from lattice_protocol._extras import exit_if_extra_missing


def main() -> None:
    with exit_if_extra_missing("lattice-gateway", "gateway"):
        from .cli import main as run_cli

        run_cli()


if __name__ == "__main__":
    main()
