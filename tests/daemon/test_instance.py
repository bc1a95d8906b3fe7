"""The daemon's instance id (lattice_daemon/instance.py): stable on one machine, 0600 in
the state dir, and a new one when the state dir was copied from another machine."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lattice_daemon import instance
from lattice_daemon.instance import load_or_create_instance_id


def test_the_id_is_kept_and_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "instance-id"
    first = load_or_create_instance_id(path)
    assert first.startswith("di_") and load_or_create_instance_id(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_state_dir_copied_from_another_machine_gets_a_new_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "instance-id"
    monkeypatch.setattr(instance, "_machine_tag", lambda: "machine-a")
    original = load_or_create_instance_id(path)
    monkeypatch.setattr(instance, "_machine_tag", lambda: "machine-b")
    moved = load_or_create_instance_id(path)
    assert moved != original
    assert json.loads(path.read_text()) == {"instanceId": moved, "machine": "machine-b"}


def test_an_unreadable_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "instance-id"
    path.write_text("not json")
    assert load_or_create_instance_id(path).startswith("di_")
