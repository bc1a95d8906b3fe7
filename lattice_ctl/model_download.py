"""Downloading a GGUF model into the Lattice models directory: resumable, verified, atomic.

The bytes go to ``<name>.part`` next to the final file; an interrupted transfer leaves
the part, and the next attempt asks the server for the rest (HTTP ``Range``). Only a
complete file whose sha256 matches (when one is known) and that starts with the GGUF
magic is renamed to ``<name>``; a mismatch deletes the part, so nothing half-written is
ever left under a model's name.

Where the checksum comes from: ``--sha256``; for ``hf:`` sources the sha256 the hub
sends as ``X-Linked-Etag`` (or ``ETag``) for LFS files; a URL naming its digest
(Ollama's ``.../blobs/sha256:<hex>``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from providers.gguf_catalog import GGUF_MAGIC

HF_ENDPOINT_VARIABLES = ("LATTICE_HF_ENDPOINT", "HF_ENDPOINT")
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIGEST_IN_URL = re.compile(r"sha256[:-]([0-9a-f]{64})")

# (label, total bytes or None, bytes already there) -> a context giving advance(count)
ProgressFn = Callable[[str, int | None, int], AbstractContextManager[Callable[[int], None]]]


class DownloadError(Exception):
    """The download failed; the message says why and what to do."""


@dataclass(frozen=True)
class Source:
    url: str
    filename: str
    sha256: str | None  # known before the transfer (option or URL), else from the server
    from_hub: bool


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    verified: bool  # False: no checksum was known to compare with
    resumed_from: int  # bytes that were already there from an earlier attempt


def parse_source(spec: str, sha256: str | None = None, name: str | None = None) -> Source:
    """``hf:ORG/REPO/FILE.gguf`` or an http(s) URL, as what to fetch and where to put it."""
    if sha256 is not None:
        sha256 = sha256.lower().removeprefix("sha256:")
        if not _SHA256.fullmatch(sha256):
            raise DownloadError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    if spec.startswith("hf:"):
        parts = spec[3:].strip("/").split("/")
        if len(parts) < 3 or not all(parts):
            raise DownloadError(f"{spec!r} is not hf:ORG/REPO/FILE.gguf")
        endpoint = next((os.environ[v] for v in HF_ENDPOINT_VARIABLES if os.environ.get(v)),
                        DEFAULT_HF_ENDPOINT).rstrip("/")
        url = f"{endpoint}/{parts[0]}/{parts[1]}/resolve/main/{'/'.join(parts[2:])}"
        from_hub = True
    elif spec.startswith(("http://", "https://")):
        url = spec
        from_hub = False
        in_url = _DIGEST_IN_URL.search(urlsplit(spec).path)
        sha256 = sha256 or (in_url.group(1) if in_url else None)
    else:
        raise DownloadError(f"{spec!r} is neither an http(s) URL nor hf:ORG/REPO/FILE.gguf")
    filename = name or unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not filename or filename in (".", "..") or "/" in filename or "\0" in filename:
        raise DownloadError(f"cannot name the file after {spec!r}; pass --name NAME.gguf")
    if not filename.endswith(".gguf"):
        filename += ".gguf"  # the models directory lists *.gguf
    return Source(url, filename, sha256, from_hub)


def download(source: Source, models_dir: Path, progress: ProgressFn) -> Downloaded:
    """Fetch ``source`` into ``models_dir`` (see the module doc); raises DownloadError."""
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / source.filename
    part = final.with_name(final.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    digest = hashlib.sha256()
    if done:
        with part.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    # Raw bytes, never re-encoded: a Range counts bytes of the file itself.
    headers = {"accept-encoding": "identity"}
    if done:
        headers["range"] = f"bytes={done}-"
    total: int | None = None
    try:
        with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60.0, connect=15.0)
                          ) as client, client.stream("GET", source.url,
                                                     headers=headers) as response:
            expected = source.sha256 or (_hub_sha256(response) if source.from_hub else None)
            if response.status_code == 416 and done:
                pass  # the part is already whole: verify it below
            elif response.status_code in (200, 206):
                if response.status_code == 200 and done:  # the server ignored the Range
                    done, digest = 0, hashlib.sha256()
                elif response.status_code == 206:
                    _check_range_start(response, done)
                total = _total_size(response, done)
                with part.open("ab" if done else "wb") as out, \
                        progress(source.filename, total, done) as advance:
                    for block in response.iter_raw():  # as they arrive: none lost on a cut
                        out.write(block)
                        digest.update(block)
                        advance(len(block))
                    out.flush()
                    os.fsync(out.fileno())
                received = part.stat().st_size
                if total is not None and received < total:
                    raise DownloadError(_interrupted(received, total))
            else:
                raise DownloadError(f"{source.url} answered HTTP {response.status_code}")
    except httpx.TransportError as exc:
        received = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"{_interrupted(received, total)} ({exc or type(exc).__name__})"
                            ) from None
    return _finish(part, final, digest.hexdigest(), expected, resumed_from=done)


def _finish(part: Path, final: Path, actual: str, expected: str | None,
            resumed_from: int) -> Downloaded:
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(f"checksum mismatch for {final.name}: expected sha256 {expected}, "
                            f"got {actual}; the download was deleted")
    with part.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{final.name} is not a GGUF model (it does not start with the "
                            "GGUF magic bytes); the download was deleted")
    os.replace(part, final)
    return Downloaded(final, final.stat().st_size, actual, expected is not None, resumed_from)


def _hub_sha256(response: httpx.Response) -> str | None:
    """The LFS sha256 the hub sends on its resolve answer (before any CDN redirect)."""
    for answer in [*response.history, response]:
        for header in ("x-linked-etag", "etag"):
            value = answer.headers.get(header, "").removeprefix("W/").strip('"').lower()
            if _SHA256.fullmatch(value):
                return value
    return None


def _check_range_start(response: httpx.Response, done: int) -> None:
    match = re.match(r"bytes (\d+)-", response.headers.get("content-range", ""))
    if not match or int(match.group(1)) != done:
        raise DownloadError(f"the server resumed at the wrong place "
                            f"({response.headers.get('content-range')!r} for byte {done})")


def _total_size(response: httpx.Response, done: int) -> int | None:
    if response.status_code == 206:
        total = response.headers.get("content-range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def _interrupted(received: int, total: int | None) -> str:
    of = f" of {total}" if total is not None else ""
    return (f"the transfer was interrupted after {received}{of} bytes; run the same "
            "command again to resume")
