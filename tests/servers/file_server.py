"""A file server in the manner of the Hugging Face hub and its CDN, for `models pull`.

Serves ``files`` (``{"/path": bytes}``; in-process only, bytes do not travel over
``/__control``). A path with ``/resolve/`` answers as the hub does: a 302 to
``/cdn/<sha256>`` carrying the file's sha256 in ``X-Linked-Etag`` and ``ETag``
(``hub_sha256`` overrides it: a hub whose file changed, or a corrupted mirror). Any
other path is served directly, without a checksum. Downloads honour ``Range: bytes=N-``
(206, or 416 past the end); ``cut_after``: the next body is cut after that many bytes
(once), as a dropped connection would.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from typing import Any

from tests.servers import _core
from tests.servers._core import Request, Response, ServerState

DEFAULTS: dict[str, Any] = {"files": {}, "hub_sha256": None, "cut_after": None}

_RANGE = re.compile(r"bytes=(\d+)-$")


async def handle(request: Request, response: Response, state: ServerState) -> None:
    b = state.behaviour
    if request.method not in ("GET", "HEAD"):
        return response.send_json(405, {"error": "method not allowed"})
    by_digest = {hashlib.sha256(data).hexdigest(): data for data in b["files"].values()}
    if request.path.startswith("/cdn/") and request.path[5:] in by_digest:
        return _serve(request, response, state, by_digest[request.path[5:]])
    data = b["files"].get(request.path)
    if data is None:
        return response.send_json(404, {"error": "Entry not found"})
    if "/resolve/" in request.path:
        digest = hashlib.sha256(data).hexdigest()
        claimed = b["hub_sha256"] or digest
        return response.send(302, b"", "text/plain", headers={
            "location": f"/cdn/{digest}", "x-linked-etag": f'"{claimed}"',
            "etag": f'"{claimed}"', "x-linked-size": str(len(data))})
    return _serve(request, response, state, data)


def _serve(request: Request, response: Response, state: ServerState, data: bytes) -> None:
    headers = {"accept-ranges": "bytes"}
    status = 200
    asked = _RANGE.match(request.headers.get("range", ""))
    if asked:
        start = int(asked.group(1))
        if start >= len(data):
            return response.send(416, b"", "application/octet-stream",
                                 headers={"content-range": f"bytes */{len(data)}"})
        headers["content-range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        data = data[start:]
        status = 206
    cut, state.behaviour["cut_after"] = state.behaviour["cut_after"], None
    response.send(status, data, "application/octet-stream", headers=headers, cut_after=cut)


@contextlib.contextmanager
def run_file_server(**behaviour: Any) -> Iterator[_core.ServerHandle]:
    """The file server on a free port in a background thread."""
    with _core.run_in_thread(handle, DEFAULTS, behaviour) as server:
        yield server
