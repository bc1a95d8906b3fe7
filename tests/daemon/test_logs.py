"""The daemon's log file: private from its first byte, rotated, private after rotation."""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lattice_daemon.logs import LOGGER_NAME, setup_logging


@pytest.fixture
def restore_logger() -> Iterator[None]:
    logger = logging.getLogger(LOGGER_NAME)
    level, propagate = logger.level, logger.propagate
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level)
    logger.propagate = propagate  # other tests read these logs through caplog


def test_log_files_are_0600_and_rotate(tmp_path: Path, restore_logger: None) -> None:
    log_file = tmp_path / "logs" / "daemon.log"
    setup_logging(log_file, to_stderr=False, max_bytes=2000)
    logger = logging.getLogger(LOGGER_NAME + ".test")
    for index in range(100):
        logger.info("line %d %s", index, "x" * 40)
    rotated = sorted(log_file.parent.glob("daemon.log*"))
    assert [p.name for p in rotated] == ["daemon.log", "daemon.log.1", "daemon.log.2",
                                         "daemon.log.3"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in rotated)
    assert stat.S_IMODE(log_file.parent.stat().st_mode) == 0o700
    assert "line 99" in log_file.read_text()
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING


def test_an_existing_log_file_is_made_private(tmp_path: Path, restore_logger: None) -> None:
    log_file = tmp_path / "daemon.log"
    log_file.write_text("old\n")
    log_file.chmod(0o644)
    setup_logging(log_file, to_stderr=False)
    logging.getLogger(LOGGER_NAME).info("hello")
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
