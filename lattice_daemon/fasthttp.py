"""A small HTTP/1.1 transport for httpx on asyncio streams (provider and relay).

Why: under load the daemon spends most of its CPU in the provider call, and most of
that below httpx's client API, in httpcore's pool, anyio and h11 (benchmarks/README.md).
The provider is a plain-http server on this machine (Ollama, LM Studio), so this
transport does the little that is needed and nothing else: keep-alive connections per
host (least recently used first), ``Content-Length``, chunked and read-until-close
bodies, ``connect`` timeouts from the request. Deadlines stay where they are (asyncio
timeouts in the providers package). Closing a response before its end closes its
connection, so the provider sees the client go away and stops generating.

``https://`` needs an ``ssl_context`` (verification is the context's business; the
relay passes one with the CA bundle or SSL_CERT_FILE). Proxies are not supported: the
relay falls back to httpx's own transport whenever a proxy variable is set. Errors map
to the httpx exceptions the callers already handle (ConnectError, ConnectTimeout,
ReadError, RemoteProtocolError).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .timeouts import within

MAX_HEAD = 64 * 1024
READ_SIZE = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing()
                    # stray bytes: not reusable (asyncio has no public view of them)
                    or bool(self.reader._buffer))  # type: ignore[attr-defined]

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
        reader: Any = connection.reader
        if self._read_timeout is not None:
            reader = _TimedReader(connection.reader, self._read_timeout)
        try:
            if self._chunked:
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    try:
                        size = int(size_line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise httpx.RemoteProtocolError("invalid chunk size") from None
                    if size == 0:
                        # Trailers (rare) end with an empty line.
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":
                            pass
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
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


Key = tuple[str, str, int]  # scheme, host, port


class FastHTTPTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_idle_per_host: int = 32,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle: dict[Key, list[_Connection]] = {}
        self._max_idle = max_idle_per_host
        self._ssl = ssl_context
        self._closed = False

    def _release(self, key: Key, connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or len(idle) >= self._max_idle or not connection.usable:
            connection.close()
        else:
            idle.append(connection)

    async def _connect(self, request: httpx.Request, key: Key) -> _Connection:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.usable:
                return connection
            connection.close()
        timeout = _timeouts(request).get("connect")
        scheme, host, port = key
        tls = scheme == "https"
        try:
            reader, writer = await within(
                asyncio.open_connection(host, port, limit=MAX_HEAD, ssl=self._ssl if tls else None,
                                        server_hostname=host if tls else None), timeout)
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within "
                                       f"{timeout:g} s", request=request) from None
        except OSError as exc:  # includes ssl.SSLError (certificate problems)
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from None
        return _Connection(reader, writer)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme == "http":
            key: Key = ("http", url.host, url.port or 80)
        elif url.scheme == "https" and self._ssl is not None:
            key = ("https", url.host, url.port or 443)
        else:
            raise httpx.UnsupportedProtocol(
                f"{url.scheme}:// is not served by this transport", request=request)
        body = await request.aread()
        head = _request_head(request, len(body))
        timeouts = _timeouts(request)
        read_timeout = timeouts.get("read")
        connection = await self._connect(request, key)
        try:
            connection.writer.write(head + body if len(body) < 16384 else head)
            if len(body) >= 16384:
                connection.writer.write(body)
            await within(connection.writer.drain(), timeouts.get("write"))
            status, headers, reason = await within(_read_head(connection.reader),
                                                   read_timeout)
        except BaseException as exc:
            connection.close()
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
        keep_alive = values.get("connection", "").lower() != "close"
        if request.method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200:
            length: int | None = 0
            chunked = False
        elif "chunked" in values.get("transfer-encoding", "").lower():
            length, chunked = None, True
        elif "content-length" in values:
            try:
                length, chunked = int(values["content-length"]), False
            except ValueError:
                connection.close()
                raise httpx.RemoteProtocolError("invalid Content-Length",
                                                request=request) from None
        else:
            length, chunked = None, False
        stream = _Body(self, key, connection, length, chunked, keep_alive, read_timeout)
        return httpx.Response(status, headers=headers, stream=stream,
                              extensions={"http_version": b"HTTP/1.1",
                                          "reason_phrase": reason})

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
    """A StreamReader whose reads each fail with TimeoutError after ``timeout``."""

    __slots__ = ("_reader", "_timeout")

    def __init__(self, reader: asyncio.StreamReader, timeout: float) -> None:
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


async def _read_head(reader: asyncio.StreamReader
                     ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    while True:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise httpx.RemoteProtocolError("not an HTTP/1.x response")
        try:
            status = int(parts[1])
        except ValueError:
            raise httpx.RemoteProtocolError("invalid status line") from None
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise httpx.RemoteProtocolError("malformed response header")
            headers.append((name.strip(), value.strip()))
        if status == 100:  # 100 Continue: the real answer follows
            continue
        return status, headers, parts[2] if len(parts) > 2 else b""

