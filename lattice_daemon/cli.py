"""`lattice-daemon` command line: ``run`` (the default) and ``--version``.

argparse rather than click: the daemon is a long-lived process whose idle memory is
budgeted (benchmarks/README.md), and it has almost no command line. Secrets never come in through
argv: the daemon token is only read from the 0600 config file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lattice_protocol import __version__

from . import exitcodes

LOG_LEVELS = ["debug", "info", "warning", "error"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lattice-daemon",
        description="Serve this machine's Lattice personal runtime (outbound only). "
                    "Usually started by `lattice-ctl daemon start` or the installed service.")
    parser.add_argument("--version", action="version", version=f"lattice-daemon {__version__}")
    parser.add_argument("command", nargs="?", default="run", choices=["run"],
                        help="run the daemon in the foreground (the default)")
    parser.add_argument("--foreground", action="store_true",
                        help="accepted for clarity; the daemon always runs in the foreground")
    parser.add_argument("--home", metavar="DIR",
                        help="keep config, key, socket and logs under DIR (like LATTICE_HOME)")
    parser.add_argument("--socket", metavar="PATH",
                        help="serve the control API on PATH (like LATTICE_SOCKET)")
    parser.add_argument("--log-level", type=str.lower,
                        default=os.environ.get("LATTICE_LOG_LEVEL", "info"),
                        choices=LOG_LEVELS, help="also LATTICE_LOG_LEVEL (default info)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 0 for --version/--help, 2 on bad usage
        return int(exc.code or 0) if exc.code in (0, None) else exitcodes.USAGE
    if args.log_level not in LOG_LEVELS:  # argparse does not check a default's choices
        print(f"lattice-daemon: LATTICE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
              f"not {args.log_level!r}", file=sys.stderr)
        return exitcodes.USAGE
    if args.home:
        os.environ["LATTICE_HOME"] = os.path.abspath(args.home)
    if args.socket:
        os.environ["LATTICE_SOCKET"] = os.path.abspath(args.socket)

    # httpx imports its optional command-line tool (rich, pygments, click: ~8 MB of a
    # 30 MB idle budget) whenever those happen to be installed; the daemon never uses
    # it. A None entry in sys.modules makes that optional import fail cleanly.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from .daemon import run_daemon  # heavy imports only when actually running
    from .logs import setup_logging
    from .paths import get_paths

    paths = get_paths()
    try:
        setup_logging(paths.log_file, level=getattr(logging, args.log_level.upper()))
    except OSError as exc:
        print(f"lattice-daemon: cannot open the log file {paths.log_file}: {exc.strerror}",
              file=sys.stderr)
        return exitcodes.CONFIG
    return run_daemon(paths)
