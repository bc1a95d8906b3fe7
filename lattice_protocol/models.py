"""The model string ``lattice:personal:<latticeId>[/<local model>]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "lattice:personal:"
_LATTICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_LOCAL_MODEL = 256


@dataclass(frozen=True)
class ModelRef:
    lattice_id: str
    local_model: str | None = None  # None: the runtime's default model


def parse_model_string(value: object) -> ModelRef:
    """Parse a model string, raising ValueError with a message that says what is wrong."""
    if not isinstance(value, str):
        raise ValueError("model must be a string")
    if not value.startswith(PREFIX):
        raise ValueError(
            f"unknown model {value[:80]!r}: expected 'lattice:personal:<latticeId>' "
            "or 'lattice:personal:<latticeId>/<local model>'"
        )
    rest = value[len(PREFIX) :]
    lattice_id, sep, local_model = rest.partition("/")
    if not _LATTICE_ID.match(lattice_id):
        raise ValueError(f"invalid latticeId in model string {value[:80]!r}")
    if not sep:
        return ModelRef(lattice_id)
    if not local_model or len(local_model) > _MAX_LOCAL_MODEL:
        raise ValueError("the local model after '/' must be 1 to 256 characters")
    if any(c.isspace() or ord(c) < 32 for c in local_model):
        raise ValueError("the local model name must not contain whitespace or control characters")
    return ModelRef(lattice_id, local_model)


def format_model_string(lattice_id: str, local_model: str | None = None) -> str:
    base = PREFIX + lattice_id
    return f"{base}/{local_model}" if local_model else base
