"""Local model servers behind one small interface.

Adding a provider: one new module with a class taking ``(url, *, first_token_timeout,
idle_timeout, probe_timeout, transport)``, plus one line in ``_REGISTRY``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from providers.base import Provider, ProviderError, ProviderHealth
from providers.model_names import default_model_among, model_allowed, same_model
from providers.ollama import OllamaProvider
from providers.openai_compat import LMStudioProvider, OpenAICompatProvider

__all__ = [
    "DEFAULT_URLS",
    "PROVIDER_KINDS",
    "Provider",
    "ProviderError",
    "ProviderHealth",
    "adetect_providers",
    "check_url",
    "default_model_among",
    "detect_providers",
    "make_provider",
    "model_allowed",
    "same_model",
]

_REGISTRY: dict[str, Callable[..., Provider]] = {
    "ollama": OllamaProvider,
    "lmstudio": LMStudioProvider,
    "openai": OpenAICompatProvider,
}
PROVIDER_KINDS = tuple(_REGISTRY)

DEFAULT_URLS = {"ollama": "http://localhost:11434", "lmstudio": "http://localhost:1234"}


def make_provider(
    kind: str,
    url: str | None = None,
    *,
    first_token_timeout: float = 300.0,
    idle_timeout: float = 120.0,
    probe_timeout: float = 3.0,
    transport: httpx.AsyncBaseTransport | None = None,
    **options: Any,
) -> Provider:
    """A provider of ``kind`` at ``url`` (its default URL when omitted).

    ``options`` go to the adapter (e.g. ``api_key`` for OpenAI-compatible servers that
    require one). Raises ValueError for an unknown kind or a missing URL.
    """
    try:
        factory = _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}; expected one of "
                         f"{', '.join(PROVIDER_KINDS)}") from None
    url = url or DEFAULT_URLS.get(kind)
    if not url:
        raise ValueError(f"provider kind {kind!r} needs a URL (e.g. http://127.0.0.1:8000)")
    check_url(url)
    return factory(url, first_token_timeout=first_token_timeout, idle_timeout=idle_timeout,
                   probe_timeout=probe_timeout, transport=transport, **options)


def check_url(url: str) -> None:
    """Raise ValueError (a message for people) unless ``url`` is a usable http(s) URL."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"provider URL must start with http:// or https://, got {url!r}")
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL as exc:
        raise ValueError(f"provider URL {url!r} is not a valid URL ({exc})") from None
    if not host:
        raise ValueError(f"provider URL {url!r} names no host")


async def adetect_providers(timeout: float = 0.5, urls: Mapping[str, str] | None = None,
                            **options: Any) -> list[ProviderHealth]:
    """Probe Ollama and LM Studio (default ports, or ``urls`` by kind) concurrently.

    ``options`` go to the adapters (``api_key``). Never raises: an unusable URL is
    reported as a failed probe saying why.
    """
    targets = dict(urls if urls is not None else DEFAULT_URLS)

    async def probe(kind: str, url: str) -> ProviderHealth:
        try:
            provider = make_provider(kind, url, probe_timeout=timeout, **options)
        except ValueError as exc:
            return ProviderHealth(False, str(exc), kind=kind, url=url)
        try:
            return await provider.health()
        finally:
            await provider.aclose()

    return list(await asyncio.gather(*(probe(kind, url) for kind, url in targets.items())))


def detect_providers(timeout: float = 0.5, urls: Mapping[str, str] | None = None,
                     **options: Any) -> list[ProviderHealth]:
    """Blocking :func:`adetect_providers` for the CLI; safe to call inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(adetect_providers(timeout, urls, **options))
    results: list[list[ProviderHealth]] = []
    thread = threading.Thread(
        target=lambda: results.append(asyncio.run(adetect_providers(timeout, urls, **options))))
    thread.start()
    thread.join()
    return results[0]
