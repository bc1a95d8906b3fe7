"""JSON with orjson when it is installed (the gateway extra has it), stdlib otherwise."""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    def loads(data: bytes | str) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:  # a ValueError subclass; keep one contract
            raise ValueError(str(exc)) from None

except ImportError:  # pragma: no cover - daemon installs without the gateway extra

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(data: bytes | str) -> Any:
        return json.loads(data)


def dumps_str(value: Any) -> str:
    """Compact JSON text (tool-call ``arguments`` are JSON strings in OpenAI shapes)."""
    return dumps(value).decode()
