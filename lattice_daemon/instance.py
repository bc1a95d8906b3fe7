"""This machine's daemon instance id, sent at session register (docs/protocol.md §2).

A pairing is ``daemon.toml`` plus ``daemon.key``; copied to a second machine, both
daemons would serve the runtime and split its jobs without anyone noticing. The
gateway notices two instance ids with live sessions on one runtime and says so to both
daemons (``lattice-ctl status``). So the id must not travel with the pairing: it lives
in the state dir (not the config dir), and it is tied to the OS's machine id where
there is one, so a copied state dir (macOS keeps config and data in one directory)
gets a new id on the other machine.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

from .config import write_private_file

_MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def _machine_tag() -> str:
    """A digest of the OS's machine id ("" where there is none): never the id itself."""
    for path in _MACHINE_ID_FILES:
        try:
            machine_id = path.read_text().strip()
        except OSError:
            continue
        if machine_id:
            return hashlib.sha256(b"lattice-instance:" + machine_id.encode()).hexdigest()[:16]
    return ""


def load_or_create_instance_id(path: Path) -> str:
    """The instance id stored at ``path`` for this machine, made (0600) when there is
    none or it was made on another machine."""
    machine = _machine_tag()
    try:
        stored = json.loads(path.read_text())
        if (isinstance(stored, dict) and stored.get("machine") == machine
                and isinstance(stored.get("instanceId"), str) and stored["instanceId"]):
            return str(stored["instanceId"])
    except (OSError, ValueError):
        pass
    instance_id = "di_" + secrets.token_hex(12)
    write_private_file(path, json.dumps({"instanceId": instance_id,
                                         "machine": machine}).encode())
    return instance_id
