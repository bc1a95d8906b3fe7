"""`lattice-ctl`: a thin client of the daemon's local API, plus setup commands."""

import sys


def main() -> None:
    """The `lattice-ctl` program. A bare ``--version`` is answered before click loads
    (~40 ms of imports): scripts and installers run it to check what is installed, and
    its budget is 100 ms, process start included."""
    if sys.argv[1:] == ["--version"]:
        from lattice_protocol import __version__  # the package init loads nothing else

        print(f"lattice-ctl {__version__}")
        return
    from lattice_protocol._extras import exit_if_extra_missing

    with exit_if_extra_missing("lattice-ctl", "daemon"):
        from lattice_ctl.cli import main as run_cli

        run_cli()
