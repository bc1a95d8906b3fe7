"""Which optional dependencies a program needs, said in one line when they are missing.

One distribution ships every package: a plain ``pip install lattice-runtimes`` brings the
SDK's dependencies only; the daemon and `lattice-ctl` need the ``daemon`` extra, the
gateway the ``gateway`` extra. Lives beside ``_version`` as the distribution's own
metadata; nothing of the wire contract uses it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

_OUR_PACKAGES = ("lattice_", "providers")


@contextmanager
def exit_if_extra_missing(program: str, extra: str) -> Iterator[None]:
    """Run a program's body; a third-party module that is not installed ends it with one
    line naming the extra to install (instead of a traceback)."""
    try:
        yield
    except ModuleNotFoundError as missing:
        if missing.name is None or missing.name.startswith(_OUR_PACKAGES):
            raise  # our own code is broken: the traceback is the useful answer
        sys.exit(f"{program}: the module {missing.name!r} is not installed; install the "
                 f"{extra} extra: pip install 'lattice-runtimes[{extra}]'")
