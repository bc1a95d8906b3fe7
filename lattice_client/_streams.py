"""A chat stream: an iterable of OpenAI ``chat.completion.chunk`` dicts that owns its response."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import TracebackType

import httpx

from ._sse import aiter_chunks, iter_chunks
from ._types import ChatCompletionChunk


class ChatStream:
    """Iterate for chunks; leaving the loop early or ``close()`` ends the request."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = iter_chunks(response.iter_lines())

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        try:
            yield from self._chunks
        finally:
            self.close()

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncChatStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = aiter_chunks(response.aiter_lines())

    async def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        try:
            async for chunk in self._chunks:
                yield chunk
        finally:
            await self.close()

    async def close(self) -> None:
        await self.response.aclose()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
