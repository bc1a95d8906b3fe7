"""Logging: a rotated 0600 file, plus stderr when a person is watching.

What never reaches a log: the daemon token, the private key, prompt or completion text
(unless ``log_prompts`` is on). The relay client logs URLs and statuses, not headers;
httpx's own request logging is silenced because it adds nothing we do not log better.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from io import TextIOWrapper
from pathlib import Path

from .config import ensure_private_dir

LOGGER_NAME = "lattice_daemon"
_FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
_DATEFMT = "%Y-%m-%dT%H:%M:%S"
MAX_BYTES = 5 * 1024 * 1024
BACKUPS = 3


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Creates every log file (first and rotated) with mode 0600."""

    def _open(self) -> TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        return os.fdopen(fd, "a", encoding=self.encoding)


def setup_logging(log_file: Path | None, *, level: int = logging.INFO,
                  to_stderr: bool | None = None, max_bytes: int = MAX_BYTES) -> None:
    formatter = logging.Formatter(_FORMAT, _DATEFMT)
    formatter.converter = time.gmtime
    root = logging.getLogger(LOGGER_NAME)
    root.setLevel(level)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if log_file is not None:
        ensure_private_dir(log_file.parent)
        file_handler = _PrivateRotatingFileHandler(log_file, maxBytes=max_bytes,
                                                   backupCount=BACKUPS, encoding="utf-8")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    if to_stderr is None:
        to_stderr = sys.stderr.isatty()
    if to_stderr or log_file is None:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        root.addHandler(stream)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
