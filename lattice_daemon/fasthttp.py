"""A small HTTP/1.1 client transport for httpx on asyncio streams: the local provider.

Why: under load the daemon spends most of its CPU in the provider call, and most of
that below httpx's client API, in httpcore's pool, anyio and h11 (benchmarks/README.md).
The provider is a plain-http server on this machine (Ollama, LM Studio), so this
transport does the little that is needed and nothing else: keep-alive connections per
host (most recently used first), ``Content-Length``, chunked and read-until-close
bodies, HTTP/1.0 and 1.1 keep-alive rules, interim (1xx) answers skipped, ``connect``
timeouts from the request. Deadlines stay where they are (asyncio timeouts in the
providers package). Closing a response before its end closes its connection, so the
provider sees the client go away and stops generating.

A pooled connection the server closed while it sat idle (an idle timeout, a restart)
is not reused; and when a reused connection dies before the first byte of its answer
(the close crossed the request on the wire), the request is sent once more on a new
connection. Never after a byte of the answer arrived: that request was being served.

The relay (Internet traffic) does not use this: it goes through httpx's own transport.
Errors map to the httpx exceptions the callers already handle (ConnectError,
ConnectTimeout, ReadError, ReadTimeout, RemoteProtocolError).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx

from providers.timeouts import within

MAX_HEAD = 64 * 1024
READ_SIZE = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,19}")


class _Reader(asyncio.StreamReader):
    """A StreamReader that counts the bytes that arrived and the bytes read: a connection
    is reusable only when nothing came beyond the last answer and no EOF was seen."""

    received = 0
    taken = 0

    # typeshed widens these parameters (any buffer, a tuple of separators on 3.13); asyncio
    # feeds bytes, and this module passes one bytes separator.
    def feed_data(self, data: bytes) -> None:  # type: ignore[override]
        self.received += len(data)
        super().feed_data(data)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]
        data = await super().readuntil(separator)
        self.taken += len(data)
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await super().readexactly(n)
        self.taken += len(data)
        return data

    async def read(self, n: int = -1) -> bytes:
        data = await super().read(n)
        self.taken += len(data)
        return data


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: _Reader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def usable(self) -> bool:
        """Idle and clean: no EOF (the server closed it), no stray bytes, not closing."""
        reader = self.reader
        return (reader.received == reader.taken and not reader.at_eof()
                and not self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class _Body(httpx.AsyncByteStream):
    """One response body; gives the connection back to the pool when fully read."""

    def __init__(self, transport: FastHTTPTransport, key: Key,
                 connection: _Connection, length: int | None, chunked: bool,
                 keep_alive: bool, read_timeout: float | None) -> None:
        self._read_timeout = read_timeout
        self._transport = transport
        self._key = key
        self._connection: _Connection | None = connection
        self._length = length
        self._chunked = chunked
        self._keep_alive = keep_alive

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        reader: _Reader | _TimedReader = connection.reader
        if self._read_timeout is not None:
            reader = _TimedReader(connection.reader, self._read_timeout)
        try:
            if self._chunked:
                async for data in _chunks(reader):
                    yield data
            elif self._length is not None:
                remaining = self._length
                while remaining:
                    data = await reader.read(min(remaining, READ_SIZE))
                    if not data:
                        raise httpx.RemoteProtocolError("connection closed mid-body")
                    remaining -= len(data)
                    yield data
            else:
                self._keep_alive = False
                while data := await reader.read(READ_SIZE):
                    yield data
        except asyncio.TimeoutError:
            self._abort()
            raise httpx.ReadTimeout(f"no data for {self._read_timeout:g} s") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self._abort()
            raise httpx.RemoteProtocolError(f"malformed or truncated response: {exc}"
                                            ) from None
        except OSError as exc:
            self._abort()
            raise httpx.ReadError(str(exc) or type(exc).__name__) from None
        except BaseException:
            self._abort()
            raise
        self._connection = None
        if self._keep_alive:
            self._transport._release(self._key, connection)
        else:
            connection.close()

    def _abort(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def aclose(self) -> None:
        self._abort()  # not read to the end: the connection cannot be reused


async def _chunks(reader: _Reader | _TimedReader) -> AsyncIterator[bytes]:
    """The data of a chunked body (RFC 9112 section 7.1); trailers are read and dropped."""
    while True:
        size_line = (await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_line):
            raise httpx.RemoteProtocolError("invalid chunk size")
        size = int(size_line, 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return
        data = await reader.readexactly(size + 2)
        if data[-2:] != b"\r\n":
            raise httpx.RemoteProtocolError("chunk data not followed by CRLF")
        yield data[:-2]


Key = tuple[str, int]  # host, port


class _DiedBeforeAnswer(Exception):
    """A reused connection ended before the first byte of its answer."""


class FastHTTPTransport(httpx.AsyncBaseTransport):
    """Plain-http keep-alive transport (the module docstring says what it handles)."""

    def __init__(self, max_idle_per_host: int = 32) -> None:
        self._idle: dict[Key, list[_Connection]] = {}
        self._max_idle = max_idle_per_host
        self._closed = False

    def _release(self, key: Key, connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or len(idle) >= self._max_idle or not connection.usable:
            connection.close()
        else:
            idle.append(connection)

    def _pooled(self, key: Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.usable:
                return connection
            connection.close()
        return None

    async def _connect(self, request: httpx.Request, key: Key) -> _Connection:
        timeout = _timeouts(request).get("connect")
        host, port = key
        loop = asyncio.get_running_loop()
        reader = _Reader(limit=MAX_HEAD, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await within(
                loop.create_connection(lambda: protocol, host, port), timeout)
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within "
                                       f"{timeout:g} s", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from None
        return _Connection(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"{url.scheme}:// is not served by this transport", request=request)
        key: Key = (url.host, url.port or 80)
        body = await request.aread()
        head = _request_head(request, len(body))
        read_timeout = _timeouts(request).get("read")
        connection = self._pooled(key)
        if connection is not None:
            try:
                return await self._exchange(request, key, connection, head, body,
                                            read_timeout, reused=True)
            except _DiedBeforeAnswer:
                pass  # the server closed it as the request went out: once more, anew
        connection = await self._connect(request, key)
        return await self._exchange(request, key, connection, head, body, read_timeout,
                                    reused=False)

    async def _exchange(self, request: httpx.Request, key: Key, connection: _Connection,
                        head: bytes, body: bytes, read_timeout: float | None, *,
                        reused: bool) -> httpx.Response:
        answer_starts_at = connection.reader.taken
        try:
            connection.writer.write(head + body if len(body) < 16384 else head)
            if len(body) >= 16384:
                connection.writer.write(body)
            await within(connection.writer.drain(), _timeouts(request).get("write"))
            version, status, headers, reason = await within(_read_head(connection.reader),
                                                            read_timeout)
        except BaseException as exc:
            connection.close()
            nothing_came = connection.reader.received == answer_starts_at
            if reused and nothing_came and isinstance(
                    exc, OSError | asyncio.IncompleteReadError):
                raise _DiedBeforeAnswer from None
            if isinstance(exc, asyncio.TimeoutError):
                raise httpx.ReadTimeout("no response within the read timeout",
                                        request=request) from None
            if isinstance(exc, OSError):
                raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from None
            if isinstance(exc, asyncio.IncompleteReadError | asyncio.LimitOverrunError):
                raise httpx.RemoteProtocolError("server closed the connection without a "
                                                "complete response", request=request) from None
            raise
        values = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
        connection_tokens = {token.strip().lower()
                             for token in values.get("connection", "").split(",")}
        keep_alive = ("keep-alive" in connection_tokens if version == b"HTTP/1.0"
                      else "close" not in connection_tokens)
        if request.method == "HEAD" or status in _NO_BODY_STATUS:
            length: int | None = 0
            chunked = False
        elif "chunked" in values.get("transfer-encoding", "").lower():
            length, chunked = None, True
        elif "content-length" in values:
            if not _DIGITS.fullmatch(values["content-length"].strip()):
                connection.close()
                raise httpx.RemoteProtocolError("invalid Content-Length", request=request)
            length, chunked = int(values["content-length"]), False
        else:
            length, chunked = None, False
        stream = _Body(self, key, connection, length, chunked, keep_alive, read_timeout)
        return httpx.Response(status, headers=headers, stream=stream,
                              extensions={"http_version": version, "reason_phrase": reason})

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    value = request.extensions.get("timeout")
    return value if isinstance(value, dict) else {}


class _TimedReader:
    """A reader whose reads each fail with TimeoutError after ``timeout``."""

    __slots__ = ("_reader", "_timeout")

    def __init__(self, reader: _Reader, timeout: float) -> None:
        self._reader = reader
        self._timeout = timeout

    async def readuntil(self, separator: bytes) -> bytes:
        return await within(self._reader.readuntil(separator), self._timeout)

    async def readexactly(self, n: int) -> bytes:
        return await within(self._reader.readexactly(n), self._timeout)

    async def read(self, n: int) -> bytes:
        return await within(self._reader.read(n), self._timeout)


def _request_head(request: httpx.Request, body_length: int) -> bytes:
    target = request.url.raw_path or b"/"
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    has_length = False
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            continue  # the body was read whole: it is sent with a length
        if lowered == b"content-length":
            has_length = True
            value = str(body_length).encode("ascii")
        lines.append(name + b": " + value)
    if not has_length and (body_length or request.method in ("POST", "PUT", "PATCH")):
        lines.append(b"Content-Length: " + str(body_length).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _read_head(reader: _Reader
                     ) -> tuple[bytes, int, list[tuple[bytes, bytes]], bytes]:
    """(version, status, headers, reason) of the final answer: interim 1xx answers (100
    Continue, 103 Early Hints, ...) are read and skipped; 101 was never asked for."""
    while True:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise httpx.RemoteProtocolError("not an HTTP/1.x response")
        if not _DIGITS.fullmatch(parts[1].decode("latin-1")) or len(parts[1]) != 3:
            raise httpx.RemoteProtocolError("invalid status line")
        status = int(parts[1])
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise httpx.RemoteProtocolError("malformed response header")
            headers.append((name.strip(), value.strip()))
        if status == 101:
            raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols")
        if 100 <= status < 200:
            continue
        return parts[0], status, headers, parts[2] if len(parts) > 2 else b""
