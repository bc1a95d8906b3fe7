"""A chat stream: an iterable of OpenAI ``chat.completion.chunk`` dicts that owns its response."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx

from ._closing import AsyncClosing, Closing
from ._http import connection_error
from ._sse import aiter_chunks, iter_chunks
from ._types import ChatCompletionChunk


class ChatStream(Closing):
    """Iterate for chunks; leaving the loop early or ``close()`` ends the request.

    A connection that breaks or times out mid-stream raises ``LatticeConnectionError`` /
    ``LatticeTimeoutError`` like any other call, never a bare httpx exception.
    """

    def __init__(self, response: httpx.Response, base_url: str) -> None:
        self.response = response
        self._base_url = base_url
        self._chunks = iter_chunks(response.iter_lines())

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        try:
            yield from self._chunks
        except httpx.HTTPError as exc:
            raise connection_error(exc, self._base_url, mid_stream=True) from exc
        finally:
            self.close()

    def close(self) -> None:
        self.response.close()


class AsyncChatStream(AsyncClosing):
    """``ChatStream`` for ``async for``."""

    def __init__(self, response: httpx.Response, base_url: str) -> None:
        self.response = response
        self._base_url = base_url
        self._chunks = aiter_chunks(response.aiter_lines())

    async def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        try:
            async for chunk in self._chunks:
                yield chunk
        except httpx.HTTPError as exc:
            raise connection_error(exc, self._base_url, mid_stream=True) from exc
        finally:
            await self.close()

    async def close(self) -> None:
        await self.response.aclose()
