"""Server-sent events of an OpenAI chat stream, parsed into chunk dicts.

Comment lines (``: keep-alive``) are ignored, ``data: [DONE]`` ends the stream, and an
event whose JSON carries ``error`` raises the typed exception for its code. A body that
ends without ``[DONE]`` was cut short (a proxy or load balancer closed it), so it raises
instead of passing a partial answer off as a whole one.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from ._errors import LatticeAPIError, error_from_body

DONE = "[DONE]"


class SSEDecoder:
    """Incremental decoder: feed it lines, it returns the data of each complete event."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith(":"):
            return None  # comment: the gateway's keep-alive
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        # "event", "id" and "retry" carry nothing a chat stream needs.
        return None


class StreamProtocolError(LatticeAPIError):
    """The stream carried something that is not an OpenAI chunk."""


def decode_event(data: str) -> dict[str, Any] | None:
    """The chunk for one event's data; ``None`` for ``[DONE]``; raises on an error event."""
    if data.strip() == DONE:
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        raise StreamProtocolError(
            f"the stream sent an event that is not JSON: {data[:120]!r}", code="invalid_stream",
            status=200,
        ) from None
    if not isinstance(payload, dict):
        raise StreamProtocolError("the stream sent an event that is not a JSON object",
                                  code="invalid_stream", status=200)
    if "error" in payload:
        # The HTTP status was already 200; the code's own status is the meaningful one.
        raise error_from_body(payload, None)
    return payload


def cut_short() -> StreamProtocolError:
    return StreamProtocolError(
        "the stream ended before data: [DONE]; the answer may be incomplete",
        code="incomplete_stream", status=200,
    )


def iter_chunks(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    # The final "" ends an event whose stream closed without a blank line after it.
    decoder = SSEDecoder()
    for line in itertools.chain(lines, ("",)):
        data = decoder.feed(line)
        if data is None:
            continue
        chunk = decode_event(data)
        if chunk is None:
            return
        yield chunk
    raise cut_short()


async def aiter_chunks(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    async def then_end() -> AsyncIterator[str]:
        async for line in lines:
            yield line
        yield ""  # as in iter_chunks

    decoder = SSEDecoder()
    async for line in then_end():
        data = decoder.feed(line)
        if data is None:
            continue
        chunk = decode_event(data)
        if chunk is None:
            return
        yield chunk
    raise cut_short()
