"""Rules about model names that hold for every provider, used by the daemon and the CLI."""

from __future__ import annotations


def same_model(a: str, b: str) -> bool:
    """Ollama treats a name without a tag as ``:latest``: "llama3.2" is "llama3.2:latest"."""
    return a.removesuffix(":latest") == b.removesuffix(":latest")


def model_allowed(model: str, allowed: list[str]) -> bool:
    return not allowed or any(same_model(model, a) for a in allowed)


def default_model_among(models: list[str], allowed: list[str]) -> str | None:
    """The model for requests that name none, when the config names no default either:
    the provider's first allowed chat model. Embedding models (``nomic-embed-text``,
    LM Studio's ``text-embedding-...``) are listed beside chat models and often first
    (most recently pulled), but cannot answer a chat request."""
    candidates = [m for m in models if model_allowed(m, allowed)]
    chat_models = [m for m in candidates if "embed" not in m.lower()]
    return next(iter(chat_models or candidates), None)
